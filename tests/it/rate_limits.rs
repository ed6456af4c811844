//! Per-key limits hold exactly under concurrency and are reported in standard headers.

use crate::helpers;

use futures_util::future::join_all;
use helpers::{TestApp, chat};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::admin::Role;

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

async fn key_with(app: &TestApp, limits: Value) -> String {
    key_and_id(app, limits).await.0
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_parallel_requests_on_a_10_per_minute_key_admit_exactly_10() {
    let app = TestApp::spawn().await;
    let key = key_with(&app, json!({"rpm": 10})).await;
    let body = chat(None, "hi", false, json!({}));
    let requests = (0..200).map(|_| {
        app.client
            .post(app.url(ROUTE))
            .bearer_auth(&key)
            .json(&body)
            .send()
    });
    let responses: Vec<reqwest::Response> = join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let admitted = responses.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<&reqwest::Response> = responses.iter().filter(|r| r.status() == 429).collect();
    assert_eq!((admitted, limited.len()), (10, 190));
    for response in limited {
        let retry: u64 = header(response, "retry-after").parse().unwrap();
        assert!((1..=6).contains(&retry), "one request per 6 s: {retry}");
        assert_eq!(header(response, "x-ratelimit-limit-requests"), "10");
        assert_eq!(header(response, "x-ratelimit-remaining-requests"), "0");
    }
    assert_eq!(
        app.record_count().await,
        10,
        "refused requests never reach a backend"
    );
}

#[tokio::test]
async fn every_proxied_response_reports_the_limits() {
    let app = TestApp::spawn().await;
    let key = key_with(&app, json!({"rpm": 5, "tpm": 100000})).await;
    let mut remaining = vec![];
    for (stream, fault) in [(false, None), (true, None), (false, Some("http_500"))] {
        let body = chat(None, "hi", stream, json!({"fault": fault}));
        let response = app
            .client
            .post(app.url(ROUTE))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "5");
        assert_eq!(header(&response, "x-ratelimit-limit-tokens"), "100000");
        assert!(header(&response, "x-ratelimit-reset-requests").ends_with('s'));
        header(&response, "x-ratelimit-remaining-tokens");
        header(&response, "x-ratelimit-reset-tokens");
        remaining.push(header(&response, "x-ratelimit-remaining-requests").to_string());
        response.bytes().await.unwrap();
    }
    assert_eq!(remaining, ["4", "3", "2"]);
}

