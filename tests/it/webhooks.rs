//! Alerts by webhook on the ledger under test: a receiver that fails twice gets the event
//! on the third try, signed as Standard Webhooks say, and never again after a restart; a
//! balance threshold fires once when crossed and again only after it cleared.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tollgate::admin::Role;
use tollgate::config::{Config, WebhookConfig};

use crate::helpers::{self, TestApp, chat};
use crate::spending::{set_billing, top_up};

const SECRET: &str = "a-signing-secret-of-32-bytes-ok!";

/// What the receiver was sent: (webhook-id, timestamp, signature, body, status answered).
type Seen = Arc<Mutex<Vec<(String, String, String, String, u16)>>>;

/// A receiver on loopback that answers 503 to the first `fail` tries of each event.
async fn receiver(fail: usize) -> (String, Seen) {
    let seen: Seen = Arc::default();
    async fn take(
        State((seen, fail)): State<(Seen, usize)>,
        headers: HeaderMap,
        body: String,
    ) -> StatusCode {
        let header = |name: &str| {
            let value = headers.get(name).map(|v| v.to_str().unwrap().to_owned());
            value.unwrap_or_default()
        };
        let id = header("webhook-id");
        let mut seen = seen.lock().unwrap();
        let tries = seen.iter().filter(|s| s.0 == id).count();
        let status = if tries < fail { 503 } else { 200 };
        let (timestamp, signature) = (header("webhook-timestamp"), header("webhook-signature"));
        seen.push((id, timestamp, signature, body, status));
        StatusCode::from_u16(status).unwrap()
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(take))
        .with_state((seen.clone(), fail));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn alerts(c: &mut Config, url: &str, dir: &std::path::Path, events: &[&str]) {
    let secret = dir.join("webhook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    c.alerts.webhooks = vec![WebhookConfig {
        name: "ops".into(),
        url: url.into(),
        secret_env: None,
        secret_file: Some(secret),
        events: events.iter().map(|e| e.to_string()).collect(),
        accounts: Vec::new(),
    }];
    c.alerts.retry_base_ms = 200;
    c.alerts.check_every_secs = 1;
}

