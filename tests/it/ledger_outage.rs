//! PostgreSQL stopped for 20 s under load from three replicas, then restarted, while no
//! client reads anything (no usage read, no flush): every answered request's record
//! reaches PostgreSQL by the writers' own shipping, within 10 s of its answer or of
//! PostgreSQL's return, none twice; a prepaid account spent from all three replicas stays
//! within its bound (one hold per replica) and ends with nothing held; `/readyz` answers
//! from state kept in the background throughout, never waiting on the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde_json::json;

use crate::helpers::postgres::Postgres;
use crate::helpers::{self, TestApp};
use crate::replica_limits::key_with;
use crate::replicas::{ROUTE, pool, replicas};
use crate::spending::modest_request;

/// Sends modest requests through `app` with `key` until `stop`: the answered ones' request
/// ids with when they returned, and every other status seen.
async fn load(app: &TestApp, key: &str, stop: &AtomicBool) -> (Vec<(String, Instant)>, Vec<u16>) {
    let (mut answered, mut others) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let mut body = modest_request();
        body["stream"] = json!(answered.len() % 2 == 0);
        let request = app.client.post(app.url(ROUTE)).bearer_auth(key);
        let response = request.json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        let id = response.headers().get("x-request-id").cloned();
        let text = response.text().await.unwrap();
        match (status, id) {
            (200, Some(id)) if text.contains("usage") || text.contains("[DONE]") => {
                answered.push((id.to_str().unwrap().to_owned(), Instant::now()))
            }
            _ => {
                others.push(status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (answered, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_seconds_without_postgresql_under_load_every_record_ships_by_itself() {
    let server = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let apps = Arc::new(replicas(&server.url, 3).await);
    let db = pool(&apps[0]).clone();
    // A prepaid account whose balance covers about 40 modest requests.
    let state = &apps[0].state;
    let prepaid_account = tollgate::store::accounts::create(state.db(), "prepaid")
        .await
        .unwrap();
    let limits = tollgate::store::keys::KeyLimits {
        rpm: Some(1_000_000),
        ..Default::default()
    };
    let prepaid = helpers::key_with_limits(state, "prepaid", limits).await;
    sqlx::query("UPDATE accounts SET billing_mode = 'prepaid' WHERE name = 'prepaid'")
        .execute(&db)
        .await
        .unwrap();
    let topped_up = Decimal::new(1, 2);
    tollgate::domain::accounts::top_up(state.db(), prepaid_account.id, topped_up, "t-1", "")
        .await
        .unwrap();
    for app in apps.iter() {
        app.state.spending().refresh(app.state.db()).await.unwrap();
    }
    let postpaid = Arc::new(key_with(&apps[0], 1_000_000, None).await);
    let prepaid = Arc::new(prepaid);

    // What PostgreSQL holds, watched from outside: when each record first appears.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn({
        let (url, seen, watching) = (server.url.clone(), seen.clone(), watching.clone());
        async move {
            while watching.load(Ordering::Relaxed) {
                let watcher = sqlx::postgres::PgPoolOptions::new()
                    .acquire_timeout(Duration::from_millis(500))
                    .connect(&url)
                    .await;
                if let Ok(db) = watcher {
                    // All of them each time: ids are taken before commit, so replicas'
                    // transactions make them visible out of order.
                    while watching.load(Ordering::Relaxed) {
                        let rows: Result<Vec<String>, _> =
                            sqlx::query_scalar("SELECT request_id FROM usage_records")
                                .fetch_all(&db)
                                .await;
                        let Ok(rows) = rows else { break };
                        let now = Instant::now();
                        {
                            let mut seen = seen.lock();
                            for request_id in rows {
                                seen.entry(request_id).or_insert(now);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // `/readyz` of every replica, every 100 ms, timed.
    let probes = tokio::spawn({
        let (apps, watching) = (apps.clone(), watching.clone());
        async move {
            let mut times = Vec::new();
            while watching.load(Ordering::Relaxed) {
                for app in apps.iter() {
                    let started = Instant::now();
                    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
                    assert_eq!(ready.status(), 200, "replicas stay in the balancer");
                    times.push(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            times
        }
    });
    let workers: Vec<_> = (0..9)
        .map(|w| {
            let (apps, stop) = (apps.clone(), stop.clone());
            let key = if w < 6 {
                postpaid.clone()
            } else {
                prepaid.clone()
            };
            tokio::spawn(async move { load(&apps[w % 3], &key, &stop).await })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(20)).await;
    server.restart();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    for (w, worker) in workers.into_iter().enumerate() {
        let (ids, others) = worker.await.unwrap();
        match w < 6 {
            true => assert!(others.is_empty(), "a postpaid request failed: {others:?}"),
            false => refused.extend(others),
        }
        answered.extend(ids);
    }
    let odd: Vec<&u16> = refused.iter().filter(|s| !matches!(s, 402 | 503)).collect();
    assert!(
        odd.is_empty(),
        "prepaid: only 402 (spent) or 503 (its hold cannot be taken), not {:?}",
        &odd[..odd.len().min(5)]
    );
    // Nobody reads anything: the writers ship by themselves.
    let deadline =
        answered.iter().map(|(_, at)| *at).max().unwrap().max(back) + Duration::from_secs(10);
    while Instant::now() < deadline && seen.lock().len() < answered.len() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    let probes = probes.await.unwrap();
    let seen = seen.lock().clone();
    let late: Vec<_> = answered
        .iter()
        .filter(|(id, returned)| {
            seen.get(id)
                .is_none_or(|at| *at > (*returned).max(back) + Duration::from_secs(10))
        })
        .collect();
    let missing = late.iter().filter(|(id, _)| !seen.contains_key(id)).count();
    assert!(
        late.is_empty(),
        "{} of {} answered requests had no record in PostgreSQL within 10 s ({missing} none at all)",
        late.len(),
        answered.len()
    );
    let ids: Vec<String> = answered.iter().map(|(id, _)| id.clone()).collect();
    let ledger = tollgate::store::Db::Postgres(db.clone());
    helpers::ledger::assert_recorded_once(&ledger, &ids).await;

    // The prepaid account: within one hold per replica of its balance, nothing held.
    let (balance, held): (Decimal, Decimal) =
        sqlx::query_as("SELECT topped_up - spent, held FROM account_funds WHERE account_id = $1")
            .bind(prepaid_account.id)
            .fetch_one(&db)
            .await
            .unwrap();
    let hold: Option<Decimal> =
        sqlx::query_scalar("SELECT max(amount) FROM holds WHERE account_id = $1")
            .bind(prepaid_account.id)
            .fetch_one(&db)
            .await
            .unwrap();
    let hold = hold.unwrap_or_default();
    assert!(
        balance >= -hold * Decimal::from(3),
        "prepaid balance {balance}, hold {hold}"
    );
    assert_eq!(held, Decimal::ZERO);

    let mut times = probes.clone();
    times.sort();
    let (p95, max) = (times[times.len() * 95 / 100], *times.last().unwrap());
    println!(
        "{} answers, {} prepaid refusals; /readyz p95 {p95:?}, max {max:?} over {} probes",
        answered.len(),
        refused.len(),
        times.len()
    );
    assert!(p95 < Duration::from_millis(100), "/readyz p95 {p95:?}");
    assert!(
        max < Duration::from_secs(1),
        "/readyz waited on the database: {max:?}"
    );
    let apps = Arc::try_unwrap(apps).ok().expect("the workers are done");
    for app in apps {
        app.stop().await;
    }
}
