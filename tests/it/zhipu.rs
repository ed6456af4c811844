//! Zhipu's GLM API through tollgate (`/api/paas/v4`): chat, CogView images billed per image,
//! and asynchronous chat tasks billed exactly once, when a poll first sees one succeed:
//! never while processing, never for a failure, not again on later or concurrent polls,
//! after a failed poll, after a restart, or when the record was written but the task not
//! yet marked. Only the key that submitted a task may poll it; a task never polled to its
//! end expires at no cost. And the official `zhipuai` SDK, unchanged, as the client.

use crate::helpers;

use futures_util::future::join_all;
use helpers::{TestApp, chat, dec, expected_cost, issue_key, request_id};
use serde_json::{Value, json};
use tollgate::store;

const BASE: &str = "/api/paas/v4";

/// glm-4-plus in the sample prices: 0.005 in and out per 1k, 0.0001 per task.
fn glm_cost(prompt: u64, completion: u64, tasks: u32) -> rust_decimal::Decimal {
    expected_cost(prompt, 0, completion, "0.005", "0.005", "0.005")
        + dec("0.0001") * rust_decimal::Decimal::from(tasks)
}

fn task_body(sim: Value) -> Value {
    chat(Some("glm-4-plus"), "你好", false, sim)
}

async fn submit(app: &TestApp, sim: Value) -> (String, String) {
    let response = app
        .post(&format!("{BASE}/async/chat/completions"), &task_body(sim))
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["task_status"], "PROCESSING");
    (body["id"].as_str().unwrap().to_string(), id)
}

async fn poll_with(app: &TestApp, key: &str, task: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.url(&format!("{BASE}/async-result/{task}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn poll(app: &TestApp, task: &str) -> (u16, Value) {
    poll_with(app, &app.key, task).await
}

/// Stops `first` and starts a gateway on the same ledger and backend (where its tasks
/// live); returns it and `first`'s key.
async fn restart(first: TestApp, database: tollgate::config::DatabaseConfig) -> (TestApp, String) {
    let (zhipu, key) = (format!("http://{}/zhipu", first.sim), first.key.clone());
    first.stop().await;
    let second = TestApp::spawn_with(move |c| {
        c.database = database;
        helpers::point_model_at(c, "glm-4-plus", &zhipu);
    })
    .await;
    (second, key)
}

/// The task's status, from a poll that must succeed.
async fn status_of(app: &TestApp, task: &str) -> String {
    let (status, body) = poll(app, task).await;
    assert_eq!(status, 200, "{body}");
    body["task_status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn chat_and_images_are_metered_images_each_at_their_price() {
    let app = TestApp::spawn().await;
    for stream in [false, true] {
        let knobs = json!({"prompt_tokens": 22, "completion_tokens": 18});
        let response = app
            .post(
                &format!("{BASE}/chat/completions"),
                &chat(Some("glm-4-plus"), "你好", stream, knobs),
            )
            .await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        let _ = response.text().await;
        let record = app.record(&id).await;
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens, record.tasks),
            (22, 18, 0)
        );
        assert_eq!(record.cost, glm_cost(22, 18, 0), "no task fee off tasks");
    }
    let body = json!({"model": "cogview-3", "prompt": "一只猫", "n": 3});
    let response = app.post(&format!("{BASE}/images/generations"), &body).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["data"].as_array().unwrap().len(), 3);
    let record = app.record(&id).await;
    assert_eq!((record.endpoint.as_str(), record.images), ("images", 3));
    assert_eq!(record.cost, dec("0.3"));
    // The same through the OpenAI-style path, and fewer images than asked are billed as made.
    let body = json!({"model": "cogview-3", "prompt": "两只猫", "n": 4, "x_sim": {"images": 1}});
    let response = app.post("/v1/images/generations", &body).await;
    let record = app.record_of(&response).await;
    assert_eq!((record.images, record.cost), (1, dec("0.1")));
}

