//! GenStudio's Stable Diffusion tasks through tollgate (`/api/maas/sd_task_api`): the
//! documented create body passes with its checkpoint mapped to the backend's name; each task
//! is billed once, per image and per task, when a `get_result` first sees it succeed,
//! whatever polls race; a failed task costs nothing; only the key that created a task may
//! poll it. The answer shapes are inferred (tests/fixtures/README.md); the dialect reads
//! the fixtures of them.

use crate::helpers;

use futures_util::future::join_all;
use helpers::{TestApp, dec, issue_key, request_id};
use serde_json::{Value, json};

const BASE: &str = "/api/maas/sd_task_api";
const CHECKPOINT: &str = "majicMIX realistic 麦橘写实_v7.safetensors";

/// The create body of GenStudio's tutorial, with `batch_size` and `n_iter` as given.
fn body(batch: u64, rounds: u64, sim: Value) -> Value {
    json!({
        "type": "txt2img",
        "prompt": "a beautiful landscape with mountains and a lake, digital art",
        "negative_prompt": "disfigured,blurry,watermark,",
        "seed": 123456798, "batch_size": batch, "n_iter": rounds,
        "width": 512, "height": 512, "sampler_name": "DDIM", "scheduler": "Karras",
        "steps": 30, "cfg_scale": 7,
        "override_settings": {"sd_model_checkpoint": CHECKPOINT,
            "sd_vae": "vae-84m-pruned_2.0.safetensors"},
        "alwayson_scripts": {},
        "x_sim": sim,
    })
}

async fn create(app: &TestApp, body: &Value) -> (String, String) {
    let response = app.post(&format!("{BASE}/create"), body).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let answer: Value = response.json().await.unwrap();
    (answer["data"]["task_id"].as_str().unwrap().to_string(), id)
}

async fn result(app: &TestApp, key: &str, task: &str) -> (u16, Value) {
    let body = json!({ "task_id": task });
    app.post_as(&format!("{BASE}/get_result"), key, &body).await
}

#[test]
fn the_fixtures_are_read() {
    let files = [
        "sd-create.json",
        "sd-result-running.json",
        "sd-result-success.json",
    ];
    let id = "sd0193a1c2d4e5f60718293a4b5c6d7e8f";
    helpers::reads_task_fixtures("sd", files, id, 2);
}

#[tokio::test]
async fn a_task_is_billed_once_per_image_when_first_seen_to_succeed() {
    let app = TestApp::spawn().await;
    let (task, id) = create(&app, &body(2, 2, json!({"polls": 2}))).await;
    // The backend got its own checkpoint name and the rest of the body as sent.
    let sent = app.upstream_saw().await["body"].clone();
    assert_eq!(sent["override_settings"]["sd_model_checkpoint"], CHECKPOINT);
    assert_eq!(
        sent["override_settings"]["sd_vae"],
        "vae-84m-pruned_2.0.safetensors"
    );
    assert_eq!(
        (sent["batch_size"].as_u64(), sent["n_iter"].as_u64()),
        (Some(2), Some(2))
    );
    for expected in [1, 2] {
        let (status, answer) = result(&app, &app.key, &task).await;
        assert_eq!(
            (status, answer["data"]["status"].as_u64()),
            (200, Some(expected))
        );
        assert!(
            app.records_with(&id).await.is_empty(),
            "running: nothing billed"
        );
    }
    let (_, answer) = result(&app, &app.key, &task).await;
    assert_eq!(answer["data"]["status"], 3);
    assert_eq!(answer["data"]["images"].as_array().unwrap().len(), 4);
    let records = app.records_with(&id).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        (
            record.model.as_str(),
            record.endpoint.as_str(),
            record.status.as_str()
        ),
        ("majicmix-realistic-v7", "image_task", "ok")
    );
    assert_eq!((record.images, record.tasks), (4, 1));
    assert_eq!(
        record.cost,
        dec("0.085"),
        "4 images at 0.02 and the task at 0.005"
    );
    for _ in 0..3 {
        result(&app, &app.key, &task).await;
    }
    assert_eq!(
        app.records_with(&id).await.len(),
        1,
        "later polls bill nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_polls_of_a_finished_task_bill_it_once() {
    let app = TestApp::spawn().await;
    let (task, id) = create(&app, &body(1, 1, json!({"polls": 0}))).await;
    let polls = (0..20).map(|_| result(&app, &app.key, &task));
    for (status, answer) in join_all(polls).await {
        assert_eq!((status, answer["data"]["status"].as_u64()), (200, Some(3)));
    }
    let records = app.records_with(&id).await;
    assert_eq!((records.len(), records[0].cost), (1, dec("0.025")));
}

#[tokio::test]
async fn failed_tasks_cost_nothing_and_only_the_owner_may_poll() {
    let app = TestApp::spawn().await;
    let (failing, failed_id) = create(&app, &body(1, 1, json!({"fault": "task_failed"}))).await;
    let (_, answer) = result(&app, &app.key, &failing).await;
    assert_eq!(answer["data"]["status"], 4);
    let records = app.records_with(&failed_id).await;
    assert_eq!(
        (records.len(), records[0].status.as_str(), records[0].cost),
        (1, "upstream_error", dec("0"))
    );

    // A failed poll leaves the task as it was; the next one bills it.
    let (flaky, flaky_id) = create(
        &app,
        &body(1, 1, json!({"polls": 0, "fault": "poll_error"})),
    )
    .await;
    let (status, _) = result(&app, &app.key, &flaky).await;
    assert_eq!(status, 502);
    assert!(app.records_with(&flaky_id).await.is_empty());
    let (status, _) = result(&app, &app.key, &flaky).await;
    assert_eq!(status, 200);
    assert_eq!(app.records_with(&flaky_id).await[0].cost, dec("0.025"));

    let (running, _) = create(&app, &body(1, 1, json!({"polls": 5}))).await;
    let other = issue_key(&app.state, "acme", None).await.secret;
    let (status, _) = result(&app, &other, &running).await;
    assert_eq!(status, 404, "another key's task is not found");
    let path = format!("{BASE}/get_result");
    let (status, body) = app.post_as(&path, &app.key, &json!({})).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("task_id"))
    );
}

#[tokio::test]
async fn a_create_without_a_known_checkpoint_is_refused_before_the_backend() {
    let app = TestApp::spawn().await;
    let mut missing = body(1, 1, json!({}));
    missing["override_settings"]
        .as_object_mut()
        .unwrap()
        .remove("sd_model_checkpoint");
    let response = app.post(&format!("{BASE}/create"), &missing).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error["error"]["param"],
        "override_settings.sd_model_checkpoint"
    );
    let mut unknown = body(1, 1, json!({}));
    unknown["override_settings"]["sd_model_checkpoint"] = json!("nobody.safetensors");
    let response = app.post(&format!("{BASE}/create"), &unknown).await;
    assert_eq!(response.status(), 404);
    let response = app
        .post(&format!("{BASE}/create"), &body(100, 100, json!({})))
        .await;
    assert_eq!(response.status(), 400, "10,000 images in one task");
    assert_eq!(app.record_count().await, 0);
}
