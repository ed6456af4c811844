//! Accounts never overspend: prepaid balances and postpaid credit limits hold under
//! concurrency, top-ups credit once per idempotency key, and balances are always top-ups
//! minus the charges of the records.

use crate::helpers;

use futures_util::future::join_all;
use helpers::{TestApp, chat, dec};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::admin::Role;

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

pub(crate) async fn top_up(app: &TestApp, key: &str, amount: Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/admin/v1/accounts/1/topups"))
        .bearer_auth(app.admin_token(Role::Admin))
        .header("idempotency-key", key)
        .json(&json!({"amount": amount}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn account(app: &TestApp) -> Value {
    app.admin(
        Method::GET,
        "/admin/v1/accounts/1",
        &app.admin_token(Role::Admin),
        None,
    )
    .await
    .1
}

pub(crate) async fn set_billing(app: &TestApp, patch: Value) {
    let (status, body) = app
        .admin(
            Method::PATCH,
            "/admin/v1/accounts/1",
            &app.admin_token(Role::Admin),
            Some(patch),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The sum of the costs of every record of account 1.
async fn charges(app: &TestApp) -> Decimal {
    let filter = tollgate::store::listing::UsageFilter {
        account_id: Some(1),
        ..Default::default()
    };
    let records =
        tollgate::store::listing::list(app.state.usage_db().await.unwrap(), &filter, 1000)
            .await
            .unwrap();
    records.iter().map(|r| r.cost).sum()
}

/// 200 requests of `body` sent at once with the app's key.
async fn two_hundred_at_once(app: &TestApp, body: &Value) -> Vec<reqwest::Response> {
    let requests = (0..200).map(|_| {
        app.client
            .post(app.url(ROUTE))
            .bearer_auth(&app.key)
            .json(body)
            .send()
    });
    join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// A request whose reported usage (2 prompt + 100 completion tokens) stays within what
/// admission holds for it (estimated prompt + max_tokens 100).
pub(crate) fn modest_request() -> Value {
    let mut body = chat(None, "hi", false, json!({"completion_tokens": 100}));
    body["max_tokens"] = json!(100);
    body
}

async fn send_modest(app: &TestApp) -> reqwest::Response {
    let request = app
        .client
        .post(app.url(ROUTE))
        .bearer_auth(&app.key)
        .json(&modest_request());
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_parallel_requests_on_a_balance_for_ten_never_overspend() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    // One request costs (2 x 0.0012 + 100 x 0.0024) / 1000 = 0.0002424 CNY.
    let (status, _) = top_up(&app, "t-1", json!("0.002424")).await;
    assert_eq!(status, 201);
    let responses = two_hundred_at_once(&app, &modest_request()).await;
    let admitted = responses.iter().filter(|r| r.status() == 200).count();
    let refused: Vec<&reqwest::Response> = responses.iter().filter(|r| r.status() == 402).collect();
    assert_eq!(admitted + refused.len(), 200);
    assert!(
        (1..=10).contains(&admitted),
        "the balance covers 10: {admitted} admitted"
    );

    let view = account(&app).await;
    let balance = dec(view["balance"].as_str().unwrap());
    assert_eq!(
        balance,
        dec("0.002424") - charges(&app).await,
        "balance = top-ups - charges"
    );
    assert!(
        balance >= Decimal::ZERO,
        "no overdraft when usage stays within its hold: {balance}"
    );
    assert_eq!(view["held"], "0", "nothing held once all requests ended");

    // Spend the rest one request at a time: refused before the balance can go negative.
    let mut total = admitted;
    let (status, body) = loop {
        let r = send_modest(&app).await;
        if r.status() != 200 {
            break (r.status().as_u16(), r.json::<Value>().await.unwrap());
        }
        total += 1;
        assert!(
            total <= 10,
            "the balance covers 10 requests: {total} admitted"
        );
    };
    assert_eq!(status, 402);
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    let balance = dec(account(&app).await["balance"].as_str().unwrap());
    // A hold is the prompt's byte bound (43) and 100 completion tokens.
    let hold = (dec("43") * dec("0.0012") + dec("100") * dec("0.0024")) / dec("1000");
    assert!(
        balance >= Decimal::ZERO && balance < hold,
        "refused only once one more hold could not be covered: {balance}"
    );
}

/// A prepaid account with 0.1 CNY, 200 concurrent requests that set no `max_tokens` and
/// whose backend answers far beyond any hold: the account never goes below −(one hold).
async fn unbounded_answers_on_a_small_balance(knobs: Value) -> (TestApp, Decimal) {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    let (status, _) = top_up(&app, "t-1", json!("0.1")).await;
    assert_eq!(status, 201);
    let responses = two_hundred_at_once(&app, &chat(None, "hi", false, knobs)).await;
    let mut admitted = Vec::new();
    for response in responses {
        match response.status().as_u16() {
            200 => admitted.push(app.record_of(&response).await),
            402 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(!admitted.is_empty());
    // One hold: the prompt's byte bound and 4,096 completion tokens (the tokens the
    // backend is told it may send) at 0.0012 and 0.0024 CNY per 1,000.
    let hold = (dec("43") * dec("0.0012") + dec("4096") * dec("0.0024")) / dec("1000");
    for record in &admitted {
        assert_eq!(record.usage_source, "capped", "{record:?}");
        assert!(record.cost <= hold, "billed {} > hold {hold}", record.cost);
        assert!(
            record
                .error
                .as_deref()
                .unwrap_or("")
                .contains("spending hold")
        );
    }
    let view = account(&app).await;
    let balance = dec(view["balance"].as_str().unwrap());
    assert_eq!(balance, dec("0.1") - charges(&app).await);
    assert!(balance >= -hold, "below minus one hold: {balance}");
    assert!(
        balance >= Decimal::ZERO,
        "never below zero at all: {balance}"
    );
    assert_eq!(view["held"], "0");
    (app, hold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_far_beyond_their_hold_never_take_a_prepaid_account_below_one_hold() {
    let (app, _) = unbounded_answers_on_a_small_balance(json!({"completion_tokens": 20000})).await;
    let record = app.latest_record().await;
    assert_eq!(
        record.completion_tokens, 4096,
        "billed what the hold covers"
    );
    assert_eq!(
        app.upstream_saw().await["body"]["max_tokens"],
        4096,
        "the backend is told what the hold covers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_the_estimate_undercounts_never_takes_a_prepaid_account_below_one_hold() {
    let knobs = json!({"prompt_tokens": 10000, "completion_tokens": 10});
    let (app, _) = unbounded_answers_on_a_small_balance(knobs).await;
    let record = app.latest_record().await;
    assert!(record.prompt_tokens < 10000, "{record:?}");
}

#[tokio::test]
async fn absurd_amounts_are_refused_naming_their_field_and_never_poison_the_gateway() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token(Role::Admin);
    let max = "79228162514264337593543950335";
    let (status, body) = app
        .admin(
            Method::PATCH,
            "/admin/v1/accounts/1",
            &admin,
            Some(json!({"credit_limit": max})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("credit_limit"))
    );
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/accounts",
            &admin,
            Some(json!({"name": "big", "credit_limit": "1000000000000.01"})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("credit_limit"))
    );
    // Not written plainly (an exponent, a separator): refused, never read as 1000.
    for amount in ["1e3", "1_000", "1 000", "0x10"] {
        let (status, body) = top_up(&app, amount, json!(amount)).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{amount}: {body}");
        assert!(message.contains("plain decimal"), "{amount}: {body}");
    }
    for (i, amount) in [max, max, "1000000000001", "0.0000000000001"]
        .iter()
        .enumerate()
    {
        let (status, body) = top_up(&app, &format!("big-{i}"), json!(amount)).await;
        assert_eq!(
            (status, &body["error"]["param"]),
            (400, &json!("amount")),
            "{amount}"
        );
    }
    let (status, _) = top_up(&app, "fine", json!("1000000000000")).await;
    assert_eq!(status, 201, "the largest top-up is accepted");
    let response = send_modest(&app).await;
    assert_eq!(response.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn amounts_beyond_range_from_older_data_fail_that_account_clearly_and_no_other() {
    let app = TestApp::spawn().await;
    // Written past the API's bounds, as a version without them could have.
    let db = app.state.db();
    tollgate::store::accounts::set_billing(
        db,
        1,
        tollgate::store::accounts::BillingMode::Postpaid,
        Some(Decimal::MAX),
    )
    .await
    .unwrap();
    tollgate::store::accounts::top_up(db, 1, Decimal::MAX, "a", "")
        .await
        .unwrap();
    // A second one no version of today records (its running total would overflow).
    let second = format!(
        "INSERT INTO topups (account_id, amount, idempotency_key, note, created_at)
         VALUES (1, '{}', 'b', '', 0)",
        Decimal::MAX
    );
    helpers::ledger::execute(db, &second, &[]).await.unwrap();
    let refused = tollgate::store::accounts::top_up(db, 1, Decimal::MAX, "c", "").await;
    assert!(
        refused.is_err() || helpers::ledger::is_postgres(),
        "{refused:?}"
    );
    for _ in 0..3 {
        let response = send_modest(&app).await;
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("out of range"),
            "{body}"
        );
    }
    tollgate::store::accounts::create(db, "other")
        .await
        .unwrap();
    let other = helpers::issue_key(&app.state, "other", None).await;
    let response = app
        .client
        .post(app.url(ROUTE))
        .bearer_auth(&other.secret)
        .json(&modest_request())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "other accounts are served");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_top_up_credits_once_per_idempotency_key() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    let (status, first) = top_up(&app, "order-42", json!("100.00")).await;
    assert_eq!(status, 201);
    let (status, again) = top_up(&app, "order-42", json!("100.00")).await;
    assert_eq!(
        (status, &again["id"]),
        (200, &first["id"]),
        "a retry returns the first top-up"
    );
    assert_eq!(
        dec(account(&app).await["balance"].as_str().unwrap()),
        dec("100")
    );
    let (status, conflict) = top_up(&app, "order-42", json!("5")).await;
    assert_eq!(
        (status, conflict["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    for (amount, why) in [
        (json!(10.5), "a float"),
        (json!("-3"), "negative"),
        (json!("abc"), "not a number"),
    ] {
        let (status, _) = top_up(&app, &format!("bad-{why}"), amount).await;
        assert_eq!(status, 400, "{why}");
    }
    let no_key = app
        .client
        .post(app.url("/admin/v1/accounts/1/topups"))
        .bearer_auth(app.admin_token(Role::Admin))
        .json(&json!({"amount": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 400);
}

#[tokio::test]
async fn a_postpaid_credit_limit_stops_spending_and_no_limit_never_does() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        let response = send_modest(&app).await;
        assert_eq!(response.status(), 200, "postpaid without a limit");
    }
    set_billing(
        &app,
        json!({"billing_mode": "postpaid", "credit_limit": "0.001"}),
    )
    .await;
    let mut admitted = 0;
    loop {
        let response = send_modest(&app).await;
        if response.status() == 402 {
            break;
        }
        assert_eq!(response.status(), 200);
        admitted += 1;
        assert!(admitted < 10, "the credit limit never stopped it");
    }
    let owed = charges(&app).await;
    assert!(owed <= dec("0.001"), "owes {owed}, limit 0.001");
    let view = account(&app).await;
    assert_eq!(dec(view["balance"].as_str().unwrap()), -owed);
    set_billing(&app, json!({"credit_limit": null})).await;
    let response = send_modest(&app).await;
    assert_eq!(response.status(), 200, "limit removed");
}

#[tokio::test]
async fn a_stream_whose_running_usage_passes_its_hold_is_ended_as_if_by_max_tokens() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    let (status, _) = top_up(&app, "t-1", json!("1")).await;
    assert_eq!(status, 201);
    // 20,000 completion tokens over 50 chunks, each chunk carrying the running total.
    let knobs = json!({"chunks": 50, "completion_tokens": 20000, "running_usage": true});
    let response = app.post(ROUTE, &chat(None, "hi", true, knobs)).await;
    assert_eq!(response.status(), 200);
    let id = helpers::request_id(&response);
    let text = response.text().await.unwrap();
    let events = helpers::sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let finish: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length", "{finish}");
    let delivered = events.len() - 2;
    assert!(delivered < 50, "stopped early: {delivered} chunks");
    let record = app.record(&id).await;
    assert_eq!(
        record.completion_tokens, 4096,
        "billed what the hold covers"
    );
    assert_eq!(record.usage_source, "capped");
    // The backend's own count is kept beside the billed one.
    let reported = record.reported.expect("the reported counts are kept");
    assert!(reported.tokens.completion > 4096, "{reported:?}");
    assert_eq!(reported.tokens.prompt, record.prompt_tokens as u64);
    assert_eq!(record.status, "ok");
}