#[tokio::test]
async fn a_task_is_billed_once_when_a_poll_first_sees_it_succeed() {
    let app = TestApp::spawn().await;
    let (task, id) = submit(
        &app,
        json!({"polls": 2, "prompt_tokens": 30, "completion_tokens": 12}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(status_of(&app, &task).await, "PROCESSING");
        assert!(
            app.records_with(&id).await.is_empty(),
            "nothing billed while processing"
        );
    }
    assert_eq!(status_of(&app, &task).await, "SUCCESS");
    let records = app.records_with(&id).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        (record.status.as_str(), record.endpoint.as_str()),
        ("ok", "async_chat")
    );
    assert_eq!(
        (record.prompt_tokens, record.completion_tokens, record.tasks),
        (30, 12, 1)
    );
    assert_eq!(record.cost, glm_cost(30, 12, 1));
    for _ in 0..3 {
        assert_eq!(status_of(&app, &task).await, "SUCCESS");
    }
    assert_eq!(
        app.records_with(&id).await.len(),
        1,
        "later polls bill nothing"
    );
    let stored = store::tasks::by_request_id(app.state.db(), &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_polls_of_a_finished_task_bill_it_once() {
    let app = TestApp::spawn().await;
    let (task, id) = submit(
        &app,
        json!({"polls": 0, "prompt_tokens": 8, "completion_tokens": 4}),
    )
    .await;
    let polls = (0..20).map(|_| poll(&app, &task));
    for (status, body) in join_all(polls).await {
        assert_eq!(
            (status, body["task_status"].as_str()),
            (200, Some("SUCCESS"))
        );
    }
    let records = app.records_with(&id).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].cost, glm_cost(8, 4, 1));
    assert_eq!(app.record_count().await, 1);
}

#[tokio::test]
async fn only_the_submitting_key_may_poll_and_unknown_tasks_are_not_found() {
    let app = TestApp::spawn().await;
    let (task, id) = submit(&app, json!({"polls": 0})).await;
    let other = issue_key(&app.state, "acme", None).await.secret;
    let (status, body) = poll_with(&app, &other, &task).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(&task));
    let (status, _) = poll(&app, "no-such-task").await;
    assert_eq!(status, 404);
    assert!(
        app.records_with(&id).await.is_empty(),
        "another key's poll bills nothing"
    );
    let (status, _) = poll(&app, &task).await;
    assert_eq!(status, 200);
    assert_eq!(app.records_with(&id).await.len(), 1);
}

#[tokio::test]
async fn a_failed_task_costs_nothing_and_a_failed_poll_changes_nothing() {
    let app = TestApp::spawn().await;
    let (task, id) = submit(&app, json!({"polls": 0, "fault": "task_failed"})).await;
    let (_, body) = poll(&app, &task).await;
    assert_eq!(body["task_status"], "FAILED");
    let _ = poll(&app, &task).await;
    let records = app.records_with(&id).await;
    assert_eq!(records.len(), 1, "one record, for the failure");
    assert_eq!(
        (records[0].status.as_str(), records[0].cost),
        ("upstream_error", dec("0"))
    );

    let (task, id) = submit(
        &app,
        json!({"polls": 0, "fault": "poll_error", "prompt_tokens": 5, "completion_tokens": 5}),
    )
    .await;
    let (status, body) = poll(&app, &task).await;
    assert_eq!(status, 502, "the backend's failure to answer: {body}");
    assert!(app.records_with(&id).await.is_empty());
    assert_eq!(status_of(&app, &task).await, "SUCCESS");
    let records = app.records_with(&id).await;
    assert_eq!((records.len(), records[0].cost), (1, glm_cost(5, 5, 1)));
}

