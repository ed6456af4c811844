//! Every client route reaches the right backend, and every call leaves one exact record.

use crate::helpers;

use helpers::{TestApp, chat, dec, expected_cost, refusing_upstream};
use serde_json::{Value, json};
use tollgate::config::RoutingPolicy;

#[tokio::test]
async fn the_mxn_route_bills_each_chip_at_its_own_price() {
    let app = TestApp::spawn().await;
    let knobs = json!({"prompt_tokens": 1000, "completion_tokens": 500});
    for (chip, input, output) in [
        ("nvidia", "0.0012", "0.0024"),
        ("amd", "0.0010", "0.0020"),
        ("chip3", "0.0006", "0.0012"),
    ] {
        let response = app
            .post(
                &format!("/maas/megrez-7b-instruct/{chip}/chat/completions"),
                &chat(None, "hi", false, knobs.clone()),
            )
            .await;
        assert_eq!(response.status(), 200, "{chip}");
        let record = app.record_of(&response).await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "我是无问天权。");
        assert_eq!((record.chip.as_str(), record.status.as_str()), (chip, "ok"));
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (1000, 500)
        );
        assert_eq!(record.usage_source, "reported");
        assert_eq!(
            record.cost,
            expected_cost(1000, 0, 500, input, input, output),
            "{chip}"
        );
    }
}

#[tokio::test]
async fn cached_prompt_tokens_are_billed_once_at_the_cached_price() {
    let app = TestApp::spawn().await;
    let knobs = json!({"prompt_tokens": 1200, "completion_tokens": 3, "cached_tokens": 1024});
    let response = app
        .post(
            "/v1/chat/completions",
            &chat(Some("qwen2.5-72b-instruct"), "hi", false, knobs),
        )
        .await;
    let record = app.record_of(&response).await;
    assert_eq!(
        (
            record.prompt_tokens,
            record.cached_tokens,
            record.completion_tokens
        ),
        (1200, 1024, 3)
    );
    // 176 * 0.004 + 1024 * 0.001 + 3 * 0.012 = 1.764 per thousand
    assert_eq!(record.cost, dec("0.001764"));
}

#[tokio::test]
async fn the_model_route_follows_the_cheapest_policy_on_both_prefixes() {
    let app = TestApp::spawn().await;
    for path in ["/v1/chat/completions", "/maas/v1/chat/completions"] {
        let response = app
            .post(
                path,
                &chat(Some("megrez-7b-instruct"), "hi", false, json!({})),
            )
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(app.record_of(&response).await.chip, "chip3", "{path}");
    }
}

#[tokio::test]
async fn a_default_chip_is_tried_first() {
    let app = TestApp::spawn_with(|c| {
        c.routing.models.insert(
            "megrez-7b-instruct".into(),
            toml::from_str("policy = \"first\"\ndefault_chip = \"amd\"").unwrap(),
        );
    })
    .await;
    let response = app
        .post(
            "/v1/chat/completions",
            &chat(Some("megrez-7b-instruct"), "hi", false, json!({})),
        )
        .await;
    assert_eq!(app.record_of(&response).await.chip, "amd");
}

#[tokio::test]
async fn a_chip_that_refuses_connections_fails_over_to_the_next() {
    let app = TestApp::spawn_with(|c| {
        c.routing.default_policy = RoutingPolicy::First;
        c.upstreams
            .insert(0, refusing_upstream("internlm3-latest", "dead"));
    })
    .await;
    let response = app
        .post(
            "/v1/chat/completions",
            &chat(Some("internlm3-latest"), "hi", false, json!({})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let record = app.record_of(&response).await;
    assert_eq!(record.chip, "ascend");
    // The record says which backend it passed over, and why.
    let passed_over: Vec<_> = (record.attempts.iter())
        .map(|a| (a.chip.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(passed_over, [("dead", "refused")]);
    assert_eq!(record.reported, None, "billed as reported");
}

#[tokio::test]
async fn a_deployment_is_reached_by_its_id() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/maas/deployment/mif-demo0001/chat/completions",
            &chat(None, "hi", false, json!({})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let record = app.record_of(&response).await;
    assert_eq!(record.deployment.as_deref(), Some("mif-demo0001"));
    assert_eq!(record.chip, "nvidia");
}

#[tokio::test]
async fn embeddings_and_rerank_are_metered_on_both_prefixes() {
    let app = TestApp::spawn().await;
    for prefix in ["/v1", "/maas/v1"] {
        let response = app
            .post(
                &format!("{prefix}/embeddings"),
                &json!({"model": "bge-m3", "input": "hello"}),
            )
            .await;
        assert_eq!(response.status(), 200);
        let record = app.record_of(&response).await;
        assert_eq!(
            (record.endpoint.as_str(), record.prompt_tokens),
            ("embeddings", 9)
        );
        assert_eq!(record.cost, dec("0.0000045"));

        let body = json!({"model": "bge-reranker-v2-m3", "query": "q", "documents": ["a", "b"]});
        let response = app.post(&format!("{prefix}/rerank"), &body).await;
        assert_eq!(response.status(), 200);
        let record = app.record_of(&response).await;
        assert_eq!(
            (record.endpoint.as_str(), record.prompt_tokens),
            ("rerank", 57)
        );
        // 57 tokens * 0.0002 / 1000 + 0.0001 per request
        assert_eq!(record.cost, dec("0.0001114"));
    }
}

#[tokio::test]
async fn the_model_list_shows_models_with_their_chips() {
    let app = TestApp::spawn().await;
    for path in [
        "/v1/models",
        "/maas/v1/models",
        "/maas/megrez-7b-instruct/nvidia/models",
    ] {
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let megrez = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "megrez-7b-instruct")
            .unwrap();
        assert_eq!(
            megrez["chips"],
            json!(["nvidia", "amd", "chip3", "chip4", "chip5"])
        );
    }
}

#[tokio::test]
async fn the_backend_gets_its_own_credential_and_model_never_the_clients_key() {
    // The credential in a file, as a mounted secret holds it.
    let secrets = tempfile::tempdir().unwrap();
    let credential = secrets.path().join("internlm-key");
    std::fs::write(&credential, "backend-secret\n").unwrap();
    let app = TestApp::spawn_with(|c| {
        let up = c.upstreams.iter_mut().find(|u| u.chip == "ascend").unwrap();
        up.api_key_file = Some(credential);
        up.upstream_model = Some("internlm3-8b-instruct".into());
    })
    .await;
    let response = app
        .post(
            "/maas/internlm3-latest/ascend/chat/completions",
            &chat(Some("whatever"), "hi", false, json!({})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let saw = app.upstream_saw().await;
    assert_eq!(saw["authorization"], "Bearer backend-secret");
    assert_eq!(saw["body"]["model"], "internlm3-8b-instruct");
    assert!(!saw.to_string().contains(&app.key));
}

#[tokio::test]
async fn moderation_verdicts_are_recorded() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            &chat(
                None,
                "hi",
                false,
                json!({"fault": "blocked", "prompt_tokens": 31}),
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let record = app.record_of(&response).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["blocked"], true,
        "the client sees the backend's verdict"
    );
    assert!(record.blocked);
    assert_eq!((record.prompt_tokens, record.completion_tokens), (31, 0));
}
