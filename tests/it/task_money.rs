//! Money and tenancy on tasks and images, tried as a hostile tenant and a misbehaving
//! backend would (issue "Hardening 2"): a task's hold is released once whoever ends it;
//! no task or image record costs more than its hold; a tenant touches only its own tasks;
//! an expired task never hands out its result; a backend that reuses task ids never mixes
//! tenants; tasks nobody polls are billed when the backend ran them; a rotated key keeps
//! its tasks. Every money check is the invariant itself (`helpers::money`).

use crate::helpers;

use futures_util::future::join_all;
use helpers::money::assert_invariant;
use helpers::{TestApp, chat, dec, issue_key, request_id};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::spending::{set_billing, top_up};

const ZHIPU: &str = "/api/paas/v4";
const COMFY: &str = "/api/maas/comfy_task_api";
const SD: &str = "/api/maas/sd_task_api";

/// A gateway whose tasks expire after a second and whose polls are not rate limited.
async fn expiring_app() -> TestApp {
    TestApp::spawn_with(|c| {
        c.limits.task_expiry_secs = 1;
        c.limits.poll_rpm = 1_000_000;
        c.limits.default_rpm = 1_000_000;
    })
    .await
}

/// Submits a Zhipu async chat task with `sim` knobs: (task id, request id).
async fn submit_zhipu(app: &TestApp, sim: Value) -> (String, String) {
    let mut body = chat(Some("glm-4-plus"), "你好", false, sim);
    body["max_tokens"] = json!(100);
    let response = app
        .post(&format!("{ZHIPU}/async/chat/completions"), &body)
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let answer: Value = response.json().await.unwrap();
    (answer["id"].as_str().unwrap().to_string(), id)
}

