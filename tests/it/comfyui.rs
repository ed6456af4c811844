//! GenStudio's hosted ComfyUI workflows through tollgate (`/api/maas/comfy_task_api`): a run
//! is a task, billed once, per image and per run, when a `get_task_info` first sees it
//! succeed, whatever polls race; a failed or cancelled run costs nothing; only the key that
//! submitted a run may poll or cancel it; an upload passes through, billed per upload. The dialect reads
//! the documented shapes in `tests/fixtures/`.

use crate::helpers;

use futures_util::future::join_all;
use helpers::{TestApp, dec, issue_key, own_json, request_id};
use serde_json::{Value, json};
use tollgate::dialect::TaskState;

const BASE: &str = "/api/maas/comfy_task_api";

async fn run(app: &TestApp, sim: Value) -> (String, String) {
    let body = json!({"workflow_id": "wf-demo-txt2img",
        "prompt": {"6": {"inputs": {"text": "一只猫"}}}, "x_sim": sim});
    let response = app.post(&format!("{BASE}/prompt"), &body).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let answer: Value = response.json().await.unwrap();
    (
        answer["data"]["prompt_id"].as_str().unwrap().to_string(),
        id,
    )
}

async fn task_info(app: &TestApp, key: &str, ids: &[&str]) -> (u16, Value) {
    let body = json!({"comfy_task_ids": ids, "url_expire_period": 600});
    app.post_as(&format!("{BASE}/get_task_info"), key, &body)
        .await
}

#[test]
fn the_documented_shapes_are_read() {
    let files = [
        "comfyui-prompt.json",
        "comfyui-task-info-running.json",
        "comfyui-task-info-success.json",
    ];
    let id = "3a9f1c2e8b7d4e6fa1c0d9e8f7a6b5c4";
    helpers::reads_task_fixtures("comfyui", files, id, 2);
    let zhipu = tollgate::dialect::named("zhipu").unwrap();
    assert_eq!(
        zhipu.task_state(&own_json("zhipu-async-result-success.json")),
        Some(TaskState::Succeeded)
    );
}

#[tokio::test]
async fn a_run_is_billed_once_per_image_when_first_seen_to_succeed() {
    let app = TestApp::spawn().await;
    let (done_soon, first) = run(&app, json!({"polls": 1, "images": 3})).await;
    let (later, second) = run(&app, json!({"polls": 3, "images": 1})).await;
    // One poll names both; each entry comes back in order.
    let (status, answer) = task_info(&app, &app.key, &[&done_soon, &later]).await;
    assert_eq!(status, 200);
    let infos = answer["data"]["comfy_task_info"].as_array().unwrap();
    assert_eq!(infos.len(), 2);
    assert_eq!(
        (
            infos[0]["comfy_task_id"].as_str(),
            infos[1]["comfy_task_id"].as_str()
        ),
        (Some(done_soon.as_str()), Some(later.as_str()))
    );
    assert!(
        app.records_with(&first).await.is_empty(),
        "queued: nothing billed"
    );
    let (_, answer) = task_info(&app, &app.key, &[&done_soon, &later]).await;
    assert_eq!(answer["data"]["comfy_task_info"][0]["status"], 3);
    assert_eq!(answer["data"]["comfy_task_info"][1]["status"], 2);
    let records = app.records_with(&first).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        (record.endpoint.as_str(), record.status.as_str()),
        ("workflow", "ok")
    );
    assert_eq!((record.images, record.tasks), (3, 1));
    assert_eq!(
        record.cost,
        dec("0.16"),
        "3 images at 0.05 and the run at 0.01"
    );
    assert!(app.records_with(&second).await.is_empty());
    for _ in 0..3 {
        let _ = task_info(&app, &app.key, &[&done_soon, &later]).await;
    }
    assert_eq!(
        app.records_with(&first).await.len(),
        1,
        "later polls bill nothing"
    );
    assert_eq!(app.records_with(&second).await[0].cost, dec("0.06"));
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_polls_of_a_finished_run_bill_it_once() {
    let app = TestApp::spawn().await;
    let (task, id) = run(&app, json!({"polls": 0, "images": 2})).await;
    let ids = [task.as_str()];
    let polls = (0..20).map(|_| task_info(&app, &app.key, &ids));
    for (status, answer) in join_all(polls).await {
        assert_eq!(
            (
                status,
                answer["data"]["comfy_task_info"][0]["status"].as_u64()
            ),
            (200, Some(3))
        );
    }
    let records = app.records_with(&id).await;
    assert_eq!((records.len(), records[0].cost), (1, dec("0.11")));
}

