//! Bad input and failing backends get clear OpenAI-shaped errors, and nothing is billed
//! for a request that produced no tokens.

use crate::helpers;

use chrono::{Duration, Utc};
use helpers::{TestApp, chat, issue_key, refusing_upstream, request_id};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::domain::keys;

/// Checks the OpenAI error shape and returns the body.
async fn error_body(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("not OpenAI-shaped: {body}"));
    for field in ["message", "type", "code", "param"] {
        assert!(error.contains_key(field), "missing {field}: {body}");
    }
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    body
}

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

#[tokio::test]
async fn malformed_bodies_get_400() {
    let app = TestApp::spawn().await;
    let send = |body: &'static str| {
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.key)
            .body(body)
            .send()
    };
    let body = error_body(send("{\"model\": ").await.unwrap(), 400).await;
    assert_eq!(body["error"]["code"], "invalid_json");
    error_body(send("[1, 2]").await.unwrap(), 400).await;
    let body = error_body(send("{\"messages\": []}").await.unwrap(), 400).await;
    assert_eq!(body["error"]["param"], "model");
    let body = error_body(
        send("{\"model\": \"megrez-7b-instruct\", \"stream\": \"yes\"}")
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(body["error"]["param"], "stream");
    assert_eq!(app.record_count().await, 0);
}

#[tokio::test]
async fn missing_malformed_unknown_expired_and_revoked_keys_get_distinct_401s() {
    let app = TestApp::spawn().await;
    let body = chat(None, "hi", false, json!({}));
    let response = app
        .client
        .post(app.url(ROUTE))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let missing = error_body(response, 401).await;
    assert_eq!(missing["error"]["code"], "missing_api_key");

    let mut messages = vec![];
    let expired = issue_key(&app.state, "acme", Some(Utc::now() - Duration::days(1))).await;
    let revoked = issue_key(&app.state, "acme", None).await;
    keys::revoke(app.state.db(), app.state.keys(), revoked.id)
        .await
        .unwrap();
    let unknown = tollgate::auth::ApiKey::generate();
    for key in [
        "sk-not-ours",
        unknown.expose_secret(),
        &expired.secret,
        &revoked.secret,
    ] {
        let response = app
            .client
            .post(app.url(ROUTE))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let error = error_body(response, 401).await;
        let message = error["error"]["message"].as_str().unwrap().to_string();
        assert!(!message.contains(key), "an error never repeats the key");
        messages.push(message);
    }
    let messages: std::collections::BTreeSet<String> = messages.into_iter().collect();
    assert_eq!(
        messages.len(),
        4,
        "each case says what is wrong: {messages:?}"
    );
    assert_eq!(app.record_count().await, 0);
}

#[tokio::test]
async fn unknown_models_chips_deployments_and_routes_get_404() {
    let app = TestApp::spawn().await;
    let body = chat(Some("no-such-model"), "hi", false, json!({}));
    for path in [
        "/v1/chat/completions",
        "/maas/no-such-model/nvidia/chat/completions",
        "/maas/megrez-7b-instruct/tpu9/chat/completions",
        "/maas/deployment/mif-nope/chat/completions",
        "/v1/no/such/route",
    ] {
        let error = error_body(app.post(path, &body).await, 404).await;
        assert_eq!(error["error"]["code"], "not_found", "{path}");
    }
    let embed_model_on_chat = chat(Some("bge-m3"), "hi", false, json!({}));
    error_body(
        app.post("/v1/chat/completions", &embed_model_on_chat).await,
        404,
    )
    .await;
}

