//! Streams in every wire format reach the client as standard SSE, and every stream leaves
//! one record, committed before the client sees `[DONE]`.

use crate::helpers;

use helpers::{TestApp, chat, expected_cost, fixture, request_id, sse_data};
use serde_json::{Value, json};
use tollgate::config::{DisconnectPolicy, Endpoint};
use tollgate::metering::estimate;
use tollgate::store::usage::StoredRecord;

/// Reads a whole stream: the parsed chunks, and whether it ended with `[DONE]`.
async fn read_stream(response: reqwest::Response) -> (Vec<Value>, bool) {
    let text = response.text().await.unwrap();
    let mut data = sse_data(&text);
    let done = data.last().is_some_and(|d| d == "[DONE]");
    if done {
        data.pop();
    }
    let chunks = data
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| panic!("not JSON: {d}")))
        .collect();
    (chunks, done)
}

fn content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn a_bare_json_chip_stream_reaches_the_client_as_standard_sse() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/maas/megrez-7b-instruct/chip3/chat/completions",
            &chat(
                None,
                "你是谁",
                true,
                json!({"prompt_tokens": 22, "completion_tokens": 18}),
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let id = request_id(&response);
    let (chunks, done) = read_stream(response).await;
    assert!(done, "the stream ends with data: [DONE]");
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk["created"].is_i64() && chunk["id"].is_string() && chunk["model"].is_string());
        assert_eq!(
            chunk["created"], chunks[0]["created"],
            "one created for the stream"
        );
    }
    assert_eq!(content(&chunks), "我是无问天权。");
    // Committed before [DONE] reached us: no waiting needed.
    let record = app.record(&id).await;
    assert_eq!(
        (record.status.as_str(), record.usage_source.as_str()),
        ("ok", "reported")
    );
    assert_eq!((record.prompt_tokens, record.completion_tokens), (22, 18));
    assert!(record.stream);
    assert!(record.ttft_ms.is_some());
    assert_eq!(
        record.cost,
        expected_cost(22, 0, 18, "0.0006", "0.0006", "0.0012")
    );
}

#[tokio::test]
async fn stream_fixtures_split_anywhere_are_relayed_and_metered_from_their_usage() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            "genstudio-stream.sse",
            "megrez-7b-instruct/nvidia",
            "我是无问天权。",
            (22, 18, 0),
        ),
        (
            "genstudio-chip3-stream.txt",
            "megrez-7b-instruct/chip3",
            "我是无问天权。",
            (22, 18, 0),
        ),
        // chip4 and chip5 stream as chip3 does.
        (
            "genstudio-chip3-stream.txt",
            "megrez-7b-instruct/chip4",
            "我是无问天权。",
            (22, 18, 0),
        ),
        (
            "genstudio-chip3-stream.txt",
            "megrez-7b-instruct/chip5",
            "我是无问天权。",
            (22, 18, 0),
        ),
        (
            "internlm-stream.sse",
            "internlm3-latest/ascend",
            "刘慈欣的《三体》获得了雨果奖。",
            (64, 12, 0),
        ),
        (
            "openai-stream-include-usage.sse",
            "qwen2.5-72b-instruct/nvidia",
            "Hello!",
            (1200, 3, 1024),
        ),
    ];
    for (file, route, text, (prompt, completion, cached)) in cases {
        let raw = fixture(file);
        for split in [1, 5, 64, 100_000] {
            let knobs = json!({"raw": raw, "split": split});
            let response = app
                .post(
                    &format!("/maas/{route}/chat/completions"),
                    &chat(None, "q", true, knobs),
                )
                .await;
            assert_eq!(response.status(), 200, "{file}");
            let id = request_id(&response);
            let (chunks, done) = read_stream(response).await;
            assert!(done, "{file} split {split}: ends with [DONE]");
            assert_eq!(content(&chunks), text, "{file} split {split}");
            assert!(
                chunks
                    .iter()
                    .all(|c| c["object"] == "chat.completion.chunk"),
                "{file}: complete chunks"
            );
            assert!(
                chunks
                    .iter()
                    .all(|c| c["choices"][0]["finish_reason"] != ""),
                "{file}: LMDeploy's empty finish_reason becomes null"
            );
            let record = app.record(&id).await;
            assert_eq!(
                (
                    record.prompt_tokens,
                    record.completion_tokens,
                    record.cached_tokens
                ),
                (prompt as i64, completion as i64, cached as i64),
                "{file} split {split}"
            );
            assert_eq!(record.usage_source, "reported");
        }
    }
}

