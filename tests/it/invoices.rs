//! Finance fetches exact monthly invoices, as JSON or CSV; a finalized invoice never changes.

use crate::helpers;

use chrono::{Duration, Utc};
use helpers::{TestApp, chat, dec};
use reqwest::Method;
use serde_json::{Value, json};
use tollgate::admin::Role;
use tollgate::billing::period::Month;

async fn get_text(app: &TestApp, path: &str, token: &str) -> (u16, String) {
    let (status, _, body) = app.get_text(path, token).await;
    (status, body)
}

/// Moves every record of the account into `month` (as if it happened then).
async fn move_records_to(app: &TestApp, month: Month) {
    app.state.ledger().flush().await.unwrap();
    let zone = app.state.config().billing.zone();
    let (start, _) = month.bounds(zone);
    let at = (start + Duration::days(3)).timestamp_millis();
    // Records are immutable by design; the test lifts the guard to age its data.
    helpers::ledger::move_all_records(app.state.db(), at, zone).await;
}

#[tokio::test]
async fn the_draft_invoice_shows_exact_lines_and_a_total_of_rounded_lines() {
    let app = TestApp::spawn().await;
    let knobs = json!({"prompt_tokens": 1200, "completion_tokens": 300, "cached_tokens": 200});
    let mut record_sum = rust_decimal::Decimal::ZERO;
    for chip in ["nvidia", "chip3", "nvidia"] {
        let response = app
            .post(
                &format!("/maas/megrez-7b-instruct/{chip}/chat/completions"),
                &chat(None, "hi", false, knobs.clone()),
            )
            .await;
        record_sum += app.record_of(&response).await.cost;
    }
    let body = json!({"model": "bge-reranker-v2-m3", "query": "q", "documents": ["a"], "x_sim": {"prompt_tokens": 57}});
    record_sum += app
        .record_of(&app.post("/v1/rerank", &body).await)
        .await
        .cost;

    let viewer = app.admin_token(Role::Viewer);
    let period = Month::containing(Utc::now(), app.state.config().billing.zone()).to_string();
    let (status, text) = get_text(
        &app,
        &format!("/admin/v1/invoices?account=acme&period={period}"),
        &viewer,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let invoice: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(invoice["status"], "draft");
    assert_eq!(
        dec(invoice["total_exact"].as_str().unwrap()),
        record_sum.normalize()
    );
    let lines = invoice["lines"].as_array().unwrap();
    let nvidia_input = lines
        .iter()
        .find(|l| {
            l["model"] == "megrez-7b-instruct"
                && l["chip"] == "nvidia"
                && l["unit"] == "input_tokens"
        })
        .unwrap();
    assert_eq!(
        nvidia_input["quantity"], 2000,
        "2 requests x (1200 - 200 cached)"
    );
    assert_eq!(
        dec(nvidia_input["unit_price"].as_str().unwrap()),
        dec("0.0012")
    );
    assert_eq!(
        dec(nvidia_input["amount_exact"].as_str().unwrap()),
        dec("0.0024")
    );
    assert_eq!(nvidia_input["amount"], "0.00");
    assert!(
        lines
            .iter()
            .any(|l| l["unit"] == "requests" && l["quantity"] == 1),
        "rerank's per-request line"
    );
    let rounded_sum: rust_decimal::Decimal = lines
        .iter()
        .map(|l| dec(l["amount"].as_str().unwrap()))
        .sum();
    assert_eq!(dec(invoice["total"].as_str().unwrap()), rounded_sum);

    let id = invoice["id"].as_str().unwrap();
    let (_, csv) = get_text(
        &app,
        &format!("/admin/v1/invoices/{id}?format=csv"),
        &viewer,
    )
    .await;
    assert!(csv.starts_with("invoice,account,period,model,chip,deployment,prompt_tier,unit"));
    assert_eq!(
        csv.lines().count(),
        lines.len() + 3,
        "header, lines, total, amount due"
    );
    assert!(csv.ends_with(&format!(
        ",AMOUNT_DUE,,,,,,,,,,{}\n",
        invoice["total"].as_str().unwrap()
    )));
    let by_accept = app
        .client
        .get(app.url(&format!("/admin/v1/invoices/{id}")))
        .bearer_auth(&viewer)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_accept.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
}

#[tokio::test]
async fn a_finalized_invoice_is_the_same_bytes_forever() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            &chat(
                None,
                "hi",
                false,
                json!({"prompt_tokens": 5000, "completion_tokens": 2000}),
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let september = Month::parse("2026-09").unwrap();
    move_records_to(&app, september).await;
    let admin = app.admin_token(Role::Admin);
    let id = format!("inv_1_{}", "202609");

    let (status, current) = app
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/invoices/inv_1_{}/finalize",
                Month::containing(Utc::now(), app.state.config().billing.zone())
                    .to_string()
                    .replace('-', "")
            ),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (status, current["error"]["code"].as_str()),
        (409, Some("conflict")),
        "an open period cannot be finalized"
    );

    let (status, finalized) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/invoices/{id}/finalize"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{finalized}");
    assert_eq!(finalized["status"], "final");
    assert_eq!(
        finalized["total_exact"], "0.0108",
        "(5000 x 0.0012 + 2000 x 0.0024) / 1000"
    );
    assert_eq!(finalized["total"], "0.01");
    let (_, first) = get_text(&app, &format!("/admin/v1/invoices/{id}"), &admin).await;

    // More usage in September and a new price: the final invoice does not move.
    let later = app
        .post(
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            &chat(None, "hi", false, json!({})),
        )
        .await;
    assert_eq!(later.status(), 200);
    move_records_to(&app, september).await;
    let new_price = tollgate::billing::PriceEntry {
        model: "megrez-7b-instruct".into(),
        chip: "nvidia".into(),
        effective_from: chrono::DateTime::parse_from_rfc3339("2026-09-01T00:00:00Z")
            .unwrap()
            .into(),
        input_per_1k: dec("9"),
        cached_input_per_1k: None,
        cache_write_per_1k: None,
        output_per_1k: dec("9"),
        per_request: dec("0"),
        per_image: dec("0"),
        per_task: dec("0"),
        per_second: dec("0"),
        per_upload: dec("0"),
        ..Default::default()
    };
    assert_eq!(
        tollgate::store::prices::sync(app.state.db(), &[new_price])
            .await
            .unwrap(),
        1
    );
    let (_, again) = get_text(&app, &format!("/admin/v1/invoices/{id}"), &admin).await;
    let (_, by_period) = get_text(
        &app,
        "/admin/v1/invoices?account=acme&period=2026-09",
        &admin,
    )
    .await;
    let (_, refinalized) = get_text(&app, &format!("/admin/v1/invoices/{id}"), &admin).await;
    assert_eq!(first, again);
    assert_eq!(first, by_period);
    assert_eq!(first, refinalized);
    let (status, _) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/invoices/{id}/finalize"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "finalizing again returns the same invoice");

    let sql = "UPDATE invoices SET document = '{}'";
    let tamper = helpers::ledger::execute(app.state.db(), sql, &[]).await;
    assert!(
        tamper.is_err(),
        "the database refuses to change a final invoice"
    );
}

#[tokio::test]
async fn invoice_requests_are_checked() {
    let app = TestApp::spawn().await;
    let viewer = app.admin_token(Role::Viewer);
    for (path, status) in [
        ("/admin/v1/invoices?account=acme&period=2026-13", 400),
        ("/admin/v1/invoices?account=nobody&period=2026-11", 404),
        ("/admin/v1/invoices?account=acme", 400),
        ("/admin/v1/invoices/inv_9_202611", 404),
        ("/admin/v1/invoices/bogus", 404),
        ("/admin/v1/invoices/inv_1_202611?format=pdf", 400),
    ] {
        let (got, body) = get_text(&app, path, &viewer).await;
        assert_eq!(got, status, "{path}: {body}");
    }
    let (status, _) = app
        .admin(
            Method::POST,
            "/admin/v1/invoices/inv_1_202609/finalize",
            &viewer,
            None,
        )
        .await;
    assert_eq!(status, 403, "viewers cannot finalize");
}
