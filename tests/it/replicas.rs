//! Several gateways on one PostgreSQL ledger, each with its own spool: what one replica
//! does holds for all of them. Spending holds are taken in the database, so replicas
//! admitting requests on one prepaid balance at once never overspend it; every record is
//! stored once and every hold is settled; a key revoked through one replica is refused by
//! the others on their next request.

use futures_util::future::join_all;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::helpers::postgres::Postgres;
use crate::helpers::{self, TestApp, dec, request_id};
use crate::spending::{modest_request, set_billing, top_up};

pub(crate) const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

/// `n` gateways on the ledger at `url`, each with its own simulator and spool.
pub(crate) async fn replicas(url: &str, n: usize) -> Vec<TestApp> {
    let mut apps = Vec::with_capacity(n);
    for _ in 0..n {
        let url = url.to_owned();
        apps.push(TestApp::spawn_with(move |c| c.database.url = url).await);
    }
    apps
}

pub(crate) fn pool(app: &TestApp) -> &PgPool {
    match app.state.db() {
        tollgate::store::Db::Postgres(pool) => pool,
        tollgate::store::Db::Sqlite(_) => panic!("the replicas share PostgreSQL"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_spending_one_prepaid_balance_at_once_never_overspend_it() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let apps = replicas(&server.url, 3).await;
    set_billing(&apps[0], json!({"billing_mode": "prepaid"})).await;
    // One modest request costs 0.0002424 CNY: the balance covers 10.
    let (status, _) = top_up(&apps[0], "t-1", json!("0.002424")).await;
    assert_eq!(status, 201);

    let body = modest_request();
    let requests = apps.iter().flat_map(|app| {
        (0..50).map(|_| {
            let request = app.client.post(app.url(ROUTE)).bearer_auth(&app.key);
            request.json(&body).send()
        })
    });
    let statuses: Vec<u16> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(admitted + refused, 150, "only 200 or 402: {statuses:?}");
    assert!(
        (1..=10).contains(&admitted),
        "the balance covers 10: {admitted}"
    );

    for app in &apps {
        app.state.ledger().flush().await.unwrap();
    }
    let db = pool(&apps[0]);
    let (topped_up, spent, held): (Decimal, Decimal, Decimal) =
        sqlx::query_as("SELECT topped_up, spent, held FROM account_funds WHERE account_id = 1")
            .fetch_one(db)
            .await
            .unwrap();
    let (records, distinct, costs): (i64, i64, Option<Decimal>) =
        sqlx::query_as("SELECT count(*), count(DISTINCT request_id), sum(cost) FROM usage_records")
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!((records, distinct), (admitted as i64, admitted as i64));
    assert_eq!(
        spent,
        costs.unwrap_or_default(),
        "charges = the records' costs"
    );
    assert_eq!(
        held,
        Decimal::ZERO,
        "every hold settled once its record arrived"
    );
    assert!(
        topped_up - spent >= Decimal::ZERO,
        "never overspent: {topped_up} - {spent}"
    );
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM holds WHERE state = 'pending'")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    // Every replica shows the same money.
    for app in &apps {
        let db = app.state.usage_db().await.unwrap();
        let balance = tollgate::limits::spending::balance(db, 1).await.unwrap();
        assert_eq!(balance, topped_up - spent);
    }
    assert_eq!(topped_up, dec("0.002424"));
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn a_hold_is_voided_once_it_expires_only_if_its_replica_died() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let apps = replicas(&server.url, 1).await;
    let app = &apps[0];
    set_billing(app, json!({"billing_mode": "prepaid"})).await;
    top_up(app, "t-1", json!("1")).await;
    let db = pool(app);
    // Holds as replicas leave them: pending, expired (long ago); one of a replica that then
    // died (its record never to come), one of a replica that is alive (its heartbeat is
    // fresh: the record may wait in its spool while the database was down).
    sqlx::query("INSERT INTO replicas (name, seen_at) VALUES ('alive/1', (extract(epoch FROM now()) * 1000)::bigint)")
        .execute(db)
        .await
        .unwrap();
    for (request_id, replica) in [("req_dead", "gone/1"), ("req_alive", "alive/1")] {
        sqlx::query(
            "WITH r AS (UPDATE account_funds SET held = held + 0.25 WHERE account_id = 1
                        RETURNING account_id)
             INSERT INTO holds (request_id, account_id, amount, replica, created_at, expires_at)
             SELECT $1, account_id, 0.25, $2,
                    (extract(epoch FROM now()) * 1000)::bigint, 1
             FROM r",
        )
        .bind(request_id)
        .bind(replica)
        .execute(db)
        .await
        .unwrap();
    }
    let held = || async {
        sqlx::query_scalar::<_, Decimal>("SELECT held FROM account_funds WHERE account_id = 1")
            .fetch_one(db)
            .await
            .unwrap()
    };
    assert_eq!(held().await, dec("0.5"));
    let reconcile = |steady| app.state.spending().reconcile(Duration::ZERO, steady);
    // A reconciler not yet steadily in touch with the database (just after an outage, when
    // no replica could write its heartbeat) voids nobody else's hold.
    assert_eq!(reconcile(false).await.unwrap(), 0);
    // Twice, as two replicas' reconcilers might: voided once, given back once; the live
    // replica's hold stays.
    assert_eq!(reconcile(true).await.unwrap(), 1);
    assert_eq!(reconcile(true).await.unwrap(), 0);
    assert_eq!(held().await, dec("0.25"));
    sqlx::query("UPDATE holds SET state = 'voided' WHERE request_id = 'req_alive'")
        .execute(db)
        .await
        .unwrap();
    assert_eq!(held().await, Decimal::ZERO);
    // Its record arriving late (a spool shipped after a restart), twice, is charged once
    // and gives nothing back twice: modelled on a real request's record.
    let response = app
        .client
        .post(app.url(ROUTE))
        .bearer_auth(&app.key)
        .json(&modest_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let real = request_id(&response);
    app.state.ledger().flush().await.unwrap();
    let funds = || async {
        sqlx::query_as::<_, (Decimal, Decimal)>(
            "SELECT spent, held FROM account_funds WHERE account_id = 1",
        )
        .fetch_one(db)
        .await
        .unwrap()
    };
    let (spent, held) = funds().await;
    assert_eq!(held, Decimal::ZERO);
    let columns = "account_id, key_id, model, chip, deployment, endpoint, stream, status,
        http_status, error, prompt_tokens, completion_tokens, cached_tokens, usage_source,
        price_version_id, cost, blocked, moderation, started_at, ended_at, latency_ms, ttft_ms";
    let replay = format!(
        "INSERT INTO usage_records (request_id, {columns})
         SELECT 'req_dead', {columns} FROM usage_records WHERE request_id = $1
         ON CONFLICT (request_id, started_at) DO NOTHING"
    );
    for _ in 0..2 {
        helpers::ledger::execute_text(app.state.db(), &replay, &real).await;
    }
    let cost: Decimal = sqlx::query_scalar("SELECT cost FROM usage_records WHERE request_id = $1")
        .bind(&real)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(funds().await, (spent + cost, Decimal::ZERO));
    let state: String = sqlx::query_scalar("SELECT state FROM holds WHERE request_id = 'req_dead'")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(state, "voided", "a voided hold stays voided");
    for app in apps {
        app.stop().await;
    }
}

/// Sends a modest request with `key` through `app`; returns its status.
pub(crate) async fn status_with(app: &TestApp, key: &str) -> u16 {
    let request = app.client.post(app.url(ROUTE)).bearer_auth(key);
    let response = request.json(&modest_request()).send().await.unwrap();
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_one_replica_is_refused_by_the_others() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let apps = replicas(&server.url, 3).await;
    let admin = apps[0].admin_token(tollgate::admin::Role::Admin);
    let (mut latencies, mut late) = (Vec::new(), 0);
    for _ in 0..20 {
        let key = helpers::issue_key(&apps[0].state, "acme", None).await;
        for app in &apps {
            assert_eq!(
                status_with(app, &key.secret).await,
                200,
                "cached everywhere"
            );
        }
        let path = format!("/admin/v1/keys/{}/revoke", key.id);
        let (status, body) = apps[0]
            .admin(reqwest::Method::POST, &path, &admin, None)
            .await;
        assert_eq!(status, 200, "{body}");
        let revoked = std::time::Instant::now();
        for app in &apps[1..] {
            // Refused by the next request, or within a second at the latest.
            loop {
                let status = status_with(app, &key.secret).await;
                if status == 401 {
                    break;
                }
                assert_eq!(status, 200);
                late += 1;
                assert!(revoked.elapsed() < std::time::Duration::from_secs(1));
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            latencies.push(revoked.elapsed());
        }
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    println!(
        "revocation reached the other replicas: {late} of {} next requests still served; \
         refused after a median {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        p99,
        latencies.last().unwrap()
    );
    for app in apps {
        app.stop().await;
    }
}

/// `n` gateways on one PostgreSQL ledger counting rate limits in one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_and_record_prices_once() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let (sim, _) = tollgate::sim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let builds = dirs.iter().map(|dir| {
        let mut config = helpers::test_config(sim, dir);
        config.database.url = server.url.clone();
        tollgate::Application::build(config)
    });
    let apps: Vec<tollgate::Application> = join_all(builds)
        .await
        .into_iter()
        .map(|built| built.expect("every replica starts"))
        .collect();
    let db = apps[0].state().db().clone();
    let versions = tollgate::store::prices::all(&db).await.unwrap();
    let entries =
        tollgate::billing::prices::load_dir(&apps[0].state().config().pricing.dir).unwrap();
    assert_eq!(versions.len(), entries.len(), "each price recorded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_load_five_times_loses_nothing_and_doubles_nothing() {
    use crate::durability::load_until_killed;
    use crate::helpers::binary::{cli, serve, write_config_on};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let (sim, _) = tollgate::sim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<std::path::PathBuf> = dirs
        .iter()
        .map(|dir| {
            let mut database = helpers::ledger::fresh(dir.path(), Default::default());
            database.url = server.url.clone();
            let config = write_config_on(dir.path(), sim, &database);
            // Holds of a killed replica's requests in flight expire quickly here.
            let text = std::fs::read_to_string(&config).unwrap();
            let text = text.replace("[limits]\n", "[limits]\nhold_expiry_secs = 10\n");
            std::fs::write(&config, text).unwrap();
            config
        })
        .collect();
    cli(&configs[0], &["accounts", "create", "acme", "--prepaid"]);
    let topup = ["accounts", "topup", "acme", "--amount", "1000"];
    cli(
        &configs[0],
        &[&topup[..], &["--idempotency-key", "t-1"]].concat(),
    );
    let key = cli(&configs[0], &["keys", "create", "--account", "acme"]);
    let mut gateways: Vec<_> = configs.iter().map(|c| serve(c, "tollgate=info")).collect();

    let mut completed = Vec::new();
    for round in 0..5 {
        let victim = round % 3;
        let progress = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = gateways
            .iter()
            .flat_map(|g| (0..3).map(move |w| (g.addr, w)))
            .map(|(addr, w)| {
                tokio::spawn(load_until_killed(addr, key.clone(), w, progress.clone()))
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(30), async {
            while progress.load(Ordering::Relaxed) < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: no load"));
        tokio::time::sleep(Duration::from_millis(100 + 70 * round as u64)).await;
        gateways[victim].child.kill().unwrap(); // SIGKILL, mid-load
        gateways[victim].child.wait().unwrap();
        // The survivors' loads go on until they are stopped below; the victim's end now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for g in gateways.iter_mut() {
            let _ = g.child.kill();
            let _ = g.child.wait();
        }
        for worker in workers {
            completed.extend(worker.await.unwrap());
        }
        // Every replica comes back on its own spool (the journal of the one killed ships).
        gateways = configs.iter().map(|c| serve(c, "tollgate=info")).collect();
    }
    // Records of responses received in full: every one, once.
    let db = PgPoolOptions::new().connect(&server.url).await.unwrap();
    // The killed replicas' holds whose records never came are voided once they are known
    // dead (no heartbeat for 15 s) by a replica steadily in touch with the ledger.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM holds WHERE state = 'pending'")
                    .fetch_one(&db)
                    .await
                    .unwrap();
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("no hold of a dead replica stays pending");
    let ledger = tollgate::store::Db::Postgres(db.clone());
    helpers::ledger::assert_recorded_once(&ledger, &completed).await;
    assert!(
        completed.len() >= 50,
        "load ran: {} completed",
        completed.len()
    );
    let (topped_up, spent, held, costs): (Decimal, Decimal, Decimal, Decimal) = sqlx::query_as(
        "SELECT f.topped_up, f.spent, f.held, (SELECT sum(cost) FROM usage_records)
         FROM account_funds f WHERE f.account_id = 1",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (spent, held),
        (costs, Decimal::ZERO),
        "charges = the records' costs"
    );
    assert_eq!(topped_up, dec("1000"));
    for mut g in gateways {
        let _ = g.child.kill();
        let _ = g.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_whose_notification_is_lost_arrives_within_the_poll() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let apps = replicas(&server.url, 3).await;
    let key = helpers::issue_key(&apps[0].state, "acme", None).await;
    for app in &apps {
        assert_eq!(
            status_with(app, &key.secret).await,
            200,
            "cached everywhere"
        );
    }
    // The revocation and its version are committed, but no NOTIFY is sent: as when every
    // notification connection was down at that moment.
    let db = pool(&apps[0]);
    sqlx::query("UPDATE api_keys SET revoked_at = 0 WHERE id = $1")
        .bind(key.id)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("UPDATE changes SET version = version + 1 WHERE topic = 'keys'")
        .execute(db)
        .await
        .unwrap();
    let revoked = std::time::Instant::now();
    for app in &apps {
        while status_with(app, &key.secret).await != 401 {
            assert!(
                revoked.elapsed() < std::time::Duration::from_secs(5),
                "the 2 s poll brings the revocation"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    println!(
        "revoked everywhere after {:?} without a notification",
        revoked.elapsed()
    );
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_polling_one_finished_task_at_once_bill_it_once() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let first = {
        let url = server.url.clone();
        TestApp::spawn_with(move |c| c.database.url = url).await
    };
    // The second replica reaches the same backend, where the task lives.
    let zhipu = format!("http://{}/zhipu", first.sim);
    let second = {
        let url = server.url.clone();
        TestApp::spawn_with(move |c| {
            c.database.url = url;
            helpers::point_model_at(c, "glm-4-plus", &zhipu);
        })
        .await
    };
    let body = helpers::chat(
        Some("glm-4-plus"),
        "你好",
        false,
        json!({"polls": 0, "prompt_tokens": 40, "completion_tokens": 10}),
    );
    let submitted = first
        .post("/api/paas/v4/async/chat/completions", &body)
        .await;
    let request_id = request_id(&submitted);
    let task: serde_json::Value = submitted.json().await.unwrap();
    let path = format!("/api/paas/v4/async-result/{}", task["id"].as_str().unwrap());
    let polls = [&first, &second].into_iter().flat_map(|app| {
        (0..10).map(|_| {
            let request = app.client.get(app.url(&path)).bearer_auth(&first.key);
            request.send()
        })
    });
    for response in join_all(polls).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    for app in [&first, &second] {
        app.state.ledger().flush().await.unwrap();
    }
    let (records, cost): (i64, Option<Decimal>) =
        sqlx::query_as("SELECT count(*), sum(cost) FROM usage_records WHERE request_id = $1")
            .bind(&request_id)
            .fetch_one(pool(&first))
            .await
            .unwrap();
    // 50 tokens at 0.005 per 1k, and the task fee of 0.0001.
    assert_eq!((records, cost), (1, Some(dec("0.00035"))));
    let spent: Decimal = sqlx::query_scalar("SELECT spent FROM account_funds WHERE account_id = 1")
        .fetch_one(pool(&first))
        .await
        .unwrap();
    assert_eq!(spent, dec("0.00035"), "charged once");
}
