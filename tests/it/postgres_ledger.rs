//! The PostgreSQL ledger on a real server of its own (the rest of the suite runs on
//! PostgreSQL too, through `helpers::ledger`): its schema is created from nothing (and
//! applying it again changes nothing), money is exact, a replayed usage record changes
//! nothing, what must never change refuses to, as on SQLite; and an outage of the server
//! is spooled by the gateway and shipped once, exactly, when it returns.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::helpers::postgres::Postgres;
use crate::helpers::{TestApp, chat, request_id};

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The database's refusal of `sql`, as text.
async fn refusal(pool: &PgPool, sql: &'static str) -> String {
    match sqlx::query(sql).execute(pool).await {
        Ok(done) => panic!("{sql}: allowed ({} rows)", done.rows_affected()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn the_postgres_schema_is_created_and_keeps_what_must_never_change() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&server.url)
        .await
        .unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();

    for sql in [
        "INSERT INTO accounts (name, created_at) VALUES ('acme', 1)",
        "INSERT INTO api_keys (account_id, prefix, secret_hash, created_at)
         VALUES (1, 'tg-abcdefgh', '\\x00ff', 1)",
        "INSERT INTO price_versions (model, chip, effective_from, input_per_1k, output_per_1k,
             per_request, recorded_at)
         VALUES ('m', 'c', 0, 0.00000001, 0.00000003, 0, 1),
                ('m', 'c', 10, 1, 1, 0, 1)",
        "INSERT INTO usage_records (request_id, account_id, key_id, model, chip, endpoint,
             stream, status, http_status, prompt_tokens, completion_tokens, cached_tokens,
             usage_source, price_version_id, cost, blocked, started_at, ended_at, latency_ms)
         VALUES ('req_1', 1, 1, 'm', 'c', 'chat', false, 'ok', 200, 7, 11, 0, 'reported', 1,
             0.0000000004, false, 5, 6, 1)",
        "INSERT INTO invoices (id, account_id, period, document, finalized_at)
         VALUES ('inv_1_202611', 1, '2026-11', '{}', 1)",
        "INSERT INTO topups (account_id, amount, idempotency_key, created_at)
         VALUES (1, 100.00, 'k', 1)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    // Exact money, read back as written.
    let cost: String = sqlx::query("SELECT cost::text FROM usage_records")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(cost, "0.0000000004");
    // A replayed record (its request id, with its start) changes nothing.
    let replay = sqlx::query(
        "INSERT INTO usage_records (request_id, account_id, key_id, model, chip, endpoint,
             stream, status, http_status, prompt_tokens, completion_tokens, cached_tokens,
             usage_source, price_version_id, cost, blocked, started_at, ended_at, latency_ms)
         VALUES ('req_1', 1, 1, 'm', 'c', 'chat', false, 'ok', 200, 999, 999, 0, 'reported',
             1, 9, false, 5, 6, 1)
         ON CONFLICT (request_id, started_at) DO NOTHING",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(replay.rows_affected(), 0);
    // A record naming a key (or account, or price version) that does not exist is refused
    // as a foreign key would refuse it, and nothing of its statement is kept.
    let orphan = sqlx::query(
        "INSERT INTO usage_records (request_id, account_id, key_id, model, chip, endpoint,
             stream, status, http_status, prompt_tokens, completion_tokens, cached_tokens,
             usage_source, price_version_id, cost, blocked, started_at, ended_at, latency_ms)
         VALUES ('req_2', 1, 1, 'm', 'c', 'chat', false, 'ok', 200, 1, 1, 0, 'reported', 1,
                 1, false, 5, 6, 1),
                ('req_3', 1, 99, 'm', 'c', 'chat', false, 'ok', 200, 1, 1, 0, 'reported', 1,
                 1, false, 5, 6, 1)",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(
        orphan
            .as_database_error()
            .is_some_and(|d| d.is_foreign_key_violation()),
        "{orphan}"
    );
    let records: i64 = sqlx::query("SELECT count(*) FROM usage_records")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(records, 1);
    // A name is unique: a conflict, as the store maps it.
    let err = sqlx::query("INSERT INTO accounts (name, created_at) VALUES ('acme', 2)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        err.as_database_error()
            .is_some_and(|d| d.is_unique_violation()),
        "{err}"
    );

    let refused = [
        (
            "UPDATE price_versions SET input_per_1k = 2 WHERE id = 1",
            "immutable",
        ),
        (
            "DELETE FROM price_versions WHERE id = 1",
            "cannot be deleted",
        ),
        ("UPDATE usage_records SET cost = 0", "immutable"),
        ("UPDATE invoices SET document = '[]'", "immutable"),
        ("DELETE FROM invoices", "cannot be deleted"),
        ("UPDATE topups SET amount = 1000", "immutable"),
        ("DELETE FROM topups", "cannot be deleted"),
        ("DELETE FROM api_keys", "revoke them"),
        ("DELETE FROM accounts", "cannot be deleted"),
    ];
    for (sql, why) in refused {
        let message = refusal(&pool, sql).await;
        assert!(message.contains(why), "{sql}: {message}");
    }
    // A version that priced nothing may go.
    let deleted = sqlx::query("DELETE FROM price_versions WHERE id = 2")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);
    pool.close().await;
}

