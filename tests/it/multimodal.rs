//! What the InternLM and GenStudio documents show beyond plain chat: a moderation block in
//! the middle of a stream ends the answer cleanly, InternLM's `moderation.sensitive`
//! verdicts in streams are recorded, tool definitions and tool calls count in reservations
//! and estimates, images (`image_url` parts, URL or base64, several) are accepted within
//! the default body limit and reserved at a fixed allowance rather than their bytes, `n`
//! multiplies the reservation, and `/api/v1/...` serves InternLM-style base URLs.

use crate::helpers;

use helpers::{TestApp, chat, request_id};
use serde_json::{Value, json};
use tollgate::metering::estimate::IMAGE_TOKENS;

const CHIP: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

async fn key_with_tpm(app: &TestApp, tpm: u64) -> String {
    let request = tollgate::domain::keys::NewKeyRequest {
        account: "acme".into(),
        name: "tpm".into(),
        expires_at: None,
        limits: tollgate::store::keys::KeyLimits {
            rpm: Some(1000),
            tpm: Some(tpm),
            allowed_models: None,
        },
    };
    tollgate::domain::keys::issue(app.state.db(), app.state.keys(), request)
        .await
        .unwrap()
        .key
}

async fn post_with(app: &TestApp, key: &str, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_moderation_block_mid_stream_ends_the_answer_cleanly() {
    let app = TestApp::spawn().await;
    // GenStudio: content, then a chunk that says `blocked`, then the connection closes.
    let raw = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"我是\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}}],\"blocked\":true}\n\n",
    );
    let response = app
        .post(CHIP, &chat(None, "q", true, json!({"raw": raw})))
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "a clean end: {text}");
    assert!(!text.contains("\"error\""), "no error event: {text}");
    let record = app.record(&id).await;
    assert_eq!((record.status.as_str(), record.blocked), ("ok", true));
}

#[tokio::test]
async fn internlm_sensitive_verdicts_in_streams_are_recorded() {
    let app = TestApp::spawn().await;
    let raw = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"答\"},\"finish_reason\":\"\"}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}],",
        "\"moderation\":{\"sensitive\":true,\"level\":2},",
        "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}\n\n",
        "data: [DONE]\n\n",
    );
    let path = "/maas/internlm3-latest/ascend/chat/completions";
    let response = app
        .post(path, &chat(None, "q", true, json!({"raw": raw})))
        .await;
    let id = request_id(&response);
    let _ = response.text().await;
    let record = app.record(&id).await;
    assert_eq!(record.status, "ok");
    let moderation: Value = serde_json::from_str(record.moderation.as_deref().unwrap()).unwrap();
    assert_eq!(moderation["sensitive"], true);
}

#[tokio::test]
async fn tools_count_in_reservations_and_estimates() {
    let app = TestApp::spawn().await;
    let tool = json!({"type": "function", "function": {"name": "get_weather",
        "description": "天气 ".repeat(200),
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    let mut body = chat(None, "北京天气？", false, json!({"usage": false}));
    body["tools"] = json!([tool]);
    body["max_tokens"] = json!(10);
    // A key whose tpm covers the question but not the tool definitions (a request larger
    // than the whole minute passes only on a full bucket: the first takes a little).
    let key = key_with_tpm(&app, 600).await;
    let mut question = chat(None, "北京天气？", false, json!({}));
    question["max_tokens"] = json!(10);
    for _ in 0..2 {
        assert_eq!(post_with(&app, &key, CHIP, &question).await.status(), 200);
    }
    let response = post_with(&app, &key, CHIP, &body).await;
    assert_eq!(
        response.status(),
        429,
        "the tools are part of the prompt reserved"
    );
    // Without usage from the backend, the estimate counts the tools too.
    let plain = app
        .post(
            CHIP,
            &chat(None, "北京天气？", false, json!({"usage": false})),
        )
        .await;
    let plain = app.record_of(&plain).await;
    let with_tools = app.post(CHIP, &body).await;
    let with_tools = app.record_of(&with_tools).await;
    assert_eq!(with_tools.usage_source, "estimated");
    assert!(
        with_tools.prompt_tokens > plain.prompt_tokens + 200,
        "{} against {}",
        with_tools.prompt_tokens,
        plain.prompt_tokens
    );
}

#[tokio::test]
async fn several_base64_images_fit_the_default_limit_and_are_reserved_at_their_allowance() {
    let app = TestApp::spawn().await;
    let image = format!("data:image/png;base64,{}", "iVBORw0KGgo".repeat(100_000)); // 1.1 MB
    let content = json!([
        {"type": "text", "text": "这三张图有什么不同？"},
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
    ]);
    let body = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 100,
        "x_sim": {"usage": false}});
    // Were the images counted by their bytes, 3.3 million tokens would be reserved (and
    // the second request refused: a request larger than the minute passes only once).
    let key = key_with_tpm(&app, 10 * IMAGE_TOKENS).await;
    let response = post_with(&app, &key, CHIP, &body).await;
    assert_eq!(response.status(), 200);
    let _ = app.record_of(&response).await;
    let response = post_with(&app, &key, CHIP, &body).await;
    assert_eq!(response.status(), 200);
    let record = app.record_of(&response).await;
    assert_eq!(record.usage_source, "estimated");
    assert!(
        (3 * IMAGE_TOKENS as i64..3 * IMAGE_TOKENS as i64 + 100).contains(&record.prompt_tokens),
        "three images at their allowance and a short question: {}",
        record.prompt_tokens
    );
    // `n` answers reserve n times the completion: 40 × 100 is more than this key has left.
    let mut twice = body.clone();
    twice["n"] = json!(40);
    let response = post_with(&app, &key, CHIP, &twice).await;
    assert_eq!(response.status(), 429);
}

#[tokio::test]
async fn internlm_style_base_urls_are_served() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/api/v1/chat/completions",
            &chat(Some("internlm3-latest"), "你好", false, json!({})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let record = app.record_of(&response).await;
    assert_eq!(
        (record.model.as_str(), record.chip.as_str()),
        ("internlm3-latest", "ascend")
    );
}

#[tokio::test]
async fn a_vision_models_input_images_are_priced_per_image_when_it_answers() {
    let app = TestApp::spawn().await;
    let content = json!([
        {"type": "text", "text": "比较这两张图"},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]);
    let body = |sim: Value| {
        json!({"model": "qwen-vl-plus", "messages": [{"role": "user", "content": content}],
            "x_sim": sim})
    };
    let response = app
        .post(
            "/compatible-mode/v1/chat/completions",
            &body(json!({"prompt_tokens": 2100, "completion_tokens": 30})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let record = app.record_of(&response).await;
    assert_eq!(record.images, 2);
    // 2100 × 0.0015 / 1000 + 30 × 0.0045 / 1000 + 2 × 0.002
    assert_eq!(record.cost, helpers::dec("0.007285"));
    // A failed request pays for no image.
    let failed = app
        .post(
            "/compatible-mode/v1/chat/completions",
            &body(json!({"fault": "http_500"})),
        )
        .await;
    let record = app.record_of(&failed).await;
    assert_eq!((record.images, record.cost), (0, helpers::dec("0")));
}