#[tokio::test]
async fn usage_is_requested_where_supported_and_the_extra_chunk_hidden_unless_asked() {
    let app = TestApp::spawn().await;
    let knobs = json!({"prompt_tokens": 40, "completion_tokens": 3});
    let response = app
        .post(
            "/maas/megrez-7b-instruct/amd/chat/completions",
            &chat(None, "hi", true, knobs.clone()),
        )
        .await;
    let id = request_id(&response);
    let (chunks, done) = read_stream(response).await;
    assert!(done);
    assert_eq!(
        app.upstream_saw().await["body"]["stream_options"]["include_usage"],
        true
    );
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty()),
        "no usage-only chunk"
    );
    let record = app.record(&id).await;
    assert_eq!(
        (
            record.prompt_tokens,
            record.completion_tokens,
            record.usage_source.as_str()
        ),
        (40, 3, "reported")
    );

    let mut body = chat(None, "hi", true, knobs);
    body["stream_options"] = json!({"include_usage": true});
    let response = app
        .post("/maas/megrez-7b-instruct/amd/chat/completions", &body)
        .await;
    let (chunks, _) = read_stream(response).await;
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"]["prompt_tokens"], 40,
        "a client that asks keeps its usage chunk"
    );
}

#[tokio::test]
async fn running_usage_totals_are_not_summed() {
    let app = TestApp::spawn().await;
    let knobs =
        json!({"chunks": 5, "running_usage": true, "prompt_tokens": 7, "completion_tokens": 10});
    let response = app
        .post(
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            &chat(None, "hi", true, knobs),
        )
        .await;
    let id = request_id(&response);
    read_stream(response).await;
    let record = app.record(&id).await;
    assert_eq!((record.prompt_tokens, record.completion_tokens), (7, 10));
}

#[tokio::test]
async fn a_stream_without_usage_is_estimated_with_the_tokenizer() {
    let app = TestApp::spawn().await;
    let body = chat(
        None,
        "Tell me who you are",
        true,
        json!({"usage": false, "chunks": 5}),
    );
    let response = app
        .post("/maas/megrez-7b-instruct/nvidia/chat/completions", &body)
        .await;
    let id = request_id(&response);
    let (chunks, done) = read_stream(response).await;
    assert!(done);
    let record = app.record(&id).await;
    assert_eq!(record.usage_source, "estimated");
    assert_eq!(
        record.completion_tokens as u64,
        estimate::count_text(&content(&chunks))
    );
    assert_eq!(
        record.prompt_tokens as u64,
        estimate::prompt_tokens(Endpoint::Chat, body.as_object().unwrap())
    );
    assert!(record.cost > rust_decimal::Decimal::ZERO);
}

#[tokio::test]
async fn an_in_band_error_mid_stream_is_passed_on_and_only_delivered_text_is_billed() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            &chat(
                None,
                "hi",
                true,
                json!({"fault": "inband_error", "chunks": 4}),
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let (chunks, done) = read_stream(response).await;
    assert!(!done, "a failed stream does not claim to be complete");
    let error = chunks.last().unwrap();
    assert_eq!(error["error"]["code"], 60001);
    assert_eq!(error["error"]["message"], "model overloaded, please retry");
    // A client that reads `object` on every chunk, as InternLM's samples do, finds one.
    assert_eq!(error["object"], "error");
    assert!(chunks.iter().all(|c| c["object"].is_string()), "{chunks:?}");
    let record = app.record(&id).await;
    assert_eq!(record.status, "upstream_error");
    assert_eq!(record.usage_source, "estimated");
    assert_eq!(
        record.completion_tokens as u64,
        estimate::count_text("我是无问"),
        "error text is never billed"
    );
}

#[tokio::test]
async fn an_error_as_the_first_event_becomes_an_http_error_and_costs_nothing() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/maas/internlm3-latest/ascend/chat/completions",
            &chat(None, "hi", true, json!({"fault": "inband_error_first"})),
        )
        .await;
    assert_eq!(response.status(), 502);
    let record = app.record_of(&response).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "internal inference error");
    assert_eq!(body["error"]["code"], 500);
    assert_eq!(
        (record.status.as_str(), record.usage_source.as_str()),
        ("upstream_error", "none")
    );
    assert_eq!(record.cost, rust_decimal::Decimal::ZERO);
}

#[tokio::test]
async fn a_cut_stream_is_billed_for_what_was_delivered() {
    let app = TestApp::spawn().await;
    for fault in ["cut", "truncate"] {
        let response = app
            .post(
                "/maas/megrez-7b-instruct/nvidia/chat/completions",
                &chat(None, "hi", true, json!({"fault": fault, "chunks": 4})),
            )
            .await;
        let id = request_id(&response);
        let (chunks, done) = read_stream(response).await;
        assert!(!done, "{fault}");
        assert!(
            chunks.last().unwrap()["error"]["message"].is_string(),
            "{fault}: the client is told"
        );
        let record = app.record(&id).await;
        assert_eq!(
            (record.status.as_str(), record.usage_source.as_str()),
            ("partial", "estimated"),
            "{fault}"
        );
        assert_eq!(
            record.completion_tokens as u64,
            estimate::count_text("我是无问"),
            "{fault}"
        );
    }
}

