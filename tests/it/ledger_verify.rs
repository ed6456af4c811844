//! `tollgate ledger verify`, the audit an operator runs before trusting a month: on a
//! ledger that served traffic and top-ups it finds nothing and exits 0; after a running
//! total or an hourly rollup is tampered with it names the account and the figure (or the
//! rollup's group) and exits non-zero.

use crate::helpers;

use std::process::Command;

use helpers::binary::{BIN, cli, serve, write_config};
use helpers::{chat, client};
use serde_json::{Value, json};

/// Runs `tollgate ledger verify --json`: whether it succeeded, and what it printed.
fn verify(config: &std::path::Path) -> (bool, Value) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["ledger", "verify", "--json"])
        .output()
        .unwrap();
    let printed = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_verify_finds_a_tampered_running_total_or_rollup_and_nothing_else() {
    let (sim, _) = tollgate::sim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim);
    cli(&config, &["accounts", "create", "acme"]);
    cli(&config, &["accounts", "create", "beta"]);
    let top_up = [
        "accounts",
        "topup",
        "acme",
        "--amount",
        "12.50",
        "--idempotency-key",
        "t-1",
    ];
    cli(&config, &top_up);
    // A grant the requests burn: its use and what it holds are running totals too.
    let grant = [
        "grants",
        "create",
        "acme",
        "--amount",
        "0.01",
        "--reason",
        "trial",
        "--idempotency-key",
        "g-1",
    ];
    cli(&config, &grant);
    let key = cli(&config, &["keys", "create", "--account", "acme"]);
    let mut gateway = serve(&config, "tollgate=info");
    let url = format!(
        "http://{}/maas/megrez-7b-instruct/chip3/chat/completions",
        gateway.addr
    );
    let http = client();
    for _ in 0..20 {
        let body = chat(
            None,
            "hi",
            false,
            json!({"prompt_tokens": 321, "completion_tokens": 17}),
        );
        let response = http
            .post(&url)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // SIGTERM: the gateway drains and imports every record before it exits.
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(gateway.child.id() as i32, libc::SIGTERM) };
    assert!(gateway.child.wait().unwrap().success());

    let (ok, verified) = verify(&config);
    assert!(ok, "{verified}");
    assert_eq!(verified["accounts"], 2);
    assert_eq!(verified["differences"], json!([]));
    assert_eq!(verified["rollups"], json!([]));

    // Someone edits a running total by hand.
    let database = tollgate::config::Config::load(&config).unwrap().database;
    let db = tollgate::store::connect(&database).await.unwrap();
    let acme = "(SELECT id FROM accounts WHERE name = 'acme')";
    for figure in ["granted", "grant_pool"] {
        let read =
            format!("SELECT CAST({figure} AS TEXT) FROM account_funds WHERE account_id = {acme}");
        let read = sqlx::AssertSqlSafe(read);
        let was: String = match &db {
            tollgate::store::Db::Sqlite(pool) => sqlx::query_scalar(read).fetch_one(pool).await,
            tollgate::store::Db::Postgres(pool) => sqlx::query_scalar(read).fetch_one(pool).await,
        }
        .unwrap();
        let set = |value: &str| {
            format!("UPDATE account_funds SET {figure} = '{value}' WHERE account_id = {acme}")
        };
        helpers::ledger::execute(&db, &set("7"), &[]).await.unwrap();
        let (ok, verified) = verify(&config);
        assert!(!ok, "{verified}");
        let differences = verified["differences"].as_array().unwrap();
        assert_eq!(differences.len(), 1, "{verified}");
        assert_eq!(differences[0]["figure"], figure);
        helpers::ledger::execute(&db, &set(&was), &[])
            .await
            .unwrap();
    }
    assert!(verify(&config).0, "undone");
    helpers::ledger::execute(
        &db,
        "UPDATE account_funds SET spent = '0.5' WHERE account_id = (SELECT id FROM accounts WHERE name = 'acme')",
        &[],
    )
    .await
    .unwrap();
    let (ok, verified) = verify(&config);
    assert!(!ok, "a difference exits non-zero");
    let differences = verified["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{verified}");
    assert_eq!(
        (
            differences[0]["account"].as_str(),
            differences[0]["figure"].as_str()
        ),
        (Some("acme"), Some("spent"))
    );
    assert_eq!(differences[0]["running"], "0.5");
    assert_eq!(
        verified["rollups"],
        json!([]),
        "the rollups are still right"
    );

    // Someone adds a token to each hourly rollup (the 20 requests fall in one hour, or
    // two): each is named, with what it holds and what its records sum to.
    helpers::ledger::execute(
        &db,
        "UPDATE usage_hourly SET completion_tokens = completion_tokens + 1",
        &[],
    )
    .await
    .unwrap();
    let (ok, verified) = verify(&config);
    assert!(!ok);
    let rollups = verified["rollups"].as_array().unwrap();
    assert!((1..=2).contains(&rollups.len()), "{verified}");
    let mut requests = 0;
    for rollup in rollups {
        assert_eq!(rollup["account"], "acme");
        assert_eq!(rollup["model"], "megrez-7b-instruct");
        let (stored, summed) = (&rollup["stored"], &rollup["summed"]);
        assert_eq!(stored["requests"], summed["requests"]);
        let completion = summed["completion_tokens"].as_i64().unwrap();
        assert_eq!(stored["completion_tokens"].as_i64(), Some(completion + 1));
        assert_eq!(completion, summed["requests"].as_i64().unwrap() * 17);
        requests += summed["requests"].as_i64().unwrap();
    }
    assert_eq!(requests, 20);
}
