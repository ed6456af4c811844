//! Quota plans (`[[limits.plans]]`): requests and tokens over several rolling windows at
//! once, for an account or each of its keys; the tightest window in the headers, a 429
//! naming its window, counts that survive a restart (they start from the ledger), and a
//! plan held exactly across three replicas on one Redis.

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::postgres::Postgres;
use crate::helpers::{self, TestApp, chat, issue_key};
use tollgate::config::{Config, PlanConfig, PlanHolder, QuotaConfig};

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

fn quota(requests: Option<u64>, tokens: Option<u64>, window: &str) -> QuotaConfig {
    QuotaConfig {
        requests,
        tokens,
        window: window.into(),
    }
}

fn plan(per: PlanHolder, quotas: Vec<QuotaConfig>) -> PlanConfig {
    PlanConfig {
        name: "coding".into(),
        accounts: vec!["acme".into()],
        per,
        quotas,
    }
}

fn header(response: &reqwest::Response, name: &str) -> String {
    let value = response.headers().get(name);
    value.map_or(String::new(), |v| v.to_str().unwrap().to_owned())
}

async fn send(app: &TestApp, key: &str, sim: Value) -> reqwest::Response {
    let request = app.client.post(app.url(ROUTE)).bearer_auth(key);
    request
        .json(&chat(None, "hi", false, sim))
        .send()
        .await
        .unwrap()
}

/// Four requests per 5 hours (and 100 per 7 days) for the whole account: its two keys
/// share them, the headers show the 5 hours (tighter than the key's rpm), the fifth is
/// refused naming the window and the wait; a gateway started afresh on the same ledger
/// refuses too; an account on no plan is served.
#[tokio::test]
async fn a_plan_admits_its_quota_names_the_window_and_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let database = helpers::ledger::fresh(dir.path(), Default::default());
    let configure = {
        let database = database.clone();
        move |c: &mut Config| {
            c.database = database;
            c.limits.default_rpm = 1000;
            c.limits.plans = vec![plan(
                PlanHolder::Account,
                vec![quota(Some(4), None, "5h"), quota(Some(100), None, "7d")],
            )];
        }
    };
    let app = TestApp::spawn_with(configure.clone()).await;
    let other = issue_key(&app.state, "acme", None).await.secret;
    for (i, key) in [&app.key, &app.key, &other, &app.key].iter().enumerate() {
        let response = send(&app, key, json!({})).await;
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "4");
        let remaining = (3 - i).to_string();
        assert_eq!(
            header(&response, "x-ratelimit-remaining-requests"),
            remaining
        );
    }
    let refused = send(&app, &other, json!({})).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "x-ratelimit-limit-requests"), "4");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    // Five hours from the first request, and at most a 60th of them more.
    assert!(
        (5 * 3600 - 120..=5 * 3600 + 300).contains(&retry),
        "{retry}"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("4 requests per 5 hours") && message.contains("'coding'"),
        "{message}"
    );
    // The key reads its plan and what is left of each window.
    let usage = app.client.get(app.url("/v1/usage")).bearer_auth(&app.key);
    let usage: Value = usage.send().await.unwrap().json().await.unwrap();
    let plan = &usage["plan"];
    assert_eq!(
        (&plan["name"], &plan["per"]),
        (&json!("coding"), &json!("account"))
    );
    let left: Vec<(&str, u64, u64)> = (plan["windows"].as_array().unwrap().iter())
        .map(|w| {
            let remaining = w["remaining"].as_u64().unwrap();
            (
                w["window"].as_str().unwrap(),
                w["limit"].as_u64().unwrap(),
                remaining,
            )
        })
        .collect();
    assert_eq!(left, [("5 hours", 4, 0), ("7 days", 100, 96)]);
    // Another account is on no plan.
    tollgate::store::accounts::create(app.state.db(), "globex")
        .await
        .unwrap();
    let globex = issue_key(&app.state, "globex", None).await.secret;
    assert_eq!(send(&app, &globex, json!({})).await.status(), 200);
    assert_eq!(
        app.record_count().await,
        5,
        "refused requests leave no record"
    );
    app.wait_until_shipped(std::time::Duration::from_secs(30))
        .await;
    app.stop().await;

    let again = TestApp::spawn_with(configure).await;
    let response = send(&again, &again.key, json!({})).await;
    assert_eq!(
        response.status(),
        429,
        "a restart does not hand out a fresh window"
    );
    assert_eq!(header(&response, "x-ratelimit-limit-requests"), "4");
    again.stop().await;
}