/// Sends one chat request (streamed or not) and returns its request id once it is read in
/// full.
async fn complete(app: &TestApp, stream: bool) -> String {
    let knobs = json!({"prompt_tokens": 12, "completion_tokens": 7});
    let response = app.post(ROUTE, &chat(None, "hi", stream, knobs)).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    response.bytes().await.unwrap();
    id
}

async fn readiness(app: &TestApp) -> (u16, Value) {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn an_outage_of_postgresql_is_spooled_and_every_record_shipped_once_when_it_returns() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = server.url.clone();
    let app = TestApp::spawn_with(move |c| c.database.url = url).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(complete(&app, i % 2 == 0).await);
    }
    app.state.ledger().flush().await.unwrap();
    assert_eq!(app.record_count().await, 6);

    // The server goes away at once, as in a crash; the gateway goes on serving.
    server.stop();
    for i in 0..24 {
        ids.push(complete(&app, i % 2 == 0).await);
    }
    // The probe in the background notices within a second or two.
    let mut ready = readiness(&app).await;
    for _ in 0..50 {
        if ready.1["degraded"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = readiness(&app).await;
    }
    let (status, ready) = ready;
    assert_eq!(status, 200, "a replica stays in the load balancer: {ready}");
    assert_eq!(ready["degraded"], true, "{ready}");
    assert!(
        ready["spool_age_seconds"].as_f64().unwrap() > 0.0,
        "{ready}"
    );
    assert_eq!(
        ready["spooled"], 24,
        "every record since the outage waits: {ready}"
    );
    let usage = app
        .client
        .get(app.url("/v1/usage"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        usage.status(),
        503,
        "usage cannot be read from a missing ledger"
    );
    let error: Value = usage.json().await.unwrap();
    assert!(error["error"]["message"].is_string(), "{error}");

    server.restart();
    app.wait_until_shipped(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the probe's next answer
    let (status, ready) = readiness(&app).await;
    assert_eq!(
        (status, &ready["spooled"], &ready["degraded"]),
        (200, &json!(0), &json!(false))
    );
    assert_eq!(ready["spool_age_seconds"], 0.0, "{ready}");

    let records = crate::helpers::ledger::assert_recorded_once(app.state.db(), &ids).await;
    assert_eq!(records, 30, "no record lost, none doubled");
    for id in &ids {
        let record = app.record(id).await;
        assert_eq!(
            (record.prompt_tokens, record.completion_tokens),
            (12, 7),
            "{id}"
        );
    }
    let failures = app.state.metrics().ledger_import_failures.get();
    assert!(failures >= 1, "the failed imports are counted: {failures}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_holds_up_no_commit() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = server.url.clone();
    // `full`: every commit waits for the writer's fdatasync, which must not wait for
    // PostgreSQL.
    let app = TestApp::spawn_with(move |c| {
        c.database.url = url;
        c.database.synchronous = tollgate::config::Synchronous::Full;
    })
    .await;
    complete(&app, false).await;
    app.state.ledger().flush().await.unwrap();

    server.pause();
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(complete(&app, i % 2 == 0).await);
    }
    let during = started.elapsed();
    // The first shipment of the pause is still waiting for a connection (it gives up after
    // 5 s): had the commits waited for it, they could not all have finished before it failed.
    let failures = app.state.metrics().ledger_import_failures.get();
    assert_eq!(
        failures, 0,
        "20 requests took {during:?} behind a hung shipment"
    );
    assert!(app.state.ledger().queue_depth() >= 1);

    server.resume();
    app.wait_until_shipped(Duration::from_secs(60)).await;
    for id in &ids {
        app.record(id).await;
    }
    assert_eq!(app.record_count().await, 21);
    app.stop().await;
}

/// A task the ledger could not record would run on the backend unbilled: while the ledger
/// does not answer, none is submitted (503), and once it answers again tasks pass.
#[tokio::test]
async fn no_task_is_submitted_while_the_ledger_cannot_record_it() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = server.url.clone();
    let app = TestApp::spawn_with(move |c| c.database.url = url).await;
    complete(&app, false).await;
    let submit = json!({"model": "glm-4-plus", "messages": [{"role": "user", "content": "hi"}],
        "x_sim": {"polls": 0}});
    let path = "/api/paas/v4/async/chat/completions";

    server.stop();
    let response = app.post(path, &submit).await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("none was submitted"),
        "{error}"
    );
    let seen = app.upstream_saw().await;
    assert_ne!(
        seen["body"]["model"], "glm-4-plus",
        "the backend got no task"
    );

    // Once the probe (every second) has seen the ledger answer again, tasks are taken.
    server.restart();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !app.state.health().is_up() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the probe sees the ledger again");
    let response = app.post(path, &submit).await;
    assert_eq!(response.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn requests_that_need_the_ledger_fail_fast_once_it_is_known_down() {
    use crate::spending::{set_billing, top_up};
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = server.url.clone();
    let app = TestApp::spawn_with(move |c| c.database.url = url).await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "t-1", json!("1")).await.0, 201);
    complete(&app, false).await;
    server.stop();
    // The probe notices within a second or two; /readyz says so without waiting on it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while app.state.health().is_up() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the probe sees the ledger go");
    let started = std::time::Instant::now();
    let (status, ready) = readiness(&app).await;
    let readiness_took = started.elapsed();
    assert_eq!((status, &ready["degraded"]), (200, &json!(true)), "{ready}");
    // A prepaid request (its hold needs the ledger) and a task submission: 503 at once,
    // not after the pool's 5 s acquire timeout.
    let started = std::time::Instant::now();
    let knobs = json!({"prompt_tokens": 12, "completion_tokens": 7});
    let response = app.post(ROUTE, &chat(None, "hi", false, knobs)).await;
    assert_eq!(response.status(), 503);
    let prepaid_took = started.elapsed();
    let started = std::time::Instant::now();
    let submit = json!({"model": "glm-4-plus", "messages": [{"role": "user", "content": "hi"}]});
    let response = app
        .post("/api/paas/v4/async/chat/completions", &submit)
        .await;
    assert_eq!(response.status(), 503);
    let task_took = started.elapsed();
    println!("/readyz {readiness_took:?}, prepaid 503 {prepaid_took:?}, task 503 {task_took:?}");
    for took in [readiness_took, prepaid_took, task_took] {
        assert!(
            took < Duration::from_secs(1),
            "{took:?}: waited on the database"
        );
    }
    app.stop().await;
}
