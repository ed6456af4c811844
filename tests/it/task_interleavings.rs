//! A property of tasks, whatever happens to them in whatever order: random interleavings
//! of submit, poll, cancel, expire and key rotation over a few ComfyUI runs of a prepaid
//! account, some steps racing each other, on the ledger under test. Whatever the order, no
//! hold is released twice (held never below zero, zero once every run has ended), no run
//! is billed twice, and no result (`final_files`) is handed out for a run that is not
//! billed as a success; the money invariant holds at the end.

use crate::helpers;

use std::collections::HashMap;

use futures_util::future::join_all;
use helpers::TestApp;
use helpers::money::assert_invariant;
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::spending::{set_billing, top_up};

const COMFY: &str = "/api/maas/comfy_task_api";
const RUNS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    Submit(usize),
    Poll(usize),
    Cancel(usize),
    /// The run's expiry time comes (it is made old enough) and the sweep runs.
    Expire(usize),
    /// The key is rotated: later steps use its new secret.
    Rotate,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..RUNS).prop_map(Step::Submit),
        4 => (0..RUNS).prop_map(Step::Poll),
        1 => (0..RUNS).prop_map(Step::Cancel),
        1 => (0..RUNS).prop_map(Step::Expire),
        1 => Just(Step::Rotate),
    ]
}

/// Rounds of one to three steps; the steps of a round run at once.
fn rounds() -> impl Strategy<Value = Vec<Vec<Step>>> {
    prop::collection::vec(prop::collection::vec(step(), 1..4), 4..14)
}

/// What the run knobs are: how many polls it stays running, and how many images it makes.
fn runs() -> impl Strategy<Value = Vec<(u32, u64)>> {
    prop::collection::vec((0u32..3, 1u64..4), RUNS)
}

/// The state the steps share.
#[derive(Default)]
struct World {
    key: String,
    key_id: i64,
    /// Run indexes a submit step has taken (each run is submitted once).
    claimed: std::collections::HashSet<usize>,
    /// Run index → (backend task id, request id).
    submitted: HashMap<usize, (String, String)>,
    /// Backend task ids whose results a poll handed out.
    handed_out: Vec<String>,
}

async fn post(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, Value) {
    app.post_as(&format!("{COMFY}{path}"), key, body).await
}

async fn run_step(
    app: &TestApp,
    world: &parking_lot::Mutex<World>,
    knobs: &[(u32, u64)],
    step: &Step,
) {
    let key = world.lock().key.clone();
    let submitted = |i: usize| world.lock().submitted.get(&i).cloned();
    match *step {
        Step::Submit(i) => {
            if !world.lock().claimed.insert(i) {
                return;
            }
            let (polls, images) = knobs[i];
            let body = json!({"workflow_id": "wf-demo-txt2img",
                "prompt": {"6": {"inputs": {"text": "猫"}}},
                "x_sim": {"polls": polls, "images": images}});
            let response = app
                .client
                .post(app.url(&format!("{COMFY}/prompt")))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            if response.status() == 401 {
                world.lock().claimed.remove(&i);
                return; // the key was rotated meanwhile, in the same round
            }
            assert_eq!(response.status(), 200);
            let id = helpers::request_id(&response);
            let answer: Value = response.json().await.unwrap();
            let task = answer["data"]["prompt_id"].as_str().unwrap().to_owned();
            world.lock().submitted.insert(i, (task, id));
        }
        Step::Poll(i) => {
            let Some((task, _)) = submitted(i) else {
                return;
            };
            let (status, answer) = post(
                app,
                "/get_task_info",
                &key,
                &json!({"comfy_task_ids": [task]}),
            )
            .await;
            assert!(matches!(status, 200 | 401 | 410), "{status} {answer}");
            let info = &answer["data"]["comfy_task_info"][0];
            if info["final_files"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
            {
                world.lock().handed_out.push(task);
            }
        }
        Step::Cancel(i) => {
            let Some((task, _)) = submitted(i) else {
                return;
            };
            let (status, answer) =
                post(app, "/cancel", &key, &json!({"comfy_task_id": task})).await;
            assert!(matches!(status, 200 | 401), "{status} {answer}");
        }
        Step::Expire(i) => {
            let Some((_, request_id)) = submitted(i) else {
                return;
            };
            helpers::ledger::execute_text(
                app.state.db(),
                "UPDATE tasks SET submitted_at = submitted_at - 3600000 WHERE request_id = $1",
                &request_id,
            )
            .await;
            tollgate::proxy::tasks::expire(&app.state).await.unwrap();
        }
        Step::Rotate => {
            let key_id = world.lock().key_id;
            let grace = chrono::Duration::zero();
            let rotated =
                tollgate::domain::keys::rotate(app.state.db(), app.state.keys(), key_id, grace)
                    .await
                    .unwrap_or_else(|e| panic!("rotating key {key_id}: {e}"));
            let mut world = world.lock();
            world.key = rotated.key;
            world.key_id = rotated.view.id;
        }
    }
}

async fn check(rounds: Vec<Vec<Step>>, knobs: Vec<(u32, u64)>) {
    let app = TestApp::spawn_with(|c| {
        c.limits.task_expiry_secs = 3000;
        c.limits.poll_rpm = 1_000_000;
        c.limits.default_rpm = 1_000_000;
    })
    .await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "t-1", json!("10")).await.0, 201);
    let hash = tollgate::auth::ApiKey::parse(&app.key).unwrap().hash();
    let key_id = tollgate::store::keys::find_by_hash(app.state.db(), &hash)
        .await
        .unwrap()
        .unwrap()
        .id;
    let world = parking_lot::Mutex::new(World {
        key: app.key.clone(),
        key_id,
        ..World::default()
    });
    for round in &rounds {
        // One rotation at a time: a key is rotated once (its successor may be again).
        let mut rotations = 0;
        let round: Vec<&Step> = round
            .iter()
            .filter(|s| {
                !matches!(s, Step::Rotate) || {
                    rotations += 1;
                    rotations == 1
                }
            })
            .collect();
        join_all(
            round
                .iter()
                .map(|step| run_step(&app, &world, &knobs, step)),
        )
        .await;
        let held = app.state.spending().held(1).await.unwrap();
        assert!(held >= Decimal::ZERO, "held {held} after {round:?}");
    }
    // Every run ends: polled until it does, or expired.
    let runs: Vec<usize> = world.lock().submitted.keys().copied().collect();
    for i in runs {
        for _ in 0..5 {
            run_step(&app, &world, &knobs, &Step::Poll(i)).await;
        }
        run_step(&app, &world, &knobs, &Step::Expire(i)).await;
    }
    let world = world.into_inner();
    for (task, request_id) in world.submitted.values() {
        let records = app.records_with(request_id).await;
        assert_eq!(records.len(), 1, "{task}: one record, whatever raced");
        if world.handed_out.contains(task) {
            assert_eq!(records[0].status, "ok", "{task}: handed out, so billed");
            assert!(records[0].images > 0);
        }
    }
    let figures = assert_invariant(&app, 1).await;
    assert_eq!(figures.held, Decimal::ZERO, "every hold released, once");
    assert_eq!(figures.records, world.submitted.len());
    app.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 20,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn tasks_never_release_a_hold_twice_bill_twice_or_hand_out_unbilled(
        rounds in rounds(),
        knobs in runs(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check(rounds, knobs));
    }
}
