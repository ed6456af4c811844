//! Rate limits shared by replicas: counted in one Redis, a key's rpm and tpm hold across
//! every replica; without Redis each replica falls back to its share.

use futures_util::future::join_all;

use crate::helpers::postgres::Postgres;
use crate::helpers::{self, TestApp};
use crate::replicas::{ROUTE, status_with};
use crate::spending::modest_request;

async fn replicas_on_redis(postgres: &str, redis: &str, n: usize) -> Vec<TestApp> {
    replicas_on_redis_with(postgres, redis, n, |_| {}).await
}

/// `n` replicas on one ledger and one Redis, each configured by `tweak` too.
async fn replicas_on_redis_with(
    postgres: &str,
    redis: &str,
    n: usize,
    tweak: fn(&mut tollgate::config::Config),
) -> Vec<TestApp> {
    let mut apps = Vec::with_capacity(n);
    for _ in 0..n {
        let (postgres, redis) = (postgres.to_owned(), redis.to_owned());
        apps.push(
            TestApp::spawn_with(move |c| {
                c.database.url = postgres;
                c.limits.store = tollgate::config::LimitStoreKind::Redis;
                c.redis.url = Some(redis);
                c.redis.prefix = "replicas".into(); // one for all three
                // A loaded machine must not push the shared path into the fallback.
                c.redis.timeout_ms = 2000;
                tweak(c);
            })
            .await,
        );
    }
    apps
}

/// InternLM's shared credential allows 5 requests a minute (`upstreams[].rpm`): three
/// replicas send it 5 in all, not 5 each; the rest are told when to retry by tollgate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_own_limit_is_counted_once_for_all_replicas() {
    let postgres = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let redis = crate::helpers::redis::Redis::start();
    let apps = replicas_on_redis_with(&postgres.url, &redis.url, 3, |c| {
        for up in (c.upstreams.iter_mut()).filter(|u| u.model == "internlm3-latest") {
            up.rpm = Some(5);
        }
    })
    .await;
    let key = key_with(&apps[0], 10_000, None).await;
    let started = std::time::Instant::now();
    let body = helpers::chat(None, "hi", false, serde_json::json!({}));
    let rounds = apps.iter().map(|app| {
        let (key, body) = (&key, &body);
        async move {
            let requests = (0..4).map(|_| {
                let path = "/maas/internlm3-latest/ascend/chat/completions";
                app.client
                    .post(app.url(path))
                    .bearer_auth(key)
                    .json(body)
                    .send()
            });
            join_all(requests).await
        }
    });
    let mut statuses = Vec::new();
    for response in join_all(rounds).await.into_iter().flatten() {
        let response = response.unwrap();
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(response.status().as_u16());
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (5..=allowed(5, started.elapsed())).contains(&admitted),
        "rpm 5 across 3 replicas: {statuses:?} in {:?}",
        started.elapsed()
    );
    assert!(
        statuses.iter().all(|s| [200, 429].contains(s)),
        "{statuses:?}"
    );
    for app in apps {
        app.stop().await;
    }
}

/// A key of account acme with its own rpm and tpm, issued through `app`.
pub(crate) async fn key_with(app: &TestApp, rpm: u32, tpm: Option<u64>) -> String {
    let limits = tollgate::store::keys::KeyLimits {
        rpm: Some(rpm),
        tpm,
        allowed_models: None,
    };
    helpers::key_with_limits(&app.state, "acme", limits).await
}

/// `per_replica` requests at once through each replica with `key`: how many each admitted
/// (the others must be 429s carrying the limit headers).
async fn hammer(apps: &[TestApp], key: &str, per_replica: usize) -> Vec<usize> {
    let body = modest_request();
    let rounds = apps.iter().map(|app| {
        let body = &body;
        async move {
            let requests = (0..per_replica).map(|_| {
                let request = app.client.post(app.url(ROUTE)).bearer_auth(key);
                request.json(body).send()
            });
            let mut admitted = 0;
            for response in join_all(requests).await {
                let response = response.unwrap();
                match response.status().as_u16() {
                    200 => admitted += 1,
                    429 => {
                        let headers = response.headers();
                        assert!(headers.contains_key("retry-after"));
                        assert!(headers.contains_key("x-ratelimit-limit-requests"));
                    }
                    other => panic!("only 200 or 429, not {other}"),
                }
            }
            admitted
        }
    });
    join_all(rounds).await
}

