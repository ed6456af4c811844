//! DashScope's native API through tollgate: `input.messages` and `input.prompt`, answers
//! with and without streams (`X-DashScope-SSE`), running usage totals, its errors with a
//! 4xx status or with 200 (never billed as ok), its fixtures split anywhere, and its
//! OpenAI-compatible mode; and the official `dashscope` SDK, unchanged, as the client.

use crate::helpers;

use helpers::{TestApp, chat, dec, expected_cost, request_id};
use serde_json::{Value, json};

const ROUTE: &str = "/api/v1/services/aigc/text-generation/generation";

/// Prices of qwen-plus in the sample table: input, cached input, output per 1k.
fn cost(prompt: u64, completion: u64) -> rust_decimal::Decimal {
    expected_cost(prompt, 0, completion, "0.0008", "0.0008", "0.002")
}

fn messages(sim: Value) -> Value {
    json!({"model": "qwen-plus",
        "input": {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                               {"role": "user", "content": "你是谁？"}]},
        "parameters": {"result_format": "message", "incremental_output": true},
        "x_sim": sim})
}

async fn stream(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(ROUTE))
        .bearer_auth(&app.key)
        .header("X-DashScope-SSE", "enable")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of a DashScope stream, with the name of the event each came in.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = None;
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str(v.trim()).unwrap());
                }
            }
            (
                name,
                data.unwrap_or_else(|| panic!("an event without data: {e:?}")),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_native_answer_is_passed_through_and_billed_from_its_usage() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            ROUTE,
            &messages(json!({"prompt_tokens": 22, "completion_tokens": 16})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["output"]["choices"][0]["message"]["content"],
        "我是无问天权。"
    );
    assert_eq!(body["usage"]["input_tokens"], 22);
    let record = app.record(&id).await;
    assert_eq!(record.status, "ok");
    assert_eq!((record.prompt_tokens, record.completion_tokens), (22, 16));
    assert_eq!(record.endpoint, "generation");
    assert_eq!(
        (record.model.as_str(), record.chip.as_str()),
        ("qwen-plus", "aliyun")
    );
    assert_eq!(record.cost, cost(22, 16));

    // The prompt form, answered as text.
    let body = json!({"model": "qwen-plus", "input": {"prompt": "你好"},
        "x_sim": {"prompt_tokens": 9, "completion_tokens": 8}});
    let response = app.post(ROUTE, &body).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["output"]["finish_reason"], "stop");
    assert!(answer["output"]["text"].is_string());
    assert_eq!(app.record(&id).await.cost, cost(9, 8));
    assert_eq!(app.upstream_saw().await["x_dashscope_sse"], Value::Null);
}