#[tokio::test]
async fn a_path_that_is_not_utf8_gets_an_openai_shaped_400_on_every_route() {
    let app = TestApp::spawn().await;
    let body = chat(None, "hi", false, json!({}));
    let poll = app
        .client
        .get(app.url("/api/paas/v4/async-result/%FF"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    let error = error_body(poll, 400).await;
    assert_eq!(error["error"]["param"], "path");
    for path in [
        "/maas/%FF/nvidia/chat/completions",
        "/maas/megrez-7b-instruct/%FE%FF/chat/completions",
        "/maas/deployment/%FF/chat/completions",
    ] {
        error_body(app.post(path, &body).await, 400).await;
    }
}

#[tokio::test]
async fn task_routes_answer_an_oversized_body_with_an_openai_shaped_413() {
    let app = TestApp::spawn_with(|c| c.server.max_request_bytes = 1024).await;
    let big = json!({"comfy_task_ids": ["x".repeat(2048)]});
    for path in [
        "/api/maas/comfy_task_api/get_task_info",
        "/api/maas/comfy_task_api/cancel",
        "/api/maas/sd_task_api/get_result",
    ] {
        let error = error_body(app.post(path, &big).await, 413).await;
        assert_eq!(error["error"]["code"], "payload_too_large", "{path}");
    }
}

#[tokio::test]
async fn oversized_bodies_get_413_with_or_without_a_length() {
    let app = TestApp::spawn_with(|c| c.server.max_request_bytes = 1024).await;
    let big = chat(None, &"x".repeat(2000), false, json!({}));
    let error = error_body(app.post(ROUTE, &big).await, 413).await;
    assert_eq!(error["error"]["code"], "payload_too_large");

    // A chunked streaming request body, no Content-Length.
    let streamed = chat(None, &"x".repeat(2000), true, json!({}))
        .to_string()
        .into_bytes();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        streamed.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let response = app
        .client
        .post(app.url(ROUTE))
        .bearer_auth(&app.key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    error_body(response, 413).await;
    assert_eq!(app.record_count().await, 0);
}

#[tokio::test]
async fn backend_errors_are_mapped_keep_their_code_and_cost_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        ("http_500", 502, json!(null)),
        ("genstudio_401", 502, json!(60000)),
        ("http_400", 400, json!(null)),
        ("http_429", 429, json!(null)),
        ("inband_error", 502, json!(60001)),
        ("garbage", 502, json!("bad_gateway")),
    ];
    for (fault, status, code) in cases {
        for stream in [false, true] {
            // Mid-stream errors arrive after a 200 (see tests/streaming.rs); an error as the
            // first event is answered as an HTTP error.
            let fault = if stream && fault == "inband_error" {
                "inband_error_first"
            } else {
                fault
            };
            let response = app
                .post(ROUTE, &chat(None, "hi", stream, json!({"fault": fault})))
                .await;
            let id = request_id(&response);
            let body = error_body(response, status).await;
            let record = app.record(&id).await;
            if !code.is_null() {
                assert_eq!(body["error"]["code"], code, "{fault} stream={stream}");
            }
            assert_eq!(record.status, "upstream_error", "{fault} stream={stream}");
            assert_eq!(record.http_status, status as i64);
            assert_eq!(
                record.cost,
                Decimal::ZERO,
                "{fault} stream={stream}: no tokens, no charge"
            );
        }
    }
}

#[tokio::test]
async fn a_backend_that_refuses_connections_gets_502() {
    let app = TestApp::spawn_with(|c| {
        c.upstreams
            .push(refusing_upstream("internlm3-latest", "dead"))
    })
    .await;
    let response = app
        .post(
            "/maas/internlm3-latest/dead/chat/completions",
            &chat(None, "hi", false, json!({})),
        )
        .await;
    let record = app.record_of(&response).await;
    error_body(response, 502).await;
    assert_eq!(
        (record.status.as_str(), record.cost),
        ("unreachable", Decimal::ZERO)
    );
}

#[tokio::test]
async fn a_backend_that_does_not_answer_in_time_gets_504() {
    let app = TestApp::spawn_with(|c| {
        c.upstreams
            .iter_mut()
            .find(|u| u.chip == "nvidia")
            .unwrap()
            .first_byte_timeout_ms = 200;
    })
    .await;
    for stream in [false, true] {
        let response = app
            .post(
                ROUTE,
                &chat(None, "hi", stream, json!({"latency_ms": 1000})),
            )
            .await;
        let record = app.record_of(&response).await;
        let body = error_body(response, 504).await;
        assert_eq!(body["error"]["code"], "upstream_timeout");
        assert_eq!(
            (record.status.as_str(), record.cost),
            ("timeout", Decimal::ZERO)
        );
    }
}