#[tokio::test]
async fn a_stalled_stream_times_out_and_is_recorded() {
    let app = TestApp::spawn_with(|c| {
        c.upstreams
            .iter_mut()
            .find(|u| u.chip == "nvidia")
            .unwrap()
            .idle_timeout_ms = 300;
    })
    .await;
    let response = app
        .post(
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            &chat(None, "hi", true, json!({"fault": "stall", "chunks": 4})),
        )
        .await;
    let id = request_id(&response);
    let (chunks, done) = read_stream(response).await;
    assert!(!done);
    assert!(
        chunks.last().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stalled")
    );
    assert_eq!(app.record(&id).await.status, "timeout");
}

/// Starts a stream, reads its first chunk, hangs up, and returns the request's record.
async fn leave_after_first_chunk(app: &TestApp, knobs: Value) -> StoredRecord {
    let body = chat(None, "hi", true, knobs);
    let mut response = app
        .post("/maas/megrez-7b-instruct/nvidia/chat/completions", &body)
        .await;
    let id = request_id(&response);
    response.chunk().await.unwrap().expect("a first chunk");
    drop(response);
    app.eventual_record(&id).await
}

#[tokio::test]
async fn a_client_that_leaves_is_billed_from_the_backends_usage_after_draining() {
    let app = TestApp::spawn().await;
    let knobs =
        json!({"chunks": 20, "chunk_delay_ms": 20, "prompt_tokens": 11, "completion_tokens": 20});
    let record = leave_after_first_chunk(&app, knobs).await;
    assert_eq!(record.status, "client_disconnected");
    assert_eq!(
        (
            record.usage_source.as_str(),
            record.prompt_tokens,
            record.completion_tokens
        ),
        ("reported", 11, 20)
    );
}

#[tokio::test]
async fn with_the_abort_policy_a_client_that_leaves_is_billed_an_estimate() {
    let app =
        TestApp::spawn_with(|c| c.metering.on_client_disconnect = DisconnectPolicy::Abort).await;
    let record = leave_after_first_chunk(&app, json!({"chunks": 50, "chunk_delay_ms": 20})).await;
    assert_eq!(
        (record.status.as_str(), record.usage_source.as_str()),
        ("client_disconnected", "estimated")
    );
    assert!(
        record.completion_tokens < 50,
        "only what was delivered: {}",
        record.completion_tokens
    );
}

/// Streams that end every way at once, on a prepaid account whose balance runs short:
/// read to the end, capped at their hold (`finish_reason: "length"`), cut, truncated,
/// ended by an in-band error, or left by their client after the first chunk. Each stream
/// admitted leaves one record, and the ledger keeps the money invariant with nothing held.
#[tokio::test]
async fn concurrent_streams_ending_every_way_keep_the_money_invariant() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use crate::spending::{set_billing, top_up};

    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "s-1", json!("0.2")).await.0, 201);
    let mut rng = SmallRng::seed_from_u64(29);
    let asks: Vec<(Value, bool)> = (0..48)
        .map(|_| {
            let completion = rng.random_range(1..4000u64);
            let mut knobs = json!({
                "prompt_tokens": rng.random_range(1..4000u64),
                "completion_tokens": completion,
                "chunks": rng.random_range(2..30u64),
                "chunk_delay_ms": 2,
            });
            if let Some(fault) = ["cut", "truncate", "inband_error"].get(rng.random_range(0..6)) {
                knobs["fault"] = json!(fault);
            }
            let mut body = chat(None, "hi", true, knobs);
            if rng.random_bool(0.5) {
                // Less than the backend reports: the hold covers this many, so the relay
                // ends the answer where it passes them.
                body["max_tokens"] = json!(rng.random_range(1..=completion));
            }
            (body, rng.random_bool(0.25))
        })
        .collect();
    let sent = asks.iter().map(|(body, leaves)| async {
        let mut response = app
            .post("/maas/megrez-7b-instruct/nvidia/chat/completions", body)
            .await;
        let status = response.status().as_u16();
        let id = (status == 200).then(|| request_id(&response));
        if *leaves {
            let _ = response.chunk().await;
        } else {
            let _ = response.bytes().await;
        }
        (status, id)
    });
    let answered = futures_util::future::join_all(sent).await;
    let ids: Vec<&String> = answered.iter().filter_map(|(_, id)| id.as_ref()).collect();
    assert!(ids.len() >= 8, "most streams are admitted: {answered:?}");
    assert!(
        answered.iter().any(|(status, _)| *status == 402),
        "the balance runs short: {answered:?}"
    );
    let mut statuses = std::collections::BTreeSet::new();
    for id in &ids {
        statuses.insert(app.eventual_record(id).await.status);
    }
    for status in ["ok", "partial", "upstream_error", "client_disconnected"] {
        assert!(
            statuses.contains(status),
            "no {status} stream: {statuses:?}"
        );
    }
    let figures = helpers::money::assert_invariant(&app, 1).await;
    assert_eq!(figures.records, ids.len(), "one record per admitted stream");
    assert_eq!(figures.held, rust_decimal::Decimal::ZERO);
    assert!(
        figures.balance >= rust_decimal::Decimal::ZERO,
        "{figures:?}"
    );
}