#[tokio::test]
async fn a_native_stream_is_relayed_as_dashscope_events_and_the_last_running_total_is_billed() {
    let app = TestApp::spawn().await;
    for incremental in [true, false] {
        let mut body = messages(json!({"chunks": 4, "prompt_tokens": 30, "completion_tokens": 12}));
        body["parameters"]["incremental_output"] = json!(incremental);
        let response = stream(&app, &body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let id = request_id(&response);
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("[DONE]"),
            "DashScope streams have no [DONE]: {text}"
        );
        let events = events(&text);
        assert_eq!(events.len(), 4, "{text}");
        assert!(events.iter().all(|(name, _)| name == "result"));
        let last = &events[3].1;
        assert_eq!(last["output"]["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["usage"]["output_tokens"], 12);
        assert_eq!(app.upstream_saw().await["x_dashscope_sse"], "enable");
        let record = app.record(&id).await;
        assert_eq!((record.status.as_str(), record.stream), ("ok", true));
        assert_eq!((record.prompt_tokens, record.completion_tokens), (30, 12));
        assert_eq!(record.cost, cost(30, 12));
    }
}

#[tokio::test]
async fn accept_event_stream_asks_for_a_stream_too() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url(ROUTE))
        .bearer_auth(&app.key)
        .header("Accept", "text/event-stream")
        .json(&messages(
            json!({"prompt_tokens": 5, "completion_tokens": 3}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let id = request_id(&response);
    assert_eq!(events(&response.text().await.unwrap()).len(), 3);
    assert_eq!(app.upstream_saw().await["x_dashscope_sse"], "enable");
    let record = app.record(&id).await;
    assert_eq!((record.stream, record.cost), (true, cost(5, 3)));
}

#[tokio::test]
async fn dashscope_fixtures_split_anywhere_are_metered_from_their_usage() {
    let app = TestApp::spawn().await;
    let raw = helpers::fixture("dashscope-stream.sse");
    for split in [1, 7, 64, 100_000] {
        let response = stream(&app, &messages(json!({"raw": raw, "split": split}))).await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        let events = events(&response.text().await.unwrap());
        let text: String = events
            .iter()
            .map(|(_, e)| {
                e["output"]["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            text, "我是通义千问，由阿里云开发的大语言模型。",
            "split {split}"
        );
        let record = app.record(&id).await;
        assert_eq!(
            (record.status.as_str(), record.usage_source.as_str()),
            ("ok", "reported")
        );
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (22, 16),
            "split {split}"
        );
    }
    for (file, (prompt, completion)) in [
        ("dashscope-generation.json", (22, 16)),
        ("dashscope-generation-text.json", (9, 8)),
    ] {
        let raw = helpers::fixture(file);
        let response = app
            .post(ROUTE, &messages(json!({"raw": raw, "split": 5})))
            .await;
        assert_eq!(response.status(), 200, "{file}");
        let record = app.record_of(&response).await;
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (prompt, completion)
        );
        assert_eq!(record.cost, cost(prompt as u64, completion as u64));
    }
}

#[tokio::test]
async fn a_dashscope_error_is_an_error_with_any_status_and_costs_nothing() {
    let app = TestApp::spawn().await;
    // HTTP 200 with an error body: the bug, once billed as ok.
    let raw = helpers::fixture("dashscope-error-200.json");
    for knobs in [json!({"fault": "inband_error"}), json!({"raw": raw})] {
        let response = app.post(ROUTE, &messages(knobs)).await;
        assert_eq!(response.status(), 502);
        let id = request_id(&response);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "DataInspectionFailed", "{body}");
        assert!(body["message"].as_str().unwrap().contains("inappropriate"));
        assert_eq!(body["error"]["code"], "DataInspectionFailed");
        assert_eq!(body["request_id"], id.as_str());
        let record = app.record(&id).await;
        assert_eq!(record.status, "upstream_error");
        assert_eq!(record.cost, dec("0"));
    }
    // A 4xx: the client's own mistake keeps its status and DashScope's code.
    let response = app
        .post(ROUTE, &messages(json!({"fault": "http_400"})))
        .await;
    assert_eq!(response.status(), 400);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "InvalidParameter");
    assert_eq!(app.record(&id).await.cost, dec("0"));
    // As a stream's first event: an HTTP error, and nothing is billed.
    let response = stream(&app, &messages(json!({"fault": "inband_error_first"}))).await;
    assert_eq!(response.status(), 502);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "DataInspectionFailed");
    assert_eq!(app.record(&id).await.cost, dec("0"));
    // Later in a stream: the client gets DashScope's error event, and only what was
    // delivered is billed (the running total of the events before it).
    let body = messages(json!({"fault": "inband_error", "chunks": 4, "completion_tokens": 8}));
    let response = stream(&app, &body).await;
    let id = request_id(&response);
    let events = events(&response.text().await.unwrap());
    assert_eq!(events.len(), 3);
    let (name, error) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(error["code"], "DataInspectionFailed");
    let record = app.record(&id).await;
    assert_eq!(record.status, "upstream_error");
    assert_eq!(record.completion_tokens, 4, "two events of four: half of 8");
    // tollgate's own refusals carry DashScope's fields too.
    let response = app
        .client
        .post(app.url(ROUTE))
        .bearer_auth("tg-not-a-key")
        .json(&messages(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["code"].is_string() && body["message"].is_string(),
        "{body}"
    );
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn a_cut_native_stream_is_partial_and_a_clean_end_completes_the_answer() {
    let app = TestApp::spawn().await;
    let response = stream(&app, &messages(json!({"fault": "cut", "chunks": 6}))).await;
    let id = request_id(&response);
    let text = response.text().await.unwrap_or_default();
    let record = app.record(&id).await;
    assert_eq!(record.status, "partial", "{text}");
    assert!(text.contains("event:error"), "{text}");
    // A stream that closes cleanly is a whole answer, finish reason or not (no [DONE]).
    let response = stream(&app, &messages(json!({"fault": "truncate", "chunks": 6}))).await;
    let id = request_id(&response);
    let _ = response.text().await;
    assert_eq!(app.record(&id).await.status, "ok");
}

#[tokio::test]
async fn limits_inside_parameters_are_checked() {
    let app = TestApp::spawn().await;
    for (parameters, param) in [
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": "many"}), "max_tokens"),
        (json!({"n": 1000}), "n"),
    ] {
        let body =
            json!({"model": "qwen-plus", "input": {"prompt": "hi"}, "parameters": parameters});
        let response = app.post(ROUTE, &body).await;
        assert_eq!(response.status(), 400, "{parameters}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["param"], param);
        assert_eq!(body["code"], body["error"]["code"]);
        assert!(body["message"].as_str().unwrap().contains(param));
    }
    assert_eq!(app.record_count().await, 0);
}

#[tokio::test]
async fn the_openai_compatible_mode_is_served_too() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/compatible-mode/v1/chat/completions",
            &chat(
                Some("qwen-plus"),
                "你好",
                false,
                json!({"prompt_tokens": 5, "completion_tokens": 3}),
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let record = app.record_of(&response).await;
    assert_eq!(
        (record.endpoint.as_str(), record.chip.as_str()),
        ("chat", "aliyun")
    );
    assert_eq!(record.cost, cost(5, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_dashscope_sdk_works_unchanged_and_each_call_is_billed_exactly() {
    let app = TestApp::spawn().await;
    let results = helpers::python::run("dashscope_client.py", &app).await;
    for case in ["messages", "prompt", "stream_incremental", "stream_full"] {
        let result = &results[case];
        assert_eq!(result["status"], 200, "{case}: {result}");
        assert!(
            result["text"]
                .as_str()
                .unwrap()
                .starts_with("我是无问天权。"),
            "{case}"
        );
        assert_eq!(result["usage"]["output_tokens"], 18, "{case}");
        let record = app.record(result["request_id"].as_str().unwrap()).await;
        assert_eq!(
            (record.status.as_str(), record.usage_source.as_str()),
            ("ok", "reported")
        );
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (22, 18),
            "{case}"
        );
        assert_eq!(record.stream, case.starts_with("stream"), "{case}");
        assert_eq!(record.cost, cost(22, 18), "{case}");
    }
    assert_eq!(
        results["stream_incremental"]["text"],
        results["stream_full"]["text"]
    );
    let error = &results["error_400"];
    assert_eq!(
        (error["status"].as_i64(), error["code"].as_str()),
        (Some(400), Some("InvalidParameter"))
    );
    let error = &results["error_200"];
    assert_eq!(error["status"], 502);
    assert_eq!(error["code"], "DataInspectionFailed");
    for case in ["error_400", "error_200"] {
        let record = app
            .record(results[case]["request_id"].as_str().unwrap())
            .await;
        assert_eq!(record.cost, dec("0"), "{case}");
    }
}
