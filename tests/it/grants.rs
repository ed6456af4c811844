//! Credit grants on the ledger under test: burned by usage before the balance (lowest
//! priority number first, then the soonest expiry), never after they expire; a prepaid
//! account with only a grant spends it to the last fen and no further, however many
//! requests run at once; issued once per idempotency key, refused when malformed; a new
//! account's welcome grant; the invoice lists usage at its prices and the grants applied.

use chrono::{Duration, Utc};
use futures_util::future::join_all;
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::admin::Role;

use crate::helpers::{self, TestApp, chat, dec};
use crate::spending::{set_billing, top_up};

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

/// Issues a grant to account 1 through the admin API under `key`.
async fn grant(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let response = (app.client.post(app.url("/admin/v1/accounts/1/grants")))
        .bearer_auth(app.admin_token(Role::Admin))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Account 1's grants by id: (remaining, state).
async fn remaining(app: &TestApp) -> std::collections::BTreeMap<i64, (Decimal, String)> {
    let admin = app.admin_token(Role::Admin);
    let list = app.get_json("/admin/v1/accounts/1/grants", &admin).await;
    (list["data"].as_array().unwrap().iter())
        .map(|g| {
            let left = dec(g["remaining"].as_str().unwrap());
            (
                g["id"].as_i64().unwrap(),
                (left.normalize(), g["state"].as_str().unwrap().into()),
            )
        })
        .collect()
}

/// 10,000 completion tokens (max_tokens says so, so the hold covers them): 0.0240024 CNY.
fn costly() -> Value {
    let mut body = chat(None, "hi", false, json!({"completion_tokens": 10_000}));
    body["max_tokens"] = json!(10_000);
    body
}

#[tokio::test]
async fn grants_burn_by_priority_then_soonest_expiry_and_never_after_expiry() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "cash", json!("1.00")).await.0, 201);
    let in_days = |d: i64| (Utc::now() + Duration::days(d)).to_rfc3339();
    let issued = [
        (
            "paid",
            json!({"amount": "0.03", "kind": "paid", "priority": 10, "reason": "prepaid bundle"}),
        ),
        (
            "soon",
            json!({"amount": "0.03", "expires_at": in_days(1), "reason": "trial"}),
        ),
        (
            "late",
            json!({"amount": "0.03", "expires_at": in_days(30), "reason": "campaign"}),
        ),
        // Burned first of all, were it not expired by then.
        (
            "gone",
            json!({"amount": "1.00", "priority": 0, "reason": "flash offer",
                        "expires_at": (Utc::now() + Duration::seconds(2)).to_rfc3339()}),
        ),
    ];
    let mut ids = Vec::new();
    for (key, body) in issued {
        let (status, grant) = grant(&app, key, body).await;
        assert_eq!(status, 201, "{grant}");
        assert_eq!(grant["state"], "open");
        ids.push(grant["id"].as_i64().unwrap());
    }
    let [paid, soon, late, gone] = ids[..] else {
        unreachable!()
    };
    // Expired: closed by the upkeep at its expiry, its 1.00 released unspent.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let left = remaining(&app).await;
    assert_eq!(left[&gone], (dec("1"), "closed".into()));

    let response = app.post(ROUTE, &costly()).await;
    assert_eq!(response.status(), 200);
    let cost = app.record_of(&response).await.cost;
    assert_eq!(cost, dec("0.0240024"));
    app.state.ledger().flush().await.unwrap();
    let left = remaining(&app).await;
    assert_eq!(
        left[&paid].0,
        dec("0.0059976"),
        "the paid grant (priority 10) first"
    );
    assert_eq!((left[&soon].0, left[&late].0), (dec("0.03"), dec("0.03")));
    for _ in 0..4 {
        assert_eq!(app.post(ROUTE, &costly()).await.status(), 200);
    }
    app.state.ledger().flush().await.unwrap();
    let left = remaining(&app).await;
    // 5 × 0.0240024 = 0.120012: the three grants' 0.09, then 0.030012 of the balance.
    for id in [paid, soon, late] {
        assert_eq!(left[&id].0, Decimal::ZERO, "grant {id}");
    }
    assert_eq!(left[&gone], (dec("1"), "closed".into()), "never burned");
    let figures = helpers::money::assert_invariant(&app, 1).await;
    assert_eq!(
        (figures.charged, figures.granted),
        (dec("0.120012"), dec("0.09"))
    );
    let account = app
        .get_json("/admin/v1/accounts/1", &app.admin_token(Role::Admin))
        .await;
    assert_eq!(account["balance"], "0.969988");
    assert_eq!(account["grants"], "0");

    // The invoice: usage at its prices, each grant applied on a line of its own.
    let month = tollgate::billing::period::Month::containing(Utc::now(), chrono_tz::UTC);
    let path = format!(
        "/admin/v1/invoices/inv_1_{}",
        month.to_string().replace('-', "")
    );
    let invoice = app.get_json(&path, &app.admin_token(Role::Admin)).await;
    assert_eq!(invoice["total"], "0.12");
    let grants: Vec<(i64, &str)> = (invoice["grants"].as_array().unwrap().iter())
        .map(|g| {
            (
                g["grant_id"].as_i64().unwrap(),
                g["amount"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(grants, [(paid, "-0.03"), (soon, "-0.03"), (late, "-0.03")]);
    assert_eq!(invoice["amount_due"], "0.03");
    app.stop().await;
}

#[tokio::test]
async fn a_prepaid_account_with_only_a_grant_spends_it_and_no_more_under_concurrency() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    // Without money, nothing.
    assert_eq!(app.post(ROUTE, &costly()).await.status(), 402);
    let (status, _) = grant(&app, "g", json!({"amount": "0.10", "reason": "free trial"})).await;
    assert_eq!(status, 201);
    let mut served = 0;
    let body = costly();
    for _round in 0..3 {
        let requests = (0..8).map(|_| app.post(ROUTE, &body));
        for response in join_all(requests).await {
            match response.status().as_u16() {
                200 => served += 1,
                402 => {}
                other => panic!("200 or 402, not {other}"),
            }
        }
    }
    // 0.10 holds four requests of 0.0240024 at most, whatever the concurrency.
    assert_eq!(served, 4);
    let figures = helpers::money::assert_invariant(&app, 1).await;
    assert_eq!(figures.charged, dec("0.0960096"));
    assert_eq!(
        figures.granted, figures.charged,
        "the grant paid for everything"
    );
    let left = remaining(&app).await;
    assert_eq!(left.values().next().unwrap().0, dec("0.0039904"));
    assert_eq!(
        figures.balance,
        Decimal::ZERO,
        "the balance never went below 0"
    );
    app.stop().await;
}

#[tokio::test]
async fn grants_are_issued_once_per_key_and_refused_when_malformed() {
    let app = TestApp::spawn().await;
    let body = json!({"amount": "5.00", "kind": "paid", "reason": "annual bundle"});
    let (status, first) = grant(&app, "bundle-1", body.clone()).await;
    assert_eq!(status, 201, "{first}");
    for _ in 0..3 {
        let (status, again) = grant(&app, "bundle-1", body.clone()).await;
        assert_eq!((status, &again["id"]), (200, &first["id"]));
    }
    let other = json!({"amount": "6.00", "kind": "paid", "reason": "annual bundle"});
    assert_eq!(grant(&app, "bundle-1", other).await.0, 409);
    let past = (Utc::now() - Duration::hours(1)).to_rfc3339();
    let bad = [
        (json!({"amount": "0", "reason": "x"}), "amount"),
        (json!({"amount": "1.001", "reason": "x"}), "amount"),
        (
            json!({"amount": "1", "kind": "free", "reason": "x"}),
            "kind",
        ),
        (
            json!({"amount": "1", "priority": 101, "reason": "x"}),
            "priority",
        ),
        (
            json!({"amount": "1", "expires_at": past, "reason": "x"}),
            "expires_at",
        ),
        (json!({"amount": "1", "reason": " "}), "reason"),
    ];
    for (body, param) in bad {
        let (status, error) = grant(&app, "bad", body.clone()).await;
        assert_eq!(
            (status, error["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}"
        );
    }
    let missing_key = (app.client.post(app.url("/admin/v1/accounts/1/grants")))
        .bearer_auth(app.admin_token(Role::Admin))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(missing_key.status(), 400);
    // Only the first counts; the audit log has it once.
    assert_eq!(remaining(&app).await.len(), 1);
    let admin = app.admin_token(Role::Admin);
    let audit = app.get_json("/admin/v1/audit", &admin).await;
    let granted = (audit["data"].as_array().unwrap().iter())
        .filter(|e| e["action"] == "account.grant")
        .count();
    assert_eq!(granted, 1, "{audit}");
    app.stop().await;
}

#[tokio::test]
async fn a_new_account_gets_the_welcome_grant() {
    let app = TestApp::spawn_with(|c| {
        let welcome =
            "amount = \"5.00\"\nexpires_after_days = 90\nreason = \"welcome to tollgate\"";
        c.billing.welcome_grant = Some(toml::from_str(welcome).unwrap());
    })
    .await;
    let admin = app.admin_token(Role::Admin);
    let (status, account) = app
        .admin(
            Method::POST,
            "/admin/v1/accounts",
            &admin,
            Some(json!({"name": "initech", "billing_mode": "prepaid"})),
        )
        .await;
    assert_eq!(status, 201, "{account}");
    let id = account["id"].as_i64().unwrap();
    let path = format!("/admin/v1/accounts/{id}");
    let account = app.get_json(&path, &admin).await;
    assert_eq!(
        (&account["balance"], &account["grants"]),
        (&json!("0"), &json!("5"))
    );
    assert_eq!(account["available"], "5");
    let grants = app.get_json(&format!("{path}/grants"), &admin).await;
    let welcome = &grants["data"][0];
    assert_eq!(
        (&welcome["kind"], &welcome["amount"], &welcome["reason"]),
        (
            &json!("promotional"),
            &json!("5.00"),
            &json!("welcome to tollgate")
        )
    );
    let expires = welcome["expires_at"].as_str().unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(expires).unwrap();
    let days = (expires.with_timezone(&Utc) - Utc::now()).num_days();
    assert!((89..=90).contains(&days), "{days}");
    app.stop().await;
}

/// Three accounts (prepaid, postpaid with a credit limit, postpaid without), each with its
/// own key, under a random mix of requests of random sizes sent a few at a time, top-ups,
/// credit and debit notes and grants of random priorities (some expiring within seconds),
/// all through the admin API while requests run: afterwards, for every account, `balance =
/// top-ups + credits − debits − (Σ record costs − Σ grants applied)`, every grant's
/// remainder its amount less its uses, `held ≥ 0`, and admission's figures the ledger's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_workloads_keep_the_invariant_for_every_account() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    let app = TestApp::spawn().await;
    let admin = app.admin_token(Role::Admin);
    let mut accounts = vec![(1i64, app.key.clone())];
    for (name, billing) in [
        (
            "globex",
            json!({"name": "globex", "billing_mode": "postpaid", "credit_limit": "0.50"}),
        ),
        ("initech", json!({"name": "initech"})),
    ] {
        let (status, account) = app
            .admin(Method::POST, "/admin/v1/accounts", &admin, Some(billing))
            .await;
        assert_eq!(status, 201, "{account}");
        let key = helpers::issue_key(&app.state, name, None).await.secret;
        accounts.push((account["id"].as_i64().unwrap(), key));
    }
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    let mut rng = SmallRng::seed_from_u64(28);
    let mut served = 0;
    for step in 0..30 {
        let (account, _) = accounts[rng.random_range(0..accounts.len())].clone();
        let path = format!("/admin/v1/accounts/{account}");
        let money = |rng: &mut SmallRng| format!("0.{:02}", rng.random_range(1..20));
        // One move of money, made while a few requests of every account run.
        let (what, key, body) = match rng.random_range(0..4) {
            0 => (
                "topups",
                format!("t{step}"),
                json!({"amount": money(&mut rng)}),
            ),
            1 => {
                let kind = ["credit", "debit"][rng.random_range(0..2)];
                let period = Utc::now().format("%Y-%m").to_string();
                let body = json!({"kind": kind, "amount": money(&mut rng), "period": period,
                                  "reason": "random"});
                ("notes", format!("n{step}"), body)
            }
            _ => {
                let mut body = json!({"amount": money(&mut rng),
                                      "priority": rng.random_range(0..100), "reason": "random"});
                if rng.random_bool(0.3) {
                    // A free quota of tokens instead.
                    body = json!({"tokens": rng.random_range(1..30_000), "reason": "random",
                                  "model": "megrez-7b-instruct"});
                }
                if rng.random_bool(0.5) {
                    let expires = Utc::now() + Duration::seconds(rng.random_range(1..4));
                    body["expires_at"] = json!(expires.to_rfc3339());
                }
                ("grants", format!("g{step}"), body)
            }
        };
        let moved = (app.client.post(app.url(&format!("{path}/{what}"))))
            .bearer_auth(&admin)
            .header("idempotency-key", key)
            .json(&body)
            .send();
        let requests: Vec<(String, Value)> = (0..rng.random_range(2..8))
            .map(|_| {
                let key = accounts[rng.random_range(0..accounts.len())].1.clone();
                let tokens = rng.random_range(1..20_000u64);
                let mut body = chat(None, "hi", false, json!({"completion_tokens": tokens}));
                body["max_tokens"] = json!(tokens);
                (key, body)
            })
            .collect();
        let sent = requests.iter().map(|(key, body)| {
            let request = app.client.post(app.url(ROUTE)).bearer_auth(key);
            request.json(body).send()
        });
        let (moved, responses) = tokio::join!(moved, join_all(sent));
        assert_eq!(moved.unwrap().status(), 201, "{what}");
        for response in responses {
            let response = response.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert!([200, 402].contains(&status), "{status} {text}");
            served += usize::from(status == 200);
        }
    }
    assert!(served > 20, "{served} requests served");
    // Every grant that was to expire has.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let mut granted = Decimal::ZERO;
    for (account, _) in &accounts {
        let figures = helpers::money::assert_invariant(&app, *account).await;
        granted += figures.granted;
    }
    assert!(granted > Decimal::ZERO, "grants paid for something");
    app.stop().await;
}

/// A free quota of 25,000 tokens of megrez-7b-instruct: two requests of 10,002 tokens are
/// paid whole, the third for its 4,996 tokens left (that share of its cost), and nothing
/// of another model; the grant has no token left and paid for exactly 25,000.
#[tokio::test]
async fn a_token_grant_pays_for_exactly_its_tokens_of_its_model() {
    let app = TestApp::spawn().await;
    let body = json!({"tokens": 25_000, "model": "megrez-7b-instruct",
                      "expires_at": (Utc::now() + Duration::days(90)).to_rfc3339(),
                      "reason": "free quota for new accounts"});
    let (status, issued) = grant(&app, "quota", body).await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(
        (&issued["amount"], &issued["remaining_tokens"]),
        (&json!("0"), &json!(25_000))
    );
    let mut costs = Vec::new();
    for _ in 0..3 {
        let response = app.post(ROUTE, &costly()).await;
        assert_eq!(response.status(), 200);
        costs.push(app.record_of(&response).await.cost);
    }
    let other = app
        .post("/maas/internlm3-latest/ascend/chat/completions", &costly())
        .await;
    assert_eq!(other.status(), 200);
    let figures = helpers::money::assert_invariant(&app, 1).await;
    let share = (costs[2] * Decimal::from(4_996) / Decimal::from(10_002))
        .round_dp_with_strategy(10, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    assert_eq!(figures.granted, costs[0] + costs[1] + share);
    let id = issued["id"].as_i64().unwrap();
    let (_, tokens) = tollgate::store::grants::uses_of(app.state.db(), id)
        .await
        .unwrap();
    assert_eq!(tokens, 25_000);
    let admin = app.admin_token(Role::Admin);
    let list = app.get_json("/admin/v1/accounts/1/grants", &admin).await;
    assert_eq!(list["data"][0]["remaining_tokens"], 0);
    // Neither both nor half of one.
    let both = json!({"amount": "1.00", "tokens": 10, "model": "m", "reason": "x"});
    let (status, error) = grant(&app, "both", both).await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("tokens"))
    );
    let half = json!({"tokens": 10, "reason": "x"});
    let (status, error) = grant(&app, "half", half).await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("model"))
    );
    app.stop().await;
}