/// Requests a key may pass in `elapsed` at `rpm`: the whole burst, plus one per period.
fn allowed(rpm: u32, elapsed: std::time::Duration) -> usize {
    rpm as usize + (elapsed.as_secs_f64() / (60.0 / f64::from(rpm))).floor() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_in_redis_hold_across_replicas_and_fall_back_to_shares_without_it() {
    let postgres = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let redis = crate::helpers::redis::Redis::start();
    let apps = replicas_on_redis(&postgres.url, &redis.url, 3).await;

    // rpm = 10 through three replicas at once: 10 in all, not 10 each.
    let key = key_with(&apps[0], 10, None).await;
    let started = std::time::Instant::now();
    let admitted: usize = hammer(&apps, &key, 20).await.iter().sum();
    assert!(
        (10..=allowed(10, started.elapsed())).contains(&admitted),
        "rpm 10 across 3 replicas: {admitted} admitted in {:?}",
        started.elapsed()
    );

    // rpm = 600 (3 replicas: slices of 3) and rpm = 60,000 (slices of 100), hammered: never
    // past the limit, at most one slice per replica left unused, and far fewer round trips
    // to Redis than requests.
    for (rpm, per_replica, most_unused) in [(600, 300, 3 * 2), (60_000, 200, 0)] {
        let key = key_with(&apps[0], rpm, None).await;
        let calls_before = redis.script_calls().await;
        let started = std::time::Instant::now();
        let admitted: usize = hammer(&apps, &key, per_replica).await.iter().sum();
        let calls = redis.script_calls().await - calls_before;
        let wanted = (3 * per_replica).min(rpm as usize);
        assert!(
            (wanted - most_unused..=allowed(rpm, started.elapsed())).contains(&admitted),
            "rpm {rpm} across 3 replicas in slices: {admitted} admitted in {:?}",
            started.elapsed()
        );
        assert!(
            calls * 2 < (3 * per_replica) as u64,
            "rpm {rpm}: {calls} round trips to Redis for {} requests",
            3 * per_replica
        );
    }

    // tpm = 1000: each request reserves 143 tokens (its prompt's bound and max_tokens 100)
    // and uses 102; the correction reaches Redis from whichever replica served it.
    let key = key_with(&apps[0], 1000, Some(1000)).await;
    let mut admitted = 0;
    for i in 0..12 {
        let app = &apps[i % 3];
        let request = app.client.post(app.url(ROUTE)).bearer_auth(&key);
        let response = request.json(&modest_request()).send().await.unwrap();
        match response.status().as_u16() {
            200 => admitted += 1,
            429 => break,
            other => panic!("{other}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        admitted, 9,
        "1000 tokens hold 9 requests of 102 with 143 reserved"
    );

    // Redis goes away: each replica admits its share of the limit, 30 / 3.
    for app in &apps {
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while app.state.limits().live_replicas() != 3 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("every replica sees the three heartbeats");
    }
    redis.stop();
    let key = key_with(&apps[0], 30, None).await;
    let started = std::time::Instant::now();
    let shares = hammer(&apps, &key, 15).await;
    for admitted in &shares {
        assert!(
            (1..=allowed(10, started.elapsed())).contains(admitted),
            "a replica's share of 30 is 10: {shares:?}"
        );
    }
    assert!(apps.iter().all(|a| a.state.limits().in_fallback()));
    assert!(apps[0].state.metrics().redis_errors.get() >= 1);

    // Redis comes back (empty): once each replica has found it again (it probes every
    // second, on its next request), exact shared limits again.
    redis.restart();
    let probe = key_with(&apps[0], 100_000, None).await;
    for app in &apps {
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while app.state.limits().in_fallback() {
                status_with(app, &probe).await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("every replica finds Redis again");
    }
    // The key the fallback counted gets no second window from an empty Redis: within a
    // minute of its return, each replica's own count must admit too.
    let again: usize = hammer(&apps, &key, 15).await.iter().sum();
    let during: usize = shares.iter().sum();
    assert!(
        during + again <= allowed(30, started.elapsed()),
        "rpm 30 across Redis's restart: {during} + {again} admitted in {:?}",
        started.elapsed()
    );
    let key = key_with(&apps[0], 10, None).await;
    let started = std::time::Instant::now();
    let admitted: usize = hammer(&apps, &key, 20).await.iter().sum();
    assert!(
        (10..=allowed(10, started.elapsed())).contains(&admitted),
        "exact again once Redis answers: {admitted}"
    );
    for app in apps {
        app.stop().await;
    }
}
