//! The overview: this month's spend against last month's, requests and errors, a daily
//! chart, spend by model × chip and, for a prepaid account, its money and runway.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{Datelike, Days, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::{render, visible_account};
use crate::console::chart;
use crate::console::frame::{Frame, count, money, percent, time};
use crate::console::web::{Failure, Signed};
use crate::domain::{accounts, overview};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    frame: Frame,
    heading: String,
    month: String,
    cards: Vec<(&'static str, String)>,
    chart: String,
    pairs: Vec<[String; 4]>,
    /// A prepaid account's newest top-ups: when, amount, note.
    topups: Vec<[String; 3]>,
}

#[derive(Deserialize)]
pub struct OverviewQuery {
    account: Option<i64>,
}

pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<OverviewQuery>,
) -> Result<Response, Failure> {
    let t = signed.prefs.t();
    let account = visible_account(&state, &signed, q.account).await?;
    let billing_zone = state.config().billing.zone();
    let zone = account
        .as_ref()
        .map_or(billing_zone, |a| accounts::zone_of(a, billing_zone));
    let heading = match &account {
        Some(a) if !a.display_name.is_empty() => format!("{} ({})", a.display_name, a.name),
        Some(a) => a.name.clone(),
        None => t.get("overview.all_accounts").to_owned(),
    };
    let db = state.usage_db().await?;
    let prices = state.prices();
    let view = overview::build(db, state.spending(), &prices, zone, account, Utc::now()).await?;
    let requests = view.requests();
    let mut cards = vec![
        ("overview.this_month", money(view.this_month.total_exact)),
        ("overview.last_month", money(view.last_month_total())),
        ("overview.requests", count(requests)),
        ("overview.error_rate", percent(view.failed(), requests)),
    ];
    if let Some(funds) = &view.funds {
        cards.push(("overview.balance", money(funds.view.balance)));
        cards.push(("overview.held", money(funds.view.held)));
        cards.push((
            "overview.available",
            money(funds.view.available.unwrap_or_default()),
        ));
        let runway = match funds.runway_days {
            None => "—".to_owned(),
            Some(d) if d > Decimal::from(365) => t.get("overview.over_a_year").to_owned(),
            Some(d) => t.get("overview.days").replace("{n}", &d.to_string()),
        };
        cards.push(("overview.runway", runway));
    }
    let first = NaiveDate::from_ymd_opt(view.month.year, view.month.month, 1)
        .ok_or_else(Failure::not_found)?;
    let mut days = Vec::new();
    let mut day = first;
    while day.month() == first.month() {
        let label = day.format("%Y-%m-%d").to_string();
        let spent = view
            .this_month
            .series
            .get(&label)
            .map(|pairs| pairs.values().copied().sum::<Decimal>())
            .unwrap_or_default();
        days.push((label, spent));
        day = day + Days::new(1);
    }
    let mut pairs: BTreeMap<(String, String), (i64, Decimal)> = BTreeMap::new();
    for row in &view.this_month.rows {
        let key = (row.group[0].clone(), row.group[1].clone());
        let entry = pairs.entry(key).or_default();
        entry.0 += row.requests;
        entry.1 += row.cost_exact;
    }
    let topups = view.funds.as_ref().map_or(Vec::new(), |f| {
        f.topups
            .iter()
            .map(|t| [time(t.created_at, zone), money(t.amount), t.note.clone()])
            .collect()
    });
    let page = OverviewPage {
        topups,
        chart: chart::bars(&days, t.get("overview.chart")),
        frame: Frame::signed(&signed, "nav.overview"),
        heading,
        month: format!("{:04}-{:02}", view.month.year, view.month.month),
        cards,
        pairs: pairs
            .into_iter()
            .map(|((model, chip), (n, cost))| [model, chip, count(n), money(cost)])
            .collect(),
    };
    render(&page)
}