#[tokio::test]
async fn a_poll_after_a_restart_bills_once_and_a_record_without_its_mark_is_not_doubled() {
    let ledger_dir = tempfile::tempdir().unwrap();
    let database = helpers::ledger::fresh(ledger_dir.path(), Default::default());
    let first = {
        let database = database.clone();
        TestApp::spawn_with(move |c| c.database = database).await
    };
    let (task, id) = submit(
        &first,
        json!({"polls": 1, "prompt_tokens": 9, "completion_tokens": 3}),
    )
    .await;
    let (_, body) = poll(&first, &task).await;
    assert_eq!(body["task_status"], "PROCESSING");
    // The same ledger and backend, a new process.
    let (second, key) = restart(first, database).await;
    let (status, body) = poll_with(&second, &key, &task).await;
    assert_eq!(
        (status, body["task_status"].as_str()),
        (200, Some("SUCCESS"))
    );
    let records = second.records_with(&id).await;
    assert_eq!((records.len(), records[0].cost), (1, glm_cost(9, 3, 1)));

    // A crash after the record and before the mark: the next poll writes it again, and the
    // ledger keeps one.
    let reopen = "UPDATE tasks SET state = 'pending', ended_at = NULL WHERE request_id = $1";
    helpers::ledger::execute_text(second.state.db(), reopen, &id).await;
    let (status, _) = poll_with(&second, &key, &task).await;
    assert_eq!(status, 200);
    assert_eq!(second.records_with(&id).await.len(), 1);
    assert_eq!(second.record_count().await, 1);
}

/// `GET /admin/v1/tasks?state=...`: the status and the list.
async fn tasks_in(app: &TestApp, token: &str, state: &str) -> (u16, Value) {
    let path = format!("/admin/v1/tasks?state={state}");
    app.admin(reqwest::Method::GET, &path, token, None).await
}

#[tokio::test]
async fn a_task_never_polled_to_its_end_expires_at_no_cost_and_is_listed_until_then() {
    let app = TestApp::spawn_with(|c| c.limits.task_expiry_secs = 1).await;
    let (_, id) = submit(&app, json!({"polls": 5})).await;
    let token = app.admin_token(tollgate::auth::jwt::Role::Viewer);
    let (status, listed) = tasks_in(&app, &token, "pending").await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"][0]["request_id"], id.as_str());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(tollgate::proxy::tasks::expire(&app.state).await.unwrap(), 1);
    assert_eq!(app.state.metrics().tasks_expired.get(), 1);
    assert_eq!(
        tollgate::proxy::tasks::expire(&app.state).await.unwrap(),
        0,
        "once"
    );
    let records = app.records_with(&id).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].status.as_str(), records[0].cost),
        ("timeout", dec("0"))
    );
    let (_, listed) = tasks_in(&app, &token, "pending").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0);
    let (_, listed) = tasks_in(&app, &token, "expired").await;
    assert_eq!(listed["data"][0]["request_id"], id.as_str());
    let (status, _) = tasks_in(&app, &token, "lost").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_zhipuai_sdk_works_unchanged_and_each_task_is_billed_exactly() {
    let app = TestApp::spawn().await;
    let results = helpers::python::run("zhipuai_client.py", &app).await;
    for case in ["chat", "chat_stream", "task", "task_poll_error"] {
        assert_eq!(
            results[case]["text"], "我是无问天权。",
            "{case}: {}",
            results[case]
        );
        assert_eq!(
            results[case]["usage"],
            json!({"prompt": 22, "completion": 18}),
            "{case}"
        );
    }
    assert_eq!(
        results["task"]["statuses"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        "SUCCESS"
    );
    assert_eq!(results["task_poll_error"]["poll_errors"], json!([502]));
    assert_eq!(
        results["task_failed"]["statuses"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        "FAILED"
    );
    assert_eq!(results["images"]["urls"].as_array().unwrap().len(), 2);
    assert_eq!(results["unknown_model"]["status"], 404);
    app.state.ledger().flush().await.unwrap();
    let records = store::listing::list(app.state.db(), &Default::default(), 100)
        .await
        .unwrap();
    let of = |endpoint: &str| {
        records
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .collect::<Vec<_>>()
    };
    let chats = of("chat");
    assert_eq!(chats.len(), 2);
    assert!(chats.iter().all(|r| r.cost == glm_cost(22, 18, 0)));
    let tasks = of("async_chat");
    assert_eq!(
        tasks.len(),
        3,
        "each task once: the success, the failure, the success after a failed poll"
    );
    let ok: Vec<_> = tasks.iter().filter(|r| r.status == "ok").collect();
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|r| r.cost == glm_cost(22, 18, 1)));
    assert!(
        tasks
            .iter()
            .filter(|r| r.status != "ok")
            .all(|r| r.cost == dec("0"))
    );
    let images = of("images");
    assert_eq!(
        (images.len(), images[0].images, images[0].cost),
        (1, 2, dec("0.2"))
    );
}

