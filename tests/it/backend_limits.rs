//! A backend's own limits: an upstream with `rpm` (a shared credential, as InternLM's 10 a
//! minute) is never sent more; the model's next chip takes the rest, and when none can,
//! tollgate answers 429 with `Retry-After` itself, reaching no backend and billing nothing.
//! A backend's own 429 keeps its `Retry-After` on the way to the client.

use crate::helpers;

use helpers::{TestApp, chat, dec, request_id};
use serde_json::json;

#[tokio::test]
async fn an_upstream_at_its_own_limit_is_not_sent_more_and_the_client_is_told_when_to_retry() {
    let app = TestApp::spawn_with(|c| {
        for up in c
            .upstreams
            .iter_mut()
            .filter(|u| u.model == "internlm3-latest")
        {
            up.rpm = Some(2);
        }
    })
    .await;
    let path = "/maas/internlm3-latest/ascend/chat/completions";
    for _ in 0..2 {
        let response = app.post(path, &chat(None, "hi", false, json!({}))).await;
        assert_eq!(response.status(), 200);
    }
    let before = app.record_count().await;
    let response = app.post(path, &chat(None, "hi", false, json!({}))).await;
    assert_eq!(response.status(), 429);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=30).contains(&wait),
        "about 30 s until one of 2 a minute: {wait}"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("internlm3-latest")
    );
    assert_eq!(
        app.record_count().await,
        before,
        "nothing reached a backend: no record"
    );
}

#[tokio::test]
async fn the_next_chip_takes_what_one_at_its_limit_cannot() {
    let app = TestApp::spawn_with(|c| {
        let chip3 = c
            .upstreams
            .iter_mut()
            .find(|u| {
                u.model == "megrez-7b-instruct" && u.chip == "chip3" && u.deployment.is_none()
            })
            .unwrap();
        chip3.rpm = Some(1);
    })
    .await;
    // The cheapest policy puts chip3 first; once it has had its one, others serve.
    let mut records = Vec::new();
    for _ in 0..3 {
        let response = app
            .post(
                "/v1/chat/completions",
                &chat(Some("megrez-7b-instruct"), "hi", false, json!({})),
            )
            .await;
        assert_eq!(response.status(), 200);
        records.push(app.record_of(&response).await);
    }
    let chips: Vec<&str> = records.iter().map(|r| r.chip.as_str()).collect();
    assert_eq!(chips[0], "chip3");
    assert!(chips[1..].iter().all(|&c| c != "chip3"), "{chips:?}");
    // The records after the first say chip3 was passed over at its own limit.
    assert!(records[0].attempts.is_empty());
    for record in &records[1..] {
        let passed_over: Vec<_> = (record.attempts.iter())
            .map(|a| (a.chip.as_str(), a.outcome.as_str()))
            .collect();
        assert_eq!(passed_over, [("chip3", "at_its_limit")]);
    }
}

#[tokio::test]
async fn a_backends_own_retry_after_reaches_the_client() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            &chat(None, "hi", false, json!({"fault": "http_429"})),
        )
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let record = app.record(&request_id(&response)).await;
    assert_eq!(
        (record.status.as_str(), record.cost),
        ("upstream_error", dec("0"))
    );
}
