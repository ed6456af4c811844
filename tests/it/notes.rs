//! Credit and debit notes on the ledger under test: a correction after an invoice is final
//! lowers (or raises) the next invoice and the balance at once, never changing a record or
//! the final invoice; notes are issued once per idempotency key, refused when malformed,
//! and admission counts them before the next request.

use chrono::{Duration, Utc};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::admin::Role;
use tollgate::billing::period::Month;

use crate::helpers::{self, TestApp, chat, dec};
use crate::spending::{set_billing, top_up};

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

/// Issues a note through the admin API with `key` as its Idempotency-Key.
async fn note(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let admin = app.admin_token(Role::Admin);
    let response = (app.client.post(app.url("/admin/v1/accounts/1/notes")))
        .bearer_auth(admin)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn this_month(app: &TestApp) -> Month {
    Month::containing(Utc::now(), app.state.config().billing.zone())
}

#[tokio::test]
async fn a_credit_note_lowers_the_next_invoice_and_leaves_records_and_the_final_invoice() {
    let app = TestApp::spawn().await;
    let knobs = json!({"prompt_tokens": 5000, "completion_tokens": 2000});
    let response = app.post(ROUTE, &chat(None, "hi", false, knobs)).await;
    assert_eq!(response.status(), 200);
    // The request happened in September, whose invoice is final.
    app.state.ledger().flush().await.unwrap();
    let zone = app.state.config().billing.zone();
    let september = Month::parse("2026-09").unwrap();
    let at = (september.bounds(zone).0 + Duration::days(3)).timestamp_millis();
    helpers::ledger::move_all_records(app.state.db(), at, zone).await;
    let records = helpers::ledger::request_ids(app.state.db()).await;
    let record = app.record(&records[0]).await;
    let admin = app.admin_token(Role::Admin);
    let (status, final_) = app
        .admin(
            Method::POST,
            "/admin/v1/invoices/inv_1_202609/finalize",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{final_}");
    let (_, _, final_text) = app
        .get_text("/admin/v1/invoices/inv_1_202609", &admin)
        .await;
    let before = helpers::money::assert_invariant(&app, 1).await;

    // A refund for September, issued now: once, whatever the retries.
    let refund = json!({"kind": "credit", "amount": "0.01", "period": "2026-09",
                        "reason": "goodwill: slow answers on 9 September"});
    let (status, issued) = note(&app, "refund-1", refund.clone()).await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(
        (issued["kind"].as_str(), issued["amount"].as_str()),
        (Some("credit_note"), Some("0.01"))
    );
    for _ in 0..3 {
        let (status, again) = note(&app, "refund-1", refund.clone()).await;
        assert_eq!((status, again["id"].clone()), (200, issued["id"].clone()));
    }
    let other = json!({"kind": "credit", "amount": "0.02", "period": "2026-09", "reason": "x"});
    assert_eq!(note(&app, "refund-1", other).await.0, 409);
    // A charge missed, as a debit note.
    let missed = json!({"kind": "debit", "amount": "0.25", "period": "2026-09",
                        "reason": "reserved hours not metered"});
    assert_eq!(note(&app, "missed-1", missed).await.0, 201);

    // Records and the final invoice are as they were; the balance moved by the notes.
    assert_eq!(app.record(&records[0]).await, record);
    let (_, _, final_again) = app
        .get_text("/admin/v1/invoices/inv_1_202609", &admin)
        .await;
    assert_eq!(final_again, final_text, "a final invoice never changes");
    let after = helpers::money::assert_invariant(&app, 1).await;
    assert_eq!(after.balance, before.balance + dec("0.01") - dec("0.25"));
    assert_eq!(after.charged, before.charged);

    // This month's invoice lists both and owes their sum (no usage this month).
    let month = this_month(&app);
    let id = format!("inv_1_{}", month.to_string().replace('-', ""));
    let invoice = app
        .get_json(&format!("/admin/v1/invoices/{id}"), &admin)
        .await;
    let notes: Vec<(&str, &str)> = (invoice["adjustments"].as_array().unwrap().iter())
        .map(|a| (a["kind"].as_str().unwrap(), a["amount"].as_str().unwrap()))
        .collect();
    assert_eq!(notes, [("credit_note", "-0.01"), ("debit_note", "0.25")]);
    assert_eq!(invoice["total"], "0.00");
    assert_eq!(dec(invoice["amount_due"].as_str().unwrap()), dec("0.24"));
    let (_, _, csv) = app
        .get_text(&format!("/admin/v1/invoices/{id}?format=csv"), &admin)
        .await;
    assert!(
        csv.contains(",CREDIT_NOTE,") && csv.ends_with(",AMOUNT_DUE,,,,,,,,,,0.24\n"),
        "{csv}"
    );

    // Each is in the audit log, with who issued it.
    let log = app.get_json("/admin/v1/audit?account=acme", &admin).await;
    let actions: Vec<&str> = (log["data"].as_array().unwrap().iter())
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"account.credit_note") && actions.contains(&"account.debit_note"),
        "{log}"
    );
}