#[tokio::test]
async fn tasks_hold_a_prepaid_balance_until_they_end_even_across_a_restart() {
    use crate::spending::{set_billing, top_up};
    let ledger_dir = tempfile::tempdir().unwrap();
    let database = helpers::ledger::fresh(ledger_dir.path(), Default::default());
    let first = {
        let database = database.clone();
        TestApp::spawn_with(move |c| c.database = database).await
    };
    set_billing(&first, json!({"billing_mode": "prepaid"})).await;
    // A task with max_tokens 100 holds about 0.0009: the balance covers two at once.
    assert_eq!(top_up(&first, "t-1", json!("0.002")).await.0, 201);
    let mut body = task_body(json!({"polls": 0, "prompt_tokens": 22, "completion_tokens": 18}));
    body["max_tokens"] = json!(100);
    let submit_path = format!("{BASE}/async/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let response = first.post(&submit_path, &body).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        tasks.push(answer["id"].as_str().unwrap().to_string());
    }
    let refused = first.post(&submit_path, &body).await;
    assert_eq!(refused.status(), 402, "two pending tasks hold the balance");

    // A restart: the pending tasks hold it still.
    let (second, key) = restart(first, database).await;
    let submit_as_first = || {
        let request = second
            .client
            .post(second.url(&submit_path))
            .bearer_auth(&key);
        request.json(&body).send()
    };
    let again = submit_as_first().await.unwrap();
    assert_eq!(again.status(), 402, "held across the restart");
    // Both end: each pays its usage and its fee, and what they held is free again.
    for task in &tasks {
        let (status, answer) = poll_with(&second, &key, task).await;
        assert_eq!(
            (status, answer["task_status"].as_str()),
            (200, Some("SUCCESS"))
        );
    }
    // (On PostgreSQL a hold is posted when the record is shipped there.)
    second
        .wait_until_shipped(std::time::Duration::from_secs(10))
        .await;
    let after = submit_as_first().await.unwrap();
    assert_eq!(after.status(), 200, "0.002 - 2 × 0.0003 covers another");
    // What is pending shows in the metrics: that task, and its hold.
    let metrics = second
        .client
        .get(second.url("/metrics"))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    let gauge = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
    };
    assert_eq!(gauge("tollgate_tasks_pending "), 1.0, "{text}");
    assert_eq!(gauge("tollgate_holds_pending "), 1.0);
}

#[tokio::test]
async fn zhipus_fixtures_split_anywhere_are_metered_from_their_usage() {
    let app = TestApp::spawn().await;
    let read = helpers::fixture;
    let stream = read("zhipu-chat-stream.sse");
    for split in [1, 9, 100_000] {
        let body = chat(
            Some("glm-4-plus"),
            "q",
            true,
            json!({"raw": stream, "split": split}),
        );
        let response = app.post(&format!("{BASE}/chat/completions"), &body).await;
        let id = request_id(&response);
        let text = response.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "split {split}: {text}");
        let record = app.record(&id).await;
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (60, 5),
            "split {split}"
        );
        assert_eq!(record.cost, glm_cost(60, 5, 0));
    }
    let images = read("cogview-images.json");
    let body =
        json!({"model": "cogview-3", "prompt": "土星", "x_sim": {"raw": images, "split": 7}});
    let response = app.post(&format!("{BASE}/images/generations"), &body).await;
    let record = app.record_of(&response).await;
    assert_eq!((record.images, record.cost), (2, dec("0.2")));
}
