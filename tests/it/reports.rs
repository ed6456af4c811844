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