#[tokio::test]
async fn malformed_notes_are_refused_naming_their_field() {
    let app = TestApp::spawn().await;
    let month = this_month(&app).to_string();
    let next = this_month(&app).next().to_string();
    for (body, field) in [
        (
            json!({"kind": "refund", "amount": "1", "period": month, "reason": "r"}),
            "kind",
        ),
        (
            json!({"kind": "credit", "amount": "0", "period": month, "reason": "r"}),
            "amount",
        ),
        (
            json!({"kind": "credit", "amount": "0.001", "period": month, "reason": "r"}),
            "amount",
        ),
        (
            json!({"kind": "credit", "amount": "1", "period": "2026-13", "reason": "r"}),
            "period",
        ),
        (
            json!({"kind": "credit", "amount": "1", "period": next, "reason": "r"}),
            "period",
        ),
        (
            json!({"kind": "credit", "amount": "1", "period": month, "reason": " "}),
            "reason",
        ),
    ] {
        let (status, answer) = note(&app, "k", body.clone()).await;
        assert_eq!(
            (status, answer["error"]["param"].as_str()),
            (400, Some(field)),
            "{body}"
        );
    }
    helpers::money::assert_invariant(&app, 1).await;
    assert_eq!(
        tollgate::store::accounts::topped_up(app.state.db(), 1)
            .await
            .unwrap(),
        Decimal::ZERO,
        "nothing was recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_counts_a_note_before_the_next_request() {
    let app = TestApp::spawn().await;
    set_billing(&app, json!({"billing_mode": "prepaid"})).await;
    assert_eq!(top_up(&app, "t-1", json!("0.05")).await.0, 201);
    let ask = || {
        let mut body = chat(
            None,
            "hi",
            false,
            json!({"prompt_tokens": 10, "completion_tokens": 10}),
        );
        body["max_tokens"] = json!(10_000);
        body
    };
    // A hold of about 0.024 CNY: admitted on 0.05.
    assert_eq!(app.post(ROUTE, &ask()).await.status(), 200);
    let period = this_month(&app).to_string();
    let debit = json!({"kind": "debit", "amount": "0.05", "period": period, "reason": "r"});
    assert_eq!(note(&app, "d-1", debit).await.0, 201);
    assert_eq!(
        app.post(ROUTE, &ask()).await.status(),
        402,
        "the debit is counted"
    );
    let credit = json!({"kind": "credit", "amount": "1", "period": period, "reason": "r"});
    // Credits issued while requests run: each counted once.
    let body = ask();
    let requests = futures_util::future::join_all((0..10).map(|_| app.post(ROUTE, &body)));
    let credited = note(&app, "c-1", credit);
    let (answers, (status, _)) = tokio::join!(requests, credited);
    assert_eq!(status, 201);
    assert!(
        answers
            .iter()
            .all(|r| [200, 402].contains(&r.status().as_u16()))
    );
    assert_eq!(
        app.post(ROUTE, &ask()).await.status(),
        200,
        "the credit is counted"
    );
    helpers::money::assert_invariant(&app, 1).await;
}