#[tokio::test]
async fn failed_and_cancelled_runs_cost_nothing_and_only_the_owner_may_touch_a_run() {
    let app = TestApp::spawn().await;
    let (failing, failed_id) = run(&app, json!({"polls": 0, "fault": "task_failed"})).await;
    let (_, answer) = task_info(&app, &app.key, &[&failing]).await;
    assert_eq!(answer["data"]["comfy_task_info"][0]["status"], 4);
    let records = app.records_with(&failed_id).await;
    assert_eq!(
        (records.len(), records[0].status.as_str(), records[0].cost),
        (1, "upstream_error", dec("0"))
    );

    let (running, cancelled_id) = run(&app, json!({"polls": 5})).await;
    let other = issue_key(&app.state, "acme", None).await.secret;
    let (status, _) = task_info(&app, &other, &[&running]).await;
    assert_eq!(status, 404, "another key's run is not found");
    let cancel = |key: String| {
        let request = app
            .client
            .post(app.url(&format!("{BASE}/cancel")))
            .bearer_auth(key);
        request
            .json(&json!({"comfy_task_id": running.clone()}))
            .send()
    };
    assert_eq!(cancel(other).await.unwrap().status(), 404);
    let response = cancel(app.key.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    let (_, answer) = task_info(&app, &app.key, &[&running]).await;
    assert_eq!(answer["data"]["comfy_task_info"][0]["status"], 4);
    let records = app.records_with(&cancelled_id).await;
    assert_eq!((records.len(), records[0].cost), (1, dec("0")));

    let (status, body) = {
        let response = app
            .client
            .post(app.url(&format!("{BASE}/get_task_info")))
            .bearer_auth(&app.key)
            .json(&json!({"url_expire_period": 600}))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "comfy_task_ids");
}

#[tokio::test]
async fn an_upload_passes_through_and_is_billed_per_upload() {
    let app = TestApp::spawn().await;
    let png = [0x89, b'P', b'N', b'G', 0, 1, 2, 3];
    let response = helpers::upload_image(&app, &app.key, "cat.png", &png).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["data"]["key"]
            .as_str()
            .unwrap()
            .starts_with("upload/")
    );
    // One record: one upload at the workflow's price in force (0.001 from December 2026).
    let records = app.records_with(&id).await;
    assert_eq!(
        (records.len(), records[0].uploads, records[0].cost),
        (1, 1, dec("0.001"))
    );
    assert_eq!(records[0].model, "wf-demo-txt2img");
    let response = app
        .client
        .post(app.url(&format!("{BASE}/upload/image")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "uploads need a key too");
}

#[tokio::test]
async fn a_run_holds_a_prepaid_balance_for_the_images_its_nodes_ask_for() {
    use crate::spending::{set_billing, top_up};
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "t-1", json!("0.25")).await.0, 201);
    let batch = |size: Option<u64>| {
        let mut inputs = json!({"width": 512, "height": 512});
        if let Some(size) = size {
            inputs["batch_size"] = json!(size);
        }
        json!({"workflow_id": "wf-demo-txt2img", "x_sim": {"polls": 0, "images": 3},
            "prompt": {"5": {"inputs": inputs}, "6": {"inputs": {"text": "一只猫"}}}})
    };
    let path = format!("{BASE}/prompt");
    // Three images at 0.05 and the run at 0.01 are held: 0.16 of 0.25.
    let first = app.post(&path, &batch(Some(3))).await;
    assert_eq!(first.status(), 200);
    let first_id = request_id(&first);
    let task: Value = first.json().await.unwrap();
    let refused = app.post(&path, &batch(Some(3))).await;
    assert_eq!(
        refused.status(),
        402,
        "0.09 left does not cover another 0.16"
    );
    // A run that asks for no batch holds one image: 0.06.
    assert_eq!(app.post(&path, &batch(None)).await.status(), 200);
    let prompt_id = task["data"]["prompt_id"].as_str().unwrap();
    let (status, _) = task_info(&app, &app.key, &[prompt_id]).await;
    assert_eq!(status, 200);
    let records = app.records_with(&first_id).await;
    assert_eq!((records[0].images, records[0].cost), (3, dec("0.16")));
}
