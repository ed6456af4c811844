//! Anthropic's Messages API through tollgate (`/v1/messages`, GLM on Zhipu's
//! Anthropic-compatible API in the demo): the key as `x-api-key`, the backend's credential
//! sent the same way with `anthropic-version`, answers whole and streamed (event names
//! kept), usage counted with cache reads and cache writes inside the prompt and each
//! priced at its own rate, the same cost streamed or not whatever the byte boundaries,
//! errors in Anthropic's shape, a prepaid balance kept exact; and the official `anthropic`
//! SDK, unchanged, as the client.

use crate::helpers;
use crate::spending::{set_billing, top_up};

use helpers::{TestApp, dec, request_id};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::store;

const ROUTE: &str = "/v1/messages";

/// glm-4.6 in the sample prices: input, cache read, cache write and output per 1k.
fn cost(input: u64, read: u64, write: u64, output: u64) -> Decimal {
    let per_1k = |n: u64, price: &str| Decimal::from(n) * dec(price);
    ((per_1k(input, "0.004")
        + per_1k(read, "0.0004")
        + per_1k(write, "0.005")
        + per_1k(output, "0.016"))
        / Decimal::from(1000))
    .normalize()
}

fn body(stream: bool, knobs: Value) -> Value {
    json!({"model": "glm-4.6", "max_tokens": 256, "stream": stream,
        "system": [{"type": "text", "text": "You are a careful assistant.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "你是谁？"}],
        "x_sim": knobs})
}

async fn send(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(ROUTE))
        .header("x-api-key", &app.key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The events of an Anthropic stream: each one's name and data.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name.to_string(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// An app whose Anthropic backend has a credential (in a file, as a mounted secret).
async fn app_with_credential(dir: &tempfile::TempDir) -> TestApp {
    let secret = dir.path().join("anthropic-key");
    std::fs::write(&secret, "sk-ant-backend").unwrap();
    TestApp::spawn_with(|config| {
        let upstream = config
            .upstreams
            .iter_mut()
            .find(|u| u.dialect == "anthropic")
            .expect("the demo has an Anthropic backend");
        upstream.api_key_file = Some(secret);
    })
    .await
}

#[tokio::test]
async fn cache_reads_and_writes_are_priced_at_their_rates_whole_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_credential(&dir).await;
    let knobs = json!({"prompt_tokens": 5100, "completion_tokens": 18,
                       "cached_tokens": 3000, "cache_write_tokens": 2000});
    let expected = cost(100, 3000, 2000, 18);
    assert_eq!(expected, dec("0.011888"));

    // A beta feature the client opts into reaches the backend; its other headers do not.
    let whole = app
        .client
        .post(app.url(ROUTE))
        .header("x-api-key", &app.key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "extended-cache-ttl-2025-04-11")
        .json(&body(false, knobs.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    let id = request_id(&whole);
    let answer: Value = whole.json().await.unwrap();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["content"][0]["text"], "我是无问天权。");
    assert_eq!(answer["usage"]["cache_read_input_tokens"], 3000);
    // The backend got its own credential, the way Anthropic takes it, and no client key.
    let saw = app.upstream_saw().await;
    assert_eq!(saw["x_api_key"], "sk-ant-backend");
    assert_eq!(saw["authorization"], Value::Null);
    assert_eq!(saw["anthropic_version"], "2023-06-01");
    assert_eq!(saw["anthropic_beta"], "extended-cache-ttl-2025-04-11");
    assert_eq!(saw["body"]["model"], "glm-4.6");
    let record = app.record(&id).await;
    assert_eq!(
        (
            record.prompt_tokens,
            record.cached_tokens,
            record.cache_write_tokens,
            record.completion_tokens
        ),
        (5100, 3000, 2000, 18)
    );
    assert_eq!(
        (record.status.as_str(), record.endpoint.as_str()),
        ("ok", "chat")
    );
    assert_eq!(record.cost, expected);

    // Streamed: Anthropic's events, names and all, and the same record.
    for running_usage in [false, true] {
        let mut knobs = knobs.clone();
        knobs["running_usage"] = json!(running_usage);
        let streamed = send(&app, &body(true, knobs)).await;
        assert_eq!(streamed.status(), 200);
        let id = request_id(&streamed);
        let text = streamed.text().await.unwrap();
        let names: Vec<String> = events(&text).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let record = app.record(&id).await;
        assert_eq!(record.cache_write_tokens, 2000);
        assert_eq!(record.cached_tokens, 3000);
        assert_eq!(record.cost, expected, "running usage {running_usage}");
    }
    // Nothing opted into, nothing passed on.
    assert_eq!(app.upstream_saw().await["anthropic_beta"], Value::Null);
}

/// Streamed equals unstreamed: the simulator's answers for random counts, whole and
/// streamed, replayed byte for byte (streams split at random boundaries) cost the same,
/// and the counts the backend reported.
#[tokio::test]
async fn the_same_answer_costs_the_same_streamed_or_not_at_any_byte_boundary() {
    let app = TestApp::spawn().await;
    let backend = format!("http://{}/anthropic/v1/messages", app.sim);
    let mut rng = SmallRng::seed_from_u64(26);
    for round in 0..8 {
        let (read, write, input) = (
            rng.random_range(0..5000u64),
            rng.random_range(0..5000u64),
            rng.random_range(1..2000u64),
        );
        let output = rng.random_range(1..500u64);
        let knobs = json!({"prompt_tokens": input + read + write, "completion_tokens": output,
            "cached_tokens": read, "cache_write_tokens": write, "chunks": 1 + round,
            "running_usage": round % 2 == 1});
        let mut records = Vec::new();
        for stream in [false, true] {
            let answer = app
                .client
                .post(&backend)
                .json(&body(stream, knobs.clone()))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let split = if stream { rng.random_range(1..40) } else { 7 };
            let replay = json!({"raw": answer, "split": split});
            let response = send(&app, &body(stream, replay)).await;
            assert_eq!(response.status(), 200);
            let id = request_id(&response);
            let _ = response.bytes().await.unwrap();
            records.push(app.record(&id).await);
        }
        let [whole, streamed] = [&records[0], &records[1]];
        let counts = |r: &store::usage::StoredRecord| {
            (
                r.prompt_tokens,
                r.cached_tokens,
                r.cache_write_tokens,
                r.completion_tokens,
                r.status.clone(),
                r.usage_source.clone(),
                r.cost,
            )
        };
        assert_eq!(counts(whole), counts(streamed), "round {round}");
        assert_eq!(
            counts(whole),
            (
                (input + read + write) as i64,
                read as i64,
                write as i64,
                output as i64,
                "ok".to_string(),
                "reported".to_string(),
                cost(input, read, write, output)
            ),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn errors_are_anthropic_shaped_and_a_failed_stream_is_not_billed_as_ok() {
    let app = TestApp::spawn().await;
    // tollgate's own refusals: no key, an unknown key, an unknown model.
    let missing = app
        .client
        .post(app.url(ROUTE))
        .json(&body(false, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert!(
        error["error"]["message"].as_str().unwrap().len() > 3,
        "{error}"
    );
    let mut unknown = body(false, json!({}));
    unknown["model"] = json!("claude-nope");
    let response = send(&app, &unknown).await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        (error["type"].as_str(), error["error"]["type"].as_str()),
        (Some("error"), Some("invalid_request_error"))
    );
    // A model that no Anthropic backend serves: not sent to an OpenAI-shaped one.
    let mut other = body(false, json!({}));
    other["model"] = json!("glm-4-plus");
    assert_eq!(send(&app, &other).await.status(), 404);

    // The backend's refusal, passed on with its status.
    let refused = send(&app, &body(false, json!({"fault": "http_429"}))).await;
    assert_eq!(refused.status(), 429);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["type"], "error");

    // Overloaded after two pieces: the client gets the error event, the record says so.
    let knobs = json!({"prompt_tokens": 40, "completion_tokens": 5, "chunks": 5,
                       "fault": "inband_error"});
    let response = send(&app, &body(true, knobs)).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    let last = events(&text).pop().unwrap();
    assert_eq!(last.0, "error");
    assert_eq!(
        last.1["error"]["type"], "overloaded_error",
        "the backend's own type"
    );
    let record = app.record(&id).await;
    assert_eq!(record.status, "upstream_error");
    assert_eq!(app.records_with(&id).await.len(), 1);

    // Cut mid-stream: partial, with its own error event last.
    let knobs = json!({"prompt_tokens": 40, "completion_tokens": 6, "chunks": 6, "fault": "cut"});
    let response = send(&app, &body(true, knobs)).await;
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert_eq!(events(&text).pop().unwrap().0, "error");
    assert_eq!(app.record(&id).await.status, "partial");
}

/// A prepaid account: every request is held at its worst case (the prompt at the cache
/// write rate, the dearest), each is billed in full, and once all have ended the balance is the top-up less the
/// records' costs, nothing held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepaid_balance_is_the_top_up_less_the_costs_with_cache_writes() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "a-1", json!("5")).await.0, 201);
    let knobs = json!({"prompt_tokens": 5100, "completion_tokens": 18,
                       "cached_tokens": 3000, "cache_write_tokens": 2000});
    // A prompt as long as the reported one: what is held covers what is billed.
    let long = "天".repeat(5100);
    let sends = (0..20).map(|i| {
        let app = &app;
        let mut body = body(i % 2 == 0, knobs.clone());
        body["messages"][0]["content"] = json!(long);
        async move { send(app, &body).await }
    });
    let responses = futures_util::future::join_all(sends).await;
    for response in responses {
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await.unwrap();
    }
    app.state.ledger().flush().await.unwrap();
    let account = store::accounts::find_by_name(app.state.db(), "acme")
        .await
        .unwrap()
        .unwrap();
    let funds = store::funds::of(app.state.db(), account.id).await.unwrap();
    let spent = cost(100, 3000, 2000, 18) * Decimal::from(20);
    assert_eq!((funds.topped_up, funds.spent), (dec("5"), spent));
    let (_, view) = app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/accounts/{}", account.id),
            &app.admin_token(tollgate::admin::Role::Admin),
            None,
        )
        .await;
    assert_eq!(dec(view["balance"].as_str().unwrap()), dec("5") - spent);
    assert_eq!(view["held"], "0", "nothing held once all requests ended");
}

/// A stream whose answer passes what its spending hold covers (the client's `max_tokens`)
/// ends there, as one that reached `max_tokens`, and is billed what the hold covers.
#[tokio::test]
async fn a_stream_past_its_hold_ends_at_max_tokens_and_is_billed_the_hold() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "a-1", json!("5")).await.0, 201);
    let mut request = body(true, json!({"prompt_tokens": 10, "completion_tokens": 50}));
    request["max_tokens"] = json!(8);
    let response = send(&app, &request).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let events = events(&response.text().await.unwrap());
    let (name, delta) = &events[events.len() - 2];
    assert_eq!(name, "message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 8);
    assert_eq!(events.last().unwrap().0, "message_stop");
    let record = app.record(&id).await;
    assert_eq!((record.prompt_tokens, record.completion_tokens), (10, 8));
    assert_eq!(record.cost, cost(10, 0, 0, 8));
}

#[tokio::test]
async fn the_official_anthropic_sdk_works_unchanged_and_each_call_is_billed_exactly() {
    let app = TestApp::spawn().await;
    let results = helpers::python::run("anthropic_client.py", &app).await;
    let usage = json!({"input": 100, "output": 18, "cache_write": 2000, "cache_read": 3000});
    for case in ["plain", "streamed"] {
        assert_eq!(
            results[case]["text"], "我是无问天权。",
            "{case}: {}",
            results[case]
        );
        assert_eq!(results[case]["usage"], usage, "{case}");
        assert_eq!(results[case]["stop_reason"], "end_turn", "{case}");
    }
    // The SDK's iterator leaves out `ping`.
    assert_eq!(
        results["raw_events"]["types"],
        json!([
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ])
    );
    assert_eq!(results["bad_key"]["status"], 401, "{}", results["bad_key"]);
    assert_eq!(results["unknown_model"]["status"], 404);
    assert_eq!(results["unknown_model"]["type"], "invalid_request_error");
    assert!(
        results["overloaded"].get("error").is_some() || results["overloaded"]["status"].is_number(),
        "the SDK raised the stream's error: {}",
        results["overloaded"]
    );
    app.state.ledger().flush().await.unwrap();
    let records = store::listing::list(app.state.db(), &Default::default(), 100)
        .await
        .unwrap();
    let glm: Vec<_> = records.iter().filter(|r| r.model == "glm-4.6").collect();
    let ok: Vec<_> = glm.iter().filter(|r| r.status == "ok").collect();
    assert_eq!(ok.len(), 3, "plain, streamed and the raw events");
    let cached: Vec<_> = ok.iter().filter(|r| r.cache_write_tokens == 2000).collect();
    assert_eq!(cached.len(), 2);
    assert!(cached.iter().all(|r| r.cost == cost(100, 3000, 2000, 18)));
    assert_eq!(
        glm.iter().filter(|r| r.status == "upstream_error").count(),
        1
    );
}

/// GLM 4.6 on Zhipu is served both OpenAI's way and Anthropic's (two backends of one
/// pair): each request reaches the backend of its own shape, both are billed at the pair's
/// one price, `/v1/models` lists the model once; a model served only OpenAI's way is not
/// reached through `/v1/messages`, and says so.
#[tokio::test]
async fn one_pair_is_served_both_ways_at_one_price() {
    let app = TestApp::spawn().await;
    let knobs = json!({"prompt_tokens": 1200, "completion_tokens": 30});
    let messages = send(&app, &body(false, knobs.clone())).await;
    assert_eq!(messages.status(), 200);
    let by_messages = request_id(&messages);
    assert_eq!(messages.json::<Value>().await.unwrap()["type"], "message");
    let chat = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.key)
        .json(
            &json!({"model": "glm-4.6", "max_tokens": 256, "x_sim": knobs,
                      "messages": [{"role": "user", "content": "你是谁？"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    let by_chat = request_id(&chat);
    assert_eq!(
        chat.json::<Value>().await.unwrap()["object"],
        "chat.completion"
    );
    for id in [by_messages, by_chat] {
        let record = app.record(&id).await;
        assert_eq!(
            (
                record.model.as_str(),
                record.chip.as_str(),
                record.endpoint.as_str()
            ),
            ("glm-4.6", "zhipu", "chat")
        );
        assert_eq!((record.prompt_tokens, record.completion_tokens), (1200, 30));
        assert_eq!(record.cost, cost(1200, 0, 0, 30), "{id}");
    }
    let models = app.get_json("/v1/models", &app.key).await;
    let glm: Vec<&Value> = (models["data"].as_array().unwrap().iter())
        .filter(|m| m["id"] == "glm-4.6")
        .collect();
    assert_eq!(glm.len(), 1, "{models}");
    assert_eq!(glm[0]["chips"], json!(["zhipu"]));
    assert_eq!(glm[0]["apis"], json!(["anthropic", "openai"]));

    let mut other = body(false, json!({}));
    other["model"] = json!("glm-4-plus");
    let refused = send(&app, &other).await;
    assert_eq!(refused.status(), 404);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["type"], "error");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'glm-4-plus' is not served for anthropic chat requests"),
        "{message}"
    );
}