#[tokio::test]
async fn the_first_refusal_says_to_retry_in_six_seconds() {
    let app = TestApp::spawn().await;
    let key = key_with(&app, json!({"rpm": 10})).await;
    for _ in 0..10 {
        let response = app
            .client
            .post(app.url(ROUTE))
            .bearer_auth(&key)
            .json(&chat(None, "hi", false, json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = app
        .client
        .post(app.url(ROUTE))
        .bearer_auth(&key)
        .json(&chat(None, "hi", false, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "6");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10 requests per minute")
    );
}

#[tokio::test]
async fn token_reservations_are_settled_with_the_real_usage() {
    let app = TestApp::spawn().await;
    let key = key_with(&app, json!({"tpm": 500})).await;
    let send = |max_tokens: u64| {
        let mut body = chat(
            None,
            "hi",
            false,
            json!({"prompt_tokens": 5, "completion_tokens": 5}),
        );
        body["max_tokens"] = json!(max_tokens);
        app.client
            .post(app.url(ROUTE))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    // Each reserves ~300; without settlement the second would not fit in 500.
    for _ in 0..3 {
        let response = send(300).await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let response = send(480).await.unwrap();
    assert_eq!(
        response.status(),
        429,
        "the bucket holds ~470 after three settled requests of 10"
    );
    assert_eq!(header(&response, "x-ratelimit-limit-tokens"), "500");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens per minute")
    );
}

#[tokio::test]
async fn a_key_sees_its_own_limits_and_exact_month_to_date_usage() {
    let app = TestApp::spawn().await;
    let key = key_with(&app, json!({"rpm": 20, "tpm": 9000})).await;
    let mut expected_cost = Decimal::ZERO;
    for chip in ["nvidia", "amd", "chip3"] {
        let body = chat(
            None,
            "hi",
            false,
            json!({"prompt_tokens": 1234, "completion_tokens": 567, "cached_tokens": 100}),
        );
        let path = format!("/maas/megrez-7b-instruct/{chip}/chat/completions");
        let response = app
            .client
            .post(app.url(&path))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        expected_cost += app.record_of(&response).await.cost;
    }
    for path in ["/v1/usage", "/maas/v1/usage"] {
        let usage = app.get_json(path, &key).await;
        assert_eq!(usage["limits"]["requests_per_minute"], 20);
        assert_eq!(
            usage["limits"]["remaining_requests"], 17,
            "reading usage costs no request"
        );
        assert_eq!(usage["limits"]["tokens_per_minute"], 9000);
        assert_eq!(usage["period"]["requests"], 3);
        assert_eq!(usage["period"]["prompt_tokens"], 3 * 1234);
        assert_eq!(usage["period"]["cached_tokens"], 300);
        let cost: Decimal = usage["period"]["cost"].as_str().unwrap().parse().unwrap();
        assert_eq!(cost, expected_cost, "exactly the sum of the records");
    }
}

#[tokio::test]
async fn a_request_that_never_reaches_a_backend_gives_its_reservation_back() {
    let prices = tempfile::tempdir().unwrap();
    let sample =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pricing/sample/sample.toml");
    std::fs::copy(sample, prices.path().join("sample.toml")).unwrap();
    let future = "[[prices]]\nmodel = \"future-model\"\nchip = \"nvidia\"\neffective_from = 2099-01-01T00:00:00Z\ninput_per_1k = \"1\"\n";
    std::fs::write(prices.path().join("future.toml"), future).unwrap();
    let dir = prices.path().to_path_buf();
    let app = TestApp::spawn_with(move |c| {
        c.pricing.dir = dir;
        let mut up = c
            .upstreams
            .iter()
            .find(|u| u.chip == "nvidia")
            .unwrap()
            .clone();
        up.model = "future-model".into();
        up.deployment = None;
        c.upstreams.push(up);
    })
    .await;
    let key = key_with(&app, json!({"tpm": 1000})).await;
    let mut body = chat(None, "hi", false, json!({}));
    body["max_tokens"] = json!(900);
    for _ in 0..3 {
        let response = app
            .client
            .post(app.url("/maas/future-model/nvidia/chat/completions"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "no price in force yet");
    }
    let response = app
        .client
        .post(app.url(ROUTE))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the refused requests' 900-token reservations came back"
    );
}

/// Issues a key with `limits`; returns its secret and id.
async fn key_and_id(app: &TestApp, limits: Value) -> (String, i64) {
    let mut body = json!({"account": "acme"});
    body.as_object_mut()
        .unwrap()
        .extend(limits.as_object().unwrap().clone());
    let (status, issued) = app
        .admin(
            Method::POST,
            "/admin/v1/keys",
            &app.admin_token(Role::Admin),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let id = issued["id"].as_i64().expect("the key's id");
    (issued["key"].as_str().unwrap().to_string(), id)
}

/// How many of `n` requests sent one after another with `key` were admitted.
async fn admitted_of(app: &TestApp, key: &str, n: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        let response = app
            .client
            .post(app.url(ROUTE))
            .bearer_auth(key)
            .json(&chat(None, "hi", false, json!({})))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_tokens_near_u64_max_cannot_slip_past_the_token_limit() {
    let app = TestApp::spawn().await;
    let key = key_with(&app, json!({"tpm": 1000, "rpm": 1000})).await;
    let mut body = chat(None, "hi", false, json!({"completion_tokens": 900}));
    body["max_tokens"] = json!(18446744073709551615u64);
    let requests = (0..20).map(|_| {
        app.client
            .post(app.url(ROUTE))
            .bearer_auth(&key)
            .json(&body)
            .send()
    });
    let statuses: Vec<u16> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(
        admitted, 1,
        "only a full bucket admits a request beyond it: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 19);
    for bad in [json!(-1), json!(1.5), json!("many")] {
        let mut body = chat(None, "hi", false, json!({}));
        body["max_tokens"] = bad.clone();
        let response = app.post(ROUTE, &body).await;
        assert_eq!(response.status(), 400, "max_tokens {bad}");
    }
    let mut body = chat(None, "hi", false, json!({}));
    body["n"] = json!(1000);
    let response = app.post(ROUTE, &body).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "n");
}

#[tokio::test]
async fn a_rotated_key_and_a_changed_limit_keep_what_was_used() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token(Role::Admin);
    let (old, id) = key_and_id(&app, json!({"rpm": 5})).await;
    assert_eq!(admitted_of(&app, &old, 5).await, 5);
    let (status, rotated) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/keys/{id}/rotate"),
            &admin,
            Some(json!({"grace_secs": 600})),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_string();
    let new_id = rotated["id"].as_i64().unwrap();
    assert_eq!(
        admitted_of(&app, &new, 3).await,
        0,
        "the new secret shares the budget"
    );
    assert_eq!(
        admitted_of(&app, &old, 3).await,
        0,
        "and so does the old one"
    );
    let (status, _) = app
        .admin(
            Method::PATCH,
            &format!("/admin/v1/keys/{new_id}"),
            &admin,
            Some(json!({"rpm": 6})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        admitted_of(&app, &new, 6).await,
        1,
        "5 of the new 6 were used"
    );
}

#[tokio::test]
async fn a_grace_period_beyond_a_year_is_refused() {
    let app = TestApp::spawn().await;
    let (_, id) = key_and_id(&app, json!({})).await;
    for grace in [json!(1_000_000_000_000_000i64), json!(-1), json!(i64::MAX)] {
        let (status, body) = app
            .admin(
                Method::POST,
                &format!("/admin/v1/keys/{id}/rotate"),
                &app.admin_token(Role::Admin),
                Some(json!({"grace_secs": grace})),
            )
            .await;
        assert_eq!(
            (status, &body["error"]["param"]),
            (400, &json!("grace_secs")),
            "{grace}"
        );
    }
    assert_eq!(admitted_of(&app, &app.key, 1).await, 1, "still serving");
}

#[tokio::test]
async fn reading_usage_has_its_own_limit_and_shows_only_the_callers_usage() {
    let app = TestApp::spawn_with(|c| c.limits.usage_rpm = 3).await;
    tollgate::store::accounts::create(app.state.db(), "other")
        .await
        .unwrap();
    let other = helpers::issue_key(&app.state, "other", None).await.secret;
    let (same_account, _) = key_and_id(&app, json!({})).await;
    for (key, n) in [(&app.key, 2), (&other, 3), (&same_account, 4)] {
        assert_eq!(admitted_of(&app, key, n).await, n);
    }
    let usage = |key: String| {
        let request = app.client.get(app.url("/v1/usage")).bearer_auth(key);
        async move { request.send().await.unwrap() }
    };
    for _ in 0..3 {
        let response = usage(app.key.clone()).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["period"]["requests"], 2,
            "only this key's requests: {body}"
        );
    }
    let refused = usage(app.key.clone()).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = usage(other.clone()).await.json().await.unwrap();
    assert_eq!(
        body["period"]["requests"], 3,
        "another key's usage is its own"
    );
}