/// Each key its own quota of 100 tokens a day (and 50 requests an hour): a key is refused
/// once its tokens are used up (the request that crossed it was admitted), the other key
/// still has its own; the headers show the tokens left.
#[tokio::test]
async fn a_token_quota_per_key_refuses_once_used_up() {
    let app = TestApp::spawn_with(|c| {
        c.limits.default_rpm = 1000;
        c.limits.plans = vec![plan(
            PlanHolder::Key,
            vec![quota(None, Some(100), "1d"), quota(Some(50), None, "1h")],
        )];
    })
    .await;
    let other = issue_key(&app.state, "acme", None).await.secret;
    // 2 + 28 tokens each (the simulator reports them).
    let sim = json!({"prompt_tokens": 2, "completion_tokens": 28});
    let mut left = Vec::new();
    for i in 0..4 {
        let response = send(&app, &app.key, sim.clone()).await;
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(header(&response, "x-ratelimit-limit-tokens"), "100");
        left.push(header(&response, "x-ratelimit-remaining-tokens"));
        // The tokens are counted as the request settles.
        app.latest_record().await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(left, ["100", "70", "40", "10"]);
    let refused = send(&app, &app.key, sim.clone()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "x-ratelimit-limit-tokens"), "100");
    assert_eq!(header(&refused, "x-ratelimit-remaining-tokens"), "0");
    let body: Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("100 tokens per 1 day"), "{message}");
    // The account's other key has its own quota.
    let response = send(&app, &other, sim).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-ratelimit-remaining-tokens"), "100");
    app.stop().await;
}

/// GenStudio's coding plan (1,000 requests per 5 hours, 7,000 per 7 days, 14,000 per 30
/// days) for an account whose keys are spread over three replicas on one PostgreSQL and
/// one Redis: 1,200 requests at once, exactly 1,000 admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1000_per_5_hours_plan_admits_exactly_1000_across_three_replicas() {
    let postgres = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let redis = crate::helpers::redis::Redis::start();
    let mut apps = Vec::new();
    for _ in 0..3 {
        let (url, redis) = (postgres.url.clone(), redis.url.clone());
        apps.push(
            TestApp::spawn_with(move |c| {
                c.database.url = url;
                c.limits.store = tollgate::config::LimitStoreKind::Redis;
                c.redis.url = Some(redis);
                c.redis.prefix = "plans".into();
                c.redis.timeout_ms = 2000;
                c.limits.default_rpm = 100_000;
                c.limits.plans = vec![plan(
                    PlanHolder::Account,
                    vec![
                        quota(Some(1000), None, "5h"),
                        quota(Some(7000), None, "7d"),
                        quota(Some(14_000), None, "30d"),
                    ],
                )];
            })
            .await,
        );
    }
    let rounds = apps.iter().map(|app| async move {
        let mut statuses = Vec::new();
        // 400 per replica, 25 at a time.
        for _ in 0..16 {
            let batch = (0..25).map(|_| send(app, &app.key, json!({})));
            for response in join_all(batch).await {
                statuses.push(response.status().as_u16());
            }
        }
        statuses
    });
    let statuses: Vec<u16> = join_all(rounds).await.into_iter().flatten().collect();
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((admitted, refused), (1000, 200), "{statuses:?}");
    for app in apps {
        app.stop().await;
    }
    redis.stop();
}