/// Waits (at most 20 s) until `done` holds of what the receiver saw.
async fn until(seen: &Seen, done: impl Fn(&[(String, String, String, String, u16)]) -> bool) {
    for _ in 0..200 {
        if done(&seen.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the receiver saw {:?}", seen.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_twice_gets_the_event_on_the_third_try_and_never_again() {
    let (url, seen) = receiver(2).await;
    let dir = tempfile::tempdir().unwrap();
    let database = helpers::ledger::fresh(dir.path(), Default::default());
    let configure = {
        let (url, path) = (url.clone(), dir.path().to_owned());
        move |c: &mut Config| {
            c.database = database;
            alerts(c, &url, &path, &["key.created"]);
        }
    };
    let app = TestApp::spawn_with(configure.clone()).await;
    let admin = app.admin_token(Role::Admin);
    let (status, key) = app
        .admin(
            Method::POST,
            "/admin/v1/keys",
            &admin,
            Some(json!({"account": "acme", "name": "ci"})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    until(&seen, |s| s.iter().any(|t| t.4 == 200)).await;
    let tries: Vec<(String, String, String, String, u16)> = seen.lock().unwrap().clone();
    // The key the test harness issued at start was not through the audit log; this one is.
    assert_eq!(tries.len(), 3, "{tries:?}");
    assert_eq!(
        tries.iter().map(|t| t.4).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    let id = &tries[0].0;
    assert!(id.starts_with("evt_") && tries.iter().all(|t| &t.0 == id));
    for (id, timestamp, signature, body, _) in &tries {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(signature, &format!("v1,{expected}"));
        let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
        assert!((0..30).contains(&age));
    }
    let event: Value = serde_json::from_str(&tries[2].3).unwrap();
    assert_eq!(event["type"], "key.created");
    assert_eq!(event["account"]["name"], "acme");
    assert_eq!(event["data"]["object"]["prefix"], key["prefix"]);
    assert!(
        !tries[2].3.contains(key["key"].as_str().unwrap()),
        "no secret in events"
    );
    // The delivery and its attempts, as the operator reads them (noted just after the
    // receiver answered); the failures counted.
    let mut deliveries = Value::Null;
    for _ in 0..50 {
        deliveries = app.get_json("/admin/v1/webhooks/deliveries", &admin).await;
        if deliveries["data"][0]["state"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivery = &deliveries["data"][0];
    assert_eq!(
        (&delivery["state"], &delivery["attempts"]),
        (&json!("delivered"), &json!(3))
    );
    let statuses: Vec<i64> = (delivery["tries"].as_array().unwrap().iter())
        .map(|t| t["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("tollgate_webhook_failures_total{endpoint=\"ops\"} 2"),
        "{metrics}"
    );
    app.stop().await;

    // Started again on the same ledger: nothing is sent twice.
    let again = TestApp::spawn_with(configure).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "no duplicate after a restart"
    );
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_threshold_fires_once_until_it_clears() {
    let (url, seen) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(|c| {
        alerts(c, &url, dir.path(), &["balance.below"]);
        let threshold = "account = \"acme\"\nbalance_below = \"0.99\"";
        c.alerts.thresholds = vec![toml::from_str(threshold).unwrap()];
    })
    .await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "first", json!("1.00")).await.0, 201);
    let mut body = chat(None, "hi", false, json!({"completion_tokens": 10_000}));
    body["max_tokens"] = json!(10_000);
    let route = "/maas/megrez-7b-instruct/nvidia/chat/completions";
    let below = |s: &[(String, String, String, String, u16)]| {
        (s.iter())
            .filter(|t| t.3.contains("\"balance.below\""))
            .count()
    };
    // 1.00 − 0.0240024: below 0.99, told once however long it stays below.
    assert_eq!(app.post(route, &body).await.status(), 200);
    until(&seen, |s| below(s) == 1).await;
    assert_eq!(app.post(route, &body).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(below(&seen.lock().unwrap()), 1);
    // Topped up above it (re-armed), then below again: told again.
    assert_eq!(top_up(&app, "second", json!("0.10")).await.0, 201);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(below(&seen.lock().unwrap()), 1);
    // 1.0519952, then three requests: 0.979988.
    for _ in 0..3 {
        assert_eq!(app.post(route, &body).await.status(), 200);
    }
    until(&seen, |s| below(s) == 2).await;
    let event: Value = {
        let seen = seen.lock().unwrap();
        let last = seen
            .iter()
            .rev()
            .find(|t| t.3.contains("balance.below"))
            .unwrap();
        serde_json::from_str(&last.3).unwrap()
    };
    assert_eq!(event["data"]["threshold"], "0.99");
    assert_eq!(event["data"]["spendable"], "0.979988");
    app.stop().await;
}

/// Two replicas on one PostgreSQL, both sending: each event reaches the receiver once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_send_each_event_once() {
    let postgres = tokio::task::spawn_blocking(crate::helpers::postgres::Postgres::start)
        .await
        .unwrap();
    let (url, seen) = receiver(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut apps = Vec::new();
    for _ in 0..2 {
        let (database, url, path) = (postgres.url.clone(), url.clone(), dir.path().to_owned());
        let app = TestApp::spawn_with(move |c| {
            c.database.url = database;
            alerts(c, &url, &path, &["*"]);
        })
        .await;
        apps.push(app);
    }
    let admin = apps[0].admin_token(Role::Admin);
    for (i, app) in apps.iter().enumerate() {
        for n in 0..3 {
            let body = json!({"account": "acme", "name": format!("k{i}{n}")});
            let (status, _) = app
                .admin(Method::POST, "/admin/v1/keys", &admin, Some(body))
                .await;
            assert_eq!(status, 201);
        }
    }
    // Six events, each refused once and then taken: twelve tries, six acknowledged.
    until(&seen, |s| s.iter().filter(|t| t.4 == 200).count() == 6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = seen.lock().unwrap().clone();
    let mut ids: Vec<&String> = seen.iter().filter(|t| t.4 == 200).map(|t| &t.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), seen.len()), (6, 12), "{seen:?}");
    for app in apps {
        app.stop().await;
    }
}
