//! Trying hard to break it: clients leaving at every point of a stream, backends sending
//! what they should not, and hostile requests. Every request that reached a backend keeps
//! exactly one record, error text is never billed, and the gateway stays healthy.

use crate::helpers;

use std::time::Duration;

use helpers::{TestApp, chat, request_id};
use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate::store::usage::StoredRecord;

/// Reads `events` SSE events (blank-line separated) of a stream, then hangs up.
async fn leave_after(app: &TestApp, path: &str, body: &Value, events: usize) -> StoredRecord {
    let mut response = app.post(path, body).await;
    let id = request_id(&response);
    let mut seen = String::new();
    while seen.matches("\n\n").count() < events {
        let chunk = response.chunk().await.unwrap().expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    app.eventual_record(&id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_at_any_point_leaves_one_record_with_the_backends_usage() {
    let app = TestApp::spawn().await;
    let knobs =
        json!({"chunks": 12, "chunk_delay_ms": 30, "prompt_tokens": 21, "completion_tokens": 12});
    let genstudio = "/maas/megrez-7b-instruct/nvidia/chat/completions";

    // At 0 bytes: gone before the response head. The first event comes after 600 ms, and
    // the client leaves after 250: time enough for the request to reach the gateway on a
    // busy machine (at 30 and 15 ms, a loaded CI run once sent nothing before leaving).
    let slow =
        json!({"chunks": 3, "chunk_delay_ms": 600, "prompt_tokens": 21, "completion_tokens": 12});
    let body = chat(None, "hi", true, slow);
    let before = app.record_count().await;
    let request = app
        .client
        .post(app.url(genstudio))
        .bearer_auth(&app.key)
        .json(&body)
        .send();
    let left = tokio::time::timeout(Duration::from_millis(250), request).await;
    assert!(left.is_err(), "the client left before any answer");
    // Drained and written in the background: waited for (a busy machine takes longer).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.record_count().await <= before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.record_count().await,
        before + 1,
        "one record for the request that left at once"
    );
    let record = app.latest_record().await;
    assert_eq!(
        (record.status.as_str(), record.usage_source.as_str()),
        ("client_disconnected", "reported")
    );
    assert_eq!((record.prompt_tokens, record.completion_tokens), (21, 12));

    for events in [1, 6] {
        let record = leave_after(
            &app,
            genstudio,
            &chat(None, "hi", true, knobs.clone()),
            events,
        )
        .await;
        assert_eq!(
            (record.status.as_str(), record.usage_source.as_str()),
            ("client_disconnected", "reported"),
            "after {events}"
        );
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (21, 12),
            "after {events}"
        );
    }

    // Just before the usage-only chunk (OpenAI style, asked for by the client).
    let mut body = chat(None, "hi", true, knobs);
    body["stream_options"] = json!({"include_usage": true});
    let record = leave_after(
        &app,
        "/maas/megrez-7b-instruct/amd/chat/completions",
        &body,
        13,
    )
    .await;
    assert_eq!(
        (record.status.as_str(), record.usage_source.as_str()),
        ("client_disconnected", "reported")
    );
    assert_eq!(record.completion_tokens, 12);
    assert_eq!(
        app.record_count().await,
        before + 4,
        "exactly one record each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_a_non_streamed_answer_still_leaves_its_record() {
    let app = TestApp::spawn().await;
    let knobs = json!({"latency_ms": 300, "prompt_tokens": 9, "completion_tokens": 4});
    let body = chat(None, "hi", false, knobs);
    let before = app.record_count().await;
    let request = app
        .client
        .post(app.url("/maas/megrez-7b-instruct/amd/chat/completions"))
        .bearer_auth(&app.key)
        .json(&body)
        .send();
    // Gone while the backend is still thinking: the exchange goes on without the client.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), request)
            .await
            .is_err()
    );
    for _ in 0..40 {
        if app.record_count().await > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.record_count().await, before + 1);
    let record = app.latest_record().await;
    assert_eq!(
        (
            record.usage_source.as_str(),
            record.prompt_tokens,
            record.completion_tokens
        ),
        ("reported", 9, 4)
    );
}

#[tokio::test]
async fn truncated_and_oversized_backend_answers_are_refused_unbilled() {
    let app = TestApp::spawn_with(|c| c.server.max_response_bytes = 4096).await;
    let route = "/maas/megrez-7b-instruct/nvidia/chat/completions";
    let cases = [
        (
            json!({"raw": "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"cut"}),
            "not JSON",
        ),
        (
            json!({"raw": format!("{{\"pad\":\"{}\"}}", "x".repeat(10_000))}),
            "larger than 4096 bytes",
        ),
    ];
    for (knobs, message) in cases {
        let response = app.post(route, &chat(None, "hi", false, knobs)).await;
        let record = app.record_of(&response).await;
        assert_eq!(response.status(), 502);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(message),
            "{body}"
        );
        assert_eq!(
            (record.status.as_str(), record.cost),
            ("upstream_error", rust_decimal::Decimal::ZERO)
        );
    }
    let healthy = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
}

#[tokio::test]
async fn hostile_requests_get_clear_errors_and_the_gateway_stays_up() {
    let app = TestApp::spawn().await;
    let url = app.url("/v1/chat/completions");
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // Nested inside a member: the value is checked (not built) before it would pass upstream.
    let nested_member = format!(r#"{{"model": "megrez-7b-instruct", "messages": {nested}}}"#);
    let nested_object = format!(
        "{{\"x\":{}1{}}}",
        "{\"a\":".repeat(50_000),
        "}".repeat(50_000)
    );
    let bodies: Vec<Vec<u8>> = vec![
        nested.into_bytes(),
        nested_member.into_bytes(),
        nested_object.into_bytes(),
        vec![0xff, 0xfe, b'{', 0x80],
        b"{\"model\": \"megrez-7b-instruct\", \"messages\": \"\xff\"}".to_vec(),
        Vec::new(),
    ];
    for body in bodies {
        let response = app
            .client
            .post(&url)
            .bearer_auth(&app.key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    for authorization in [
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer tg-",
        "tg-abc",
        "Bearer tg-\u{00e9}t\u{00e9}",
        "Bearer  ",
    ] {
        let response = app
            .client
            .post(&url)
            .header("authorization", authorization)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
    }
    let response = app
        .client
        .post(&url)
        .header("authorization", vec![b'B', 0xff, 0xfe])
        .json(&json!({}))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 401, "non-UTF-8 header");
    }
    for (size, status) in [(200_000, 400), (1_000_000, 431)] {
        // Within hyper's buffer the request is read (and its empty body refused); beyond,
        // hyper refuses the head, with an OpenAI-shaped body all the same.
        let response = app
            .client
            .post(&url)
            .bearer_auth(&app.key)
            .header("x-junk", "x".repeat(size))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{size} bytes of header");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let healthy = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200, "still up after oversized headers");
}

/// One runtime and one gateway for every proptest case; the runtime's workers keep serving
/// between cases.
fn shared() -> &'static (tokio::runtime::Runtime, TestApp) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, TestApp)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // No rate limit in the way: every case must get the answer its body deserves.
        let app = runtime.block_on(TestApp::spawn_with(|c| c.limits.default_rpm = 1_000_000));
        (runtime, app)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_bodies_never_cause_a_server_error(body in proptest::collection::vec(any::<u8>(), 0..512), json_like in "[\\[\\]{}\",:a-z0-9 ]{0,200}") {
        let (runtime, app) = shared();
        runtime.block_on(async {
            for payload in [body.clone(), json_like.clone().into_bytes()] {
                let response = app.client.post(app.url("/v1/chat/completions")).bearer_auth(&app.key).body(payload.clone()).send().await.unwrap();
                // A well-formed body can only fail on the model it names (none is served).
                let well_formed = tollgate::proxy::request::ClientRequest::parse(
                    tollgate::dialect::named("openai").unwrap(),
                    tollgate::config::Endpoint::Chat,
                    payload.into(),
                )
                .is_ok_and(|r| r.model().is_ok());
                let expected = if well_formed { 404 } else { 400 };
                prop_assert_eq!(response.status().as_u16(), expected);
            }
            Ok(())
        })?;
    }
}
