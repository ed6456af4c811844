//! Finance reads cost reports grouped any way, as JSON, CSV or one self-contained HTML file.

use crate::helpers;

use helpers::{TestApp, chat, dec};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::admin::Role;

async fn get(app: &TestApp, path: &str) -> (u16, String, String) {
    app.get_text(path, &app.admin_token(Role::Viewer)).await
}

#[tokio::test]
async fn a_report_groups_usage_and_its_total_is_the_sum_of_the_records() {
    let app = TestApp::spawn().await;
    let mut records = Decimal::ZERO;
    for (chip, n) in [("nvidia", 2), ("chip3", 3)] {
        for _ in 0..n {
            let body = chat(
                None,
                "hi",
                false,
                json!({"prompt_tokens": 777, "completion_tokens": 333}),
            );
            let response = app
                .post(
                    &format!("/maas/megrez-7b-instruct/{chip}/chat/completions"),
                    &body,
                )
                .await;
            records += app.record_of(&response).await.cost;
        }
    }
    let (status, content_type, text) =
        get(&app, "/admin/v1/reports/cost?group_by=model,chip,day").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{text}"
    );
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        dec(report["total_exact"].as_str().unwrap()),
        records.normalize()
    );
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let chip3 = rows.iter().find(|r| r["group"][1] == "chip3").unwrap();
    assert_eq!(
        (chip3["requests"].as_i64(), chip3["prompt_tokens"].as_i64()),
        (Some(3), Some(3 * 777))
    );

    let (_, content_type, csv) = get(
        &app,
        "/admin/v1/reports/cost?group_by=account,key&format=csv",
    )
    .await;
    assert_eq!(content_type, "text/csv; charset=utf-8");
    assert!(csv.starts_with("account,key,requests,"));
    assert!(csv.lines().nth(1).unwrap().starts_with("acme,tg-"), "{csv}");
    assert_eq!(
        csv.lines().last().unwrap().split(',').count(),
        csv.lines().next().unwrap().split(',').count()
    );

    let (_, content_type, html) = get(
        &app,
        "/admin/v1/reports/cost?group_by=chip,hour&format=html",
    )
    .await;
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("<svg") && html.contains("<polyline")
    );
    assert!(html.contains("megrez-7b-instruct × chip3"));
    assert!(
        !html.contains("<script") && !html.contains("http://") && !html.contains("https://"),
        "self-contained"
    );
}

#[tokio::test]
async fn report_requests_are_checked() {
    let app = TestApp::spawn().await;
    for path in [
        "/admin/v1/reports/cost?group_by=colour",
        "/admin/v1/reports/cost?group_by=day,hour",
        "/admin/v1/reports/cost?from=2026-11-05&to=2026-11-01",
        "/admin/v1/reports/cost?from=yesterday",
        "/admin/v1/reports/cost?format=pdf",
    ] {
        let (status, _, body) = get(&app, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("invalid_request_error"));
    }
    let (status, _, body) = get(
        &app,
        "/admin/v1/reports/cost?from=2026-01-01&to=2026-02-01T00:00:00Z",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["total"],
        "0.00"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_sums_this_month_and_last_as_reports_do() {
    use chrono::Utc;
    use tollgate::billing::period::Month;
    use tollgate::billing::report::Dimension;
    use tollgate::store::{self, rollups::Scope};
    let app = TestApp::spawn().await;
    let db = app.state.db().clone();
    let zone = app.state.config().billing.zone();
    let account = store::accounts::find_by_name(&db, "acme")
        .await
        .unwrap()
        .unwrap();
    let key = store::keys::list(&db, Some(account.id)).await.unwrap()[0].id;
    let version = helpers::simple_price(&db).await;
    let now = Utc::now();
    let this = Month::containing(now, zone);
    let (last_start, this_start) = this.previous().bounds(zone);
    // Every 7 hours from the middle of last month to now, and one each side of the edge.
    let from = last_start + chrono::TimeDelta::days(10);
    let n = (now - from).num_hours().max(1) / 7;
    let mut at: Vec<_> = (0..n)
        .map(|i| from + chrono::TimeDelta::hours(7 * i))
        .collect();
    at.extend([this_start - chrono::TimeDelta::milliseconds(1), this_start]);
    let records: Vec<_> = at
        .iter()
        .filter(|t| **t < now)
        .enumerate()
        .map(|(i, t)| {
            helpers::simple_record(
                format!("req_overview_{i:05}"),
                (account.id, key),
                version.id,
                *t,
            )
        })
        .collect();
    let sink = store::Sink::open(&app.state.config().database)
        .await
        .unwrap();
    sink.insert(&records.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let prices = tollgate::billing::PriceBook::new(store::prices::all(&db).await.unwrap());
    let view = tollgate::domain::overview::build(
        &db,
        app.state.spending(),
        &prices,
        zone,
        Some(account.clone()),
        now,
    )
    .await
    .unwrap();
    let sum = |(from, to): (chrono::DateTime<Utc>, chrono::DateTime<Utc>)| {
        records
            .iter()
            .filter(|r| r.started_at >= from && r.started_at < to)
            .map(|r| r.cost)
            .sum::<Decimal>()
            .normalize()
    };
    assert_eq!(view.last_month_total(), sum((last_start, this_start)));
    assert_eq!(
        view.this_month.total_exact,
        sum((this_start, this.next().bounds(zone).0))
    );
    let report = tollgate::domain::reports::build_between(
        &db,
        &prices,
        zone,
        Scope::Account(account.id),
        (last_start, this_start),
        vec![Dimension::Model],
    )
    .await
    .unwrap();
    assert_eq!(view.last_month_total(), report.total_exact);
    assert!(view.last_month_total() > Decimal::ZERO);
}