async fn poll_zhipu(app: &TestApp, task: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.url(&format!("{ZHIPU}/async-result/{task}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn comfy_run(sim: Value) -> Value {
    json!({"workflow_id": "wf-demo-txt2img",
        "prompt": {"6": {"inputs": {"text": "一只猫"}}}, "x_sim": sim})
}

fn sd_task(sim: Value) -> Value {
    json!({"type": "txt2img", "prompt": "a lake", "batch_size": 1, "n_iter": 1,
        "override_settings": {"sd_model_checkpoint": "majicMIX realistic 麦橘写实_v7.safetensors"},
        "x_sim": sim})
}

/// POSTs `body` to `path` with `key`: the status, the request id, the answer.
async fn post(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, id, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ending_while_it_expires_releases_its_hold_once() {
    let app = expiring_app().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "t-1", json!("10")).await.0, 201);
    // 60 tasks, none polled before they are due to expire, each done at its second poll:
    // the sweep's own last poll and the clients' race to see it running, then done.
    let sim = json!({"polls": 1, "prompt_tokens": 20, "completion_tokens": 30});
    let mut tasks = Vec::new();
    for _ in 0..60 {
        tasks.push(submit_zhipu(&app, sim.clone()).await);
    }
    let before = assert_invariant(&app, 1).await;
    assert!(before.held > Decimal::ZERO);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // The expiry sweep and 20 clients polling every task, all at once.
    let sweep = tokio::spawn({
        let state = app.state.clone();
        async move { tollgate::proxy::tasks::expire(&state).await.unwrap() }
    });
    // The sweep goes oldest first; the clients newest first, so they meet on some tasks.
    let polls = (0..20).map(|_| async {
        for (task, _) in tasks.iter().rev() {
            let (status, _) = poll_zhipu(&app, task).await;
            assert!(matches!(status, 200 | 410), "{status}");
        }
    });
    join_all(polls).await;
    sweep.await.unwrap();
    // Each ended once: billed by whoever saw it done, or expired by the sweep if it was
    // still running then; never both, and never its hold released twice.
    let mut billed = 0;
    for (_, id) in &tasks {
        let records = app.records_with(id).await;
        assert_eq!(records.len(), 1, "{id}");
        assert!(
            matches!(records[0].status.as_str(), "ok" | "timeout"),
            "{id}"
        );
        billed += usize::from(records[0].status == "ok");
    }
    let after = assert_invariant(&app, 1).await;
    assert_eq!(after.held, Decimal::ZERO, "every hold released, once");
    assert_eq!(after.records, 60);
    let each = dec("0.00025") + dec("0.0001");
    assert_eq!(after.charged, Decimal::from(billed) * each);
    println!("{billed} of 60 billed, the others expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_or_image_record_costs_more_than_its_hold() {
    let app = expiring_app().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    let key = app.key.clone();
    let mut topped = 0;
    let mut top_up_020 = async || {
        topped += 1;
        assert_eq!(
            top_up(&app, &format!("t-{topped}"), json!("0.2")).await.0,
            201
        );
    };
    // CogView without `n`: one image held (0.1); the backend makes 100.
    top_up_020().await;
    let body = json!({"model": "cogview-3", "prompt": "一只猫", "x_sim": {"images": 100}});
    let (status, id, _) = post(&app, &format!("{ZHIPU}/images/generations"), &key, &body).await;
    assert_eq!(status, 200);
    let record = app.record(&id.unwrap()).await;
    assert_eq!((record.images, record.cost), (1, dec("0.1")));
    let note = record.error.unwrap();
    assert!(
        note.contains("100 images") && note.contains("spending hold"),
        "{note}"
    );
    assert_eq!(record.reported.map(|r| r.units.images), Some(100));
    // A Zhipu task whose backend reports a million completion tokens.
    top_up_020().await;
    let (task, id) = submit_zhipu(&app, json!({"polls": 0, "completion_tokens": 1_000_000})).await;
    assert_eq!(poll_zhipu(&app, &task).await.0, 200);
    let record = app.records_with(&id).await.remove(0);
    // Its hold: the prompt's byte bound and max_tokens (100) at 0.005 per 1k, and the task.
    assert_eq!(record.usage_source, "capped");
    assert!(record.cost < dec("0.001"), "{record:?}");
    // A ComfyUI run that asks for one image and gets 100: the run (0.01) and one (0.05).
    top_up_020().await;
    let (status, id, answer) = post(
        &app,
        &format!("{COMFY}/prompt"),
        &key,
        &comfy_run(json!({"polls": 0, "images": 100})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let prompt_id = answer["data"]["prompt_id"].as_str().unwrap().to_string();
    let body = json!({"comfy_task_ids": [prompt_id]});
    assert_eq!(
        post(&app, &format!("{COMFY}/get_task_info"), &key, &body)
            .await
            .0,
        200
    );
    let record = app.records_with(&id.unwrap()).await.remove(0);
    assert_eq!(
        (record.images, record.tasks, record.cost),
        (1, 1, dec("0.06"))
    );
    assert!(record.error.unwrap().contains("100 images"));
    // An SD task of one image that returns 100: the task (0.005) and one (0.02).
    top_up_020().await;
    let (status, id, answer) = post(
        &app,
        &format!("{SD}/create"),
        &key,
        &sd_task(json!({"polls": 0, "images": 100})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let body = json!({"task_id": answer["data"]["task_id"]});
    assert_eq!(
        post(&app, &format!("{SD}/get_result"), &key, &body).await.0,
        200
    );
    let record = app.records_with(&id.unwrap()).await.remove(0);
    assert_eq!((record.images, record.cost), (1, dec("0.025")));
    let figures = assert_invariant(&app, 1).await;
    assert!(figures.balance >= Decimal::ZERO, "{figures:?}");
    assert_eq!(figures.held, Decimal::ZERO);
}

#[tokio::test]
async fn a_comfyui_batch_size_is_held_as_asked_or_refused() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "t-1", json!("0.2")).await.0, 201);
    let run = |batch: Value| {
        json!({"workflow_id": "wf-demo-txt2img", "x_sim": {"polls": 0},
            "prompt": {"5": {"inputs": {"batch_size": batch}}, "6": {"inputs": {"text": "猫"}}}})
    };
    let path = format!("{COMFY}/prompt");
    // Sent as text, or linked to another node: held for what it may make (64 and 128
    // images at 0.05 are beyond 0.2).
    for batch in [json!("64"), json!(["5", 0])] {
        let (status, _, answer) = post(&app, &path, &app.key, &run(batch.clone())).await;
        assert_eq!(status, 402, "{batch}: {answer}");
    }
    // Not a whole number of at least one: refused, naming the prompt.
    for batch in [
        json!(2.5),
        json!(-1),
        json!(0),
        json!("many"),
        json!({"n": 1}),
    ] {
        let (status, _, answer) = post(&app, &path, &app.key, &run(batch.clone())).await;
        assert_eq!(
            (status, answer["error"]["param"].as_str()),
            (400, Some("prompt")),
            "{batch}"
        );
    }
    // "2" as text is two images: 0.11 held and billed.
    let (status, id, _) = post(&app, &path, &app.key, &run(json!("2"))).await;
    assert_eq!(status, 200);
    assert_eq!(app.state.spending().held(1).await.unwrap(), dec("0.11"));
    drop(id);
    assert_eq!(
        app.record_count().await,
        0,
        "nothing refused was recorded or sent"
    );
}

#[tokio::test]
async fn a_tenant_never_cancels_another_tenants_run() {
    let app = TestApp::spawn().await;
    let (status, _, victim) = post(
        &app,
        &format!("{COMFY}/prompt"),
        &app.key,
        &comfy_run(json!({"polls": 5})),
    )
    .await;
    assert_eq!(status, 200);
    let victim = victim["data"]["prompt_id"].as_str().unwrap().to_string();
    tollgate::store::accounts::create(app.state.db(), "mallory")
        .await
        .unwrap();
    let mallory = issue_key(&app.state, "mallory", None).await.secret;
    let (status, _, own) = post(
        &app,
        &format!("{COMFY}/prompt"),
        &mallory,
        &comfy_run(json!({"polls": 5})),
    )
    .await;
    assert_eq!(status, 200);
    let own = own["data"]["prompt_id"].as_str().unwrap().to_string();
    // Its own id where tollgate checks, the victim's where a backend might look.
    for body in [
        json!({"comfy_task_ids": [own], "comfy_task_id": victim}),
        json!({"comfy_task_ids": [own], "prompt_id": victim}),
    ] {
        let (status, _, answer) = post(&app, &format!("{COMFY}/cancel"), &mallory, &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let app = &app;
    let info = |key: String, id: String| {
        let body = json!({"comfy_task_ids": [id]});
        let path = format!("{COMFY}/get_task_info");
        async move {
            let answer = post(app, &path, &key, &body).await.2;
            answer["data"]["comfy_task_info"][0]["status"].clone()
        }
    };
    assert_eq!(info(mallory, own).await, 4, "its own run is cancelled");
    assert_ne!(
        info(app.key.clone(), victim).await,
        4,
        "the victim's runs on"
    );
}

#[tokio::test]
async fn an_expired_task_never_hands_out_its_result() {
    let app = expiring_app().await;
    // Each still running at the sweep's own last poll (its first), done at the next.
    let (zhipu_task, zhipu_id) = submit_zhipu(&app, json!({"polls": 1})).await;
    let key = app.key.clone();
    let (_, comfy_id, answer) = post(
        &app,
        &format!("{COMFY}/prompt"),
        &key,
        &comfy_run(json!({"polls": 1, "images": 2})),
    )
    .await;
    let comfy_task = answer["data"]["prompt_id"].as_str().unwrap().to_string();
    let (_, sd_id, answer) = post(
        &app,
        &format!("{SD}/create"),
        &key,
        &sd_task(json!({"polls": 1})),
    )
    .await;
    let sd_task_id = answer["data"]["task_id"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(tollgate::proxy::tasks::expire(&app.state).await.unwrap(), 3);
    for id in [&zhipu_id, &comfy_id.unwrap(), &sd_id.unwrap()] {
        let records = app.records_with(id).await;
        assert_eq!((records.len(), records[0].status.as_str()), (1, "timeout"));
    }
    // The backends have finished them now; tollgate hands out nothing unbilled.
    let (status, answer) = poll_zhipu(&app, &zhipu_task).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (410, Some("task_expired")),
        "{answer}"
    );
    assert!(answer.get("choices").is_none());
    let body = json!({"comfy_task_ids": [comfy_task], "url_expire_period": 315_360_000});
    let (status, _, answer) = post(&app, &format!("{COMFY}/get_task_info"), &key, &body).await;
    assert_eq!(status, 410, "{answer}");
    assert!(!answer.to_string().contains("sim.invalid"), "{answer}");
    let body = json!({"task_id": sd_task_id});
    let (status, _, answer) = post(&app, &format!("{SD}/get_result"), &key, &body).await;
    assert_eq!(status, 410, "{answer}");
    assert!(!answer.to_string().contains("sim.invalid"), "{answer}");
}

#[tokio::test]
async fn a_task_nobody_polls_is_billed_when_the_backend_ran_it() {
    let app = expiring_app().await;
    let (_, id) = submit_zhipu(
        &app,
        json!({"polls": 0, "prompt_tokens": 20, "completion_tokens": 30}),
    )
    .await;
    let key = app.key.clone();
    let (_, comfy_id, _) = post(
        &app,
        &format!("{COMFY}/prompt"),
        &key,
        &comfy_run(json!({"polls": 0, "images": 2})),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        tollgate::proxy::tasks::expire(&app.state).await.unwrap(),
        0,
        "none expired"
    );
    let record = app.records_with(&id).await.remove(0);
    assert_eq!(
        (record.status.as_str(), record.completion_tokens),
        ("ok", 30)
    );
    let record = app.records_with(&comfy_id.unwrap()).await.remove(0);
    assert_eq!(
        (record.status.as_str(), record.images, record.cost),
        ("ok", 2, dec("0.11"))
    );
    assert_invariant(&app, 1).await;
}

#[tokio::test]
async fn a_backend_reusing_a_task_id_never_mixes_tenants() {
    let app = TestApp::spawn().await;
    tollgate::store::accounts::create(app.state.db(), "second")
        .await
        .unwrap();
    let second = issue_key(&app.state, "second", None).await.secret;
    let path = format!("{SD}/create");
    let sim = json!({"polls": 0, "task_id": "sd-reused-0001"});
    let (status, first_id, _) = post(&app, &path, &app.key, &sd_task(sim.clone())).await;
    assert_eq!(status, 200);
    let (status, second_id, answer) = post(&app, &path, &second, &sd_task(sim)).await;
    assert_eq!(status, 502, "{answer}");
    let records = app.records_with(&second_id.unwrap()).await;
    assert_eq!(
        (records.len(), records[0].status.as_str(), records[0].cost),
        (1, "upstream_error", dec("0"))
    );
    // The second tenant has no such task; the first is billed for its own, once.
    let body = json!({"task_id": "sd-reused-0001"});
    assert_eq!(
        post(&app, &format!("{SD}/get_result"), &second, &body)
            .await
            .0,
        404
    );
    assert_eq!(
        post(&app, &format!("{SD}/get_result"), &app.key, &body)
            .await
            .0,
        200
    );
    let records = app.records_with(&first_id.unwrap()).await;
    assert_eq!((records.len(), records[0].status.as_str()), (1, "ok"));
    assert_eq!(records[0].account_id, 1);
}

#[tokio::test]
async fn a_rotated_key_keeps_the_tasks_of_its_old_secret() {
    let app = TestApp::spawn().await;
    let (task, id) = submit_zhipu(
        &app,
        json!({"polls": 0, "prompt_tokens": 20, "completion_tokens": 30}),
    )
    .await;
    assert!(app.records_with(&id).await.is_empty(), "nothing billed yet");
    let hash = tollgate::auth::ApiKey::parse(&app.key).unwrap().hash();
    let db = app.state.db();
    let key = tollgate::store::keys::find_by_hash(db, &hash)
        .await
        .unwrap()
        .unwrap();
    let grace = chrono::Duration::zero();
    let rotated = tollgate::domain::keys::rotate(db, app.state.keys(), key.id, grace)
        .await
        .unwrap();
    let response = app
        .client
        .get(app.url(&format!("{ZHIPU}/async-result/{task}")))
        .bearer_auth(&rotated.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let records = app.records_with(&id).await;
    assert_eq!(
        (records.len(), records[0].status.as_str(), records[0].key_id),
        (1, "ok", key.id)
    );
}

/// A key of account "acme" with `rpm` and only `models` allowed.
async fn limited_key(app: &TestApp, rpm: u32, models: &[&str]) -> String {
    let limits = tollgate::store::keys::KeyLimits {
        rpm: Some(rpm),
        allowed_models: Some(models.iter().map(|m| m.to_string()).collect()),
        ..Default::default()
    };
    helpers::key_with_limits(&app.state, "acme", limits).await
}

/// An upload of one file named `name`, `size` bytes long, with `key`: status and answer.
async fn upload(app: &TestApp, key: &str, name: &str, size: usize) -> (u16, Value) {
    let response = helpers::upload_image(app, key, name, &vec![7; size]).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn uploads_and_cancels_count_against_the_keys_limits() {
    let app = TestApp::spawn_with(|c| c.server.max_upload_bytes = 64 << 10).await;
    // A key allowed only a chat model may neither upload nor cancel.
    let chat_only = limited_key(&app, 2, &["glm-4-plus"]).await;
    let (status, answer) = upload(&app, &chat_only, "cat.png", 16).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    // A key allowed the workflow: uploads are checked, and count against its rpm (2).
    let lenient = limited_key(&app, 100, &["wf-demo-txt2img"]).await;
    for name in ["../../etc/passwd", "a\\b.png", "x\u{1}.png", ".."] {
        let (status, answer) = upload(&app, &lenient, name, 16).await;
        assert_eq!(status, 400, "{name}: {answer}");
    }
    let key = limited_key(&app, 2, &["wf-demo-txt2img"]).await;
    let (status, _) = upload(&app, &key, "big.png", 65 << 10).await;
    assert_eq!(status, 413, "beyond server.max_upload_bytes");
    assert_eq!(upload(&app, &key, "cat.png", 16).await.0, 200);
    let (status, answer) = upload(&app, &key, "cat.png", 16).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded"))
    );
    // Cancels too: a run (1 of rpm 2), then cancels until refused.
    let key = limited_key(&app, 2, &["wf-demo-txt2img"]).await;
    let (status, _, answer) = post(
        &app,
        &format!("{COMFY}/prompt"),
        &key,
        &comfy_run(json!({"polls": 5})),
    )
    .await;
    assert_eq!(status, 200);
    let body = json!({"comfy_task_id": answer["data"]["prompt_id"]});
    let cancel = format!("{COMFY}/cancel");
    assert_eq!(post(&app, &cancel, &key, &body).await.0, 200);
    assert_eq!(post(&app, &cancel, &key, &body).await.0, 429);
    // Only the one upload the backend took is billed; nothing refused is recorded.
    assert_eq!(app.record_count().await, 1);
}

#[tokio::test]
async fn a_task_that_ends_without_usage_is_billed_on_its_prompt_counted_at_submission() {
    let app = TestApp::spawn().await;
    let long = "计费".repeat(200);
    let mut body = chat(
        Some("glm-4-plus"),
        &long,
        false,
        json!({"polls": 0, "usage": false}),
    );
    body["max_tokens"] = json!(100);
    let response = app
        .post(&format!("{ZHIPU}/async/chat/completions"), &body)
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let task: Value = response.json().await.unwrap();
    let (status, answer) = poll_zhipu(&app, task["id"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert!(answer.get("usage").is_none());
    let record = app.records_with(&id).await.remove(0);
    assert_eq!(
        (record.status.as_str(), record.usage_source.as_str()),
        ("ok", "estimated")
    );
    assert!(
        record.prompt_tokens >= 200,
        "the prompt counted: {record:?}"
    );
    assert!(
        record.completion_tokens > 0,
        "the answer counted: {record:?}"
    );
}

#[tokio::test]
async fn an_upload_is_held_and_billed_like_any_request() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    // One upload of the demo workflow costs 0.001: the balance covers one, not two.
    assert_eq!(top_up(&app, "t-1", json!("0.0015")).await.0, 201);
    let (status, answer) = upload(&app, &app.key, "cat.png", 16).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = upload(&app, &app.key, "cat.png", 16).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (402, Some("insufficient_quota"))
    );
    let figures = assert_invariant(&app, 1).await;
    assert_eq!((figures.records, figures.charged), (1, dec("0.001")));
    assert_eq!(figures.held, Decimal::ZERO);
}
