//! The usage explorer: filters (period, key, model, chip, status, deployment, endpoint)
//! kept in the
//! URL; totals and a chart by day or hour, grouped by model, chip, model × chip or key,
//! from the rollups; the records themselves a keyset page at a time; exactly these
//! records as CSV, streamed; a request's page with its timings, usage source and how its
//! cost comes from its counts and the price version it names. Auto-refresh is a link (a
//! `<meta http-equiv="refresh">`, no script).

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Days, NaiveDate, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{render, visible_account};
use crate::billing::period::day_start;
use crate::billing::record::AttemptOutcome;
use crate::billing::report::Dimension;
use crate::console::chart;
use crate::console::frame::{Frame, count, exact, money, time};
use crate::console::web::{Failure, Signed};
use crate::domain::{accounts, keys, reports, usage, usage_export};
use crate::error::Error;
use crate::state::AppState;
use crate::store::listing::UsageFilter;
use crate::store::rollups::Scope;
use crate::store::usage::StoredRecord;

/// Records on one page of the list.
const PAGE: i64 = 50;

/// The explorer's filters, as the URL carries them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Filters {
    /// First day, `2026-12-01` (the account's time zone); default: the 1st of this month.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    from: String,
    /// Last day, inclusive; default: today.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    to: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    model: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    chip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    deployment: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    endpoint: String,
    /// `day` or `hour`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    every: String,
    /// `model`, `chip`, `pair` or `key`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    cursor: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    refresh: String,
}

impl Filters {
    fn query(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }

    fn with(&self, change: impl FnOnce(&mut Filters)) -> String {
        let mut next = self.clone();
        change(&mut next);
        next.query()
    }
}

fn some(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn day(text: &str, param: &'static str) -> Result<Option<NaiveDate>, Error> {
    match text.trim() {
        "" => Ok(None),
        text => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(Some)
            .map_err(|_| Error::invalid(format!("{param} must be a day like 2026-12-01"), param)),
    }
}

/// What the filters ask for, checked against who asks.
struct Asked {
    zone: Tz,
    account_id: Option<i64>,
    key: Option<crate::store::keys::KeyRow>,
    range: (DateTime<Utc>, DateTime<Utc>),
    days: (NaiveDate, NaiveDate),
    filter: UsageFilter,
}

async fn asked(state: &AppState, signed: &Signed, f: &Filters) -> Result<Asked, Failure> {
    let account = visible_account(state, signed, f.account).await?;
    let billing_zone = state.config().billing.zone();
    let zone = account
        .as_ref()
        .map_or(billing_zone, |a| accounts::zone_of(a, billing_zone));
    let today = Utc::now().with_timezone(&zone).date_naive();
    let first =
        day(&f.from, "from")?.unwrap_or(chrono::Datelike::with_day(&today, 1).unwrap_or(today));
    let last = day(&f.to, "to")?.unwrap_or(today);
    if last < first || (last - first).num_days() > 366 {
        return Err(
            Error::invalid("'to' is on or after 'from', at most a year later", "to").into(),
        );
    }
    let range = (day_start(first, zone), day_start(last + Days::new(1), zone));
    let key = match some(&f.key) {
        None => None,
        Some(id) => {
            let id = id.parse().map_err(|_| Failure::not_found())?;
            let row = keys::get(state.db(), id).await?;
            if !signed.session.person.sees(row.account_id) {
                return Err(Failure::not_found());
            }
            Some(row)
        }
    };
    let before = match some(&f.cursor) {
        Some(cursor) => Some(usage::parse_cursor(&cursor)?),
        None => None,
    };
    let account_id = account.map(|a| a.id);
    let filter = UsageFilter {
        account_id,
        key_id: key.as_ref().map(|k| k.id),
        model: some(&f.model),
        chip: some(&f.chip),
        status: some(&f.status),
        deployment: some(&f.deployment),
        endpoint: some(&f.endpoint),
        from_ms: Some(crate::store::to_ms(range.0)),
        to_ms: Some(crate::store::to_ms(range.1)),
        before,
    };
    Ok(Asked {
        zone,
        account_id,
        key,
        range,
        days: (first, last),
        filter,
    })
}

struct RecordLine {
    request_id: String,
    started: String,
    model: String,
    chip: String,
    endpoint: String,
    status: String,
    tokens: String,
    source: String,
    cost: String,
}

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage {
    frame: Frame,
    f: Filters,
    from: String,
    to: String,
    refresh: Option<u32>,
    refresh_link: String,
    csv_link: String,
    total: String,
    requests: String,
    chart: String,
    groups_heading: &'static str,
    groups: Vec<(String, String, String)>,
    records: Vec<RecordLine>,
    next: Option<String>,
    totals_note: bool,
    /// An operator looking at every account (who may group by account).
    every_account: bool,
}

pub async fn explorer(
    State(state): State<AppState>,
    signed: Signed,
    Query(f): Query<Filters>,
) -> Result<Response, Failure> {
    let t = signed.prefs.t();
    let asked = asked(&state, &signed, &f).await?;
    let hourly = f.every == "hour";
    let by: Vec<Dimension> = match f.by.as_str() {
        "model" => vec![Dimension::Model],
        "chip" => vec![Dimension::Chip],
        "deployment" => vec![Dimension::Deployment],
        "key" => vec![Dimension::Key],
        "account" if asked.account_id.is_none() => vec![Dimension::Account],
        _ => vec![Dimension::Model, Dimension::Chip],
    };
    let scope = match (&asked.key, asked.account_id) {
        (Some(key), _) => Scope::Lineage(key.lineage_id),
        (None, Some(id)) => Scope::Account(id),
        (None, None) => Scope::All,
    };
    let db = state.usage_db().await?;
    let prices = state.prices();
    let (model, chip) = (some(&f.model), some(&f.chip));
    let keep = move |s: &crate::billing::Totals| {
        model.as_ref().is_none_or(|m| *m == s.model) && chip.as_ref().is_none_or(|c| *c == s.chip)
    };
    let mut group_by = by.clone();
    group_by.push(if hourly {
        Dimension::Hour
    } else {
        Dimension::Day
    });
    let report =
        reports::build_filtered(db, &prices, asked.zone, scope, asked.range, group_by, &keep)
            .await?;
    // The chart: every day (or hour) of the period, empty ones too.
    let mut points: BTreeMap<String, Decimal> = BTreeMap::new();
    if hourly {
        let mut at = asked.range.0;
        while at < asked.range.1 && points.len() < 24 * 31 {
            let label = at
                .with_timezone(&asked.zone)
                .format("%Y-%m-%d %H:00")
                .to_string();
            points.insert(label, Decimal::ZERO);
            at += chrono::TimeDelta::hours(1);
        }
    } else {
        let mut d = asked.days.0;
        while d <= asked.days.1 {
            points.insert(d.format("%Y-%m-%d").to_string(), Decimal::ZERO);
            d = d + Days::new(1);
        }
    }
    for (bucket, pairs) in &report.series {
        *points.entry(bucket.clone()).or_default() += pairs.values().copied().sum::<Decimal>();
    }
    let mut groups: BTreeMap<String, (i64, Decimal)> = BTreeMap::new();
    for row in &report.rows {
        let name = row.group[..by.len()].join(" × ");
        let entry = groups.entry(name).or_default();
        entry.0 += row.requests;
        entry.1 += row.cost_exact;
    }
    let requests: i64 = report.rows.iter().map(|r| r.requests).sum();
    let (records, next) = usage::page(db, &asked.filter, PAGE).await?;
    let records = records.iter().map(|r| record_line(r, asked.zone)).collect();
    let refresh = (f.refresh == "10").then_some(10);
    let page = UsagePage {
        frame: Frame::signed(&signed, "nav.usage"),
        from: asked.days.0.to_string(),
        to: asked.days.1.to_string(),
        refresh,
        refresh_link: f.with(|n| {
            n.refresh = if refresh.is_some() {
                String::new()
            } else {
                "10".into()
            };
            n.cursor.clear();
        }),
        csv_link: f.with(|n| {
            n.cursor.clear();
            n.refresh.clear();
        }),
        total: money(report.total_exact),
        requests: count(requests),
        chart: chart::bars(
            &points.into_iter().collect::<Vec<_>>(),
            t.get(if hourly {
                "usage.chart_hour"
            } else {
                "usage.chart_day"
            }),
        ),
        groups_heading: match f.by.as_str() {
            "model" => "model",
            "chip" => "chip",
            "key" => "key.prefix",
            "account" if asked.account_id.is_none() => "account",
            _ => "usage.pair",
        },
        every_account: asked.account_id.is_none(),
        groups: groups
            .into_iter()
            .map(|(name, (n, cost))| (name, count(n), money(cost)))
            .collect(),
        records,
        next: next.map(|cursor| f.with(|n| n.cursor = cursor)),
        totals_note: [&f.status, &f.deployment, &f.endpoint]
            .iter()
            .any(|v| some(v).is_some()),
        f,
    };
    render(&page)
}

fn record_line(r: &StoredRecord, zone: Tz) -> RecordLine {
    RecordLine {
        request_id: r.request_id.clone(),
        started: time(crate::store::from_ms(r.started_at), zone),
        model: r.model.clone(),
        chip: r.chip.clone(),
        endpoint: r.endpoint.clone(),
        status: r.status.clone(),
        tokens: format!(
            "{} / {}",
            count(r.prompt_tokens),
            count(r.completion_tokens)
        ),
        source: r.usage_source.clone(),
        cost: money(r.cost),
    }
}

/// Exactly the records the explorer lists for these filters (every page), as CSV, in the
/// columns of `tollgate usage export`, streamed a page at a time.
pub async fn export_csv(
    State(state): State<AppState>,
    signed: Signed,
    Query(f): Query<Filters>,
) -> Result<Response, Failure> {
    let asked = asked(&state, &signed, &f).await?;
    let db = state.usage_db().await?.clone();
    let names: BTreeMap<i64, String> = accounts::list(&db)
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    let header = format!("{}\n", usage_export::CSV_HEADER);
    let first = futures_util::stream::once(async move { Ok::<_, Error>(header) });
    let pages = futures_util::stream::unfold(Some(asked.filter), move |filter| {
        let (db, names) = (db.clone(), names.clone());
        async move {
            let mut filter = filter?;
            match usage::page(&db, &filter, 1000).await {
                Err(e) => Some((Err(e), None)),
                Ok((records, next)) => {
                    let mut chunk = String::new();
                    for r in &records {
                        let account = names.get(&r.account_id).map_or("", String::as_str);
                        chunk += &usage_export::csv_record(r, account);
                        chunk.push('\n');
                    }
                    let more = match next {
                        Some(cursor) => usage::parse_cursor(&cursor).ok().map(|before| {
                            filter.before = Some(before);
                            filter
                        }),
                        None => None,
                    };
                    Some((Ok(chunk), more))
                }
            }
        }
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(first, pages));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"usage.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "request.html")]
struct RequestPage {
    frame: Frame,
    facts: Vec<(&'static str, String)>,
    tokens: Vec<(&'static str, String)>,
    /// The counts as they came, when they are not what is billed.
    reported: Option<Vec<(&'static str, String)>>,
    /// The backends tried in order: chip and what became of the request there.
    attempts: Vec<(String, &'static str)>,
    version: Option<String>,
    lines: Vec<[String; 5]>,
    total: String,
    stored: String,
    matches: bool,
}

/// The catalogue's name of a usage source.
fn source_label(source: &str) -> &'static str {
    match source {
        "reported" => "usage.source.reported",
        "estimated" => "usage.source.estimated",
        "capped" => "usage.source.capped",
        "suspect" => "usage.source.suspect",
        "imported" => "usage.source.imported",
        _ => "usage.source.none",
    }
}

/// The backends a request went to, in order: those passed over (kept on the record), then
/// the one the record names, with what became of the request there.
fn attempts(record: &StoredRecord) -> Vec<(String, &'static str)> {
    let passed_over = record.attempts.iter().map(|a| {
        let outcome = match a.outcome {
            AttemptOutcome::AtItsLimit => "usage.attempt.at_its_limit",
            AttemptOutcome::Refused => "usage.attempt.refused",
        };
        (a.chip.clone(), outcome)
    });
    let last = match record.status.as_str() {
        "unreachable" => "usage.attempt.refused",
        "timeout" => "usage.attempt.timeout",
        _ => "usage.attempt.took",
    };
    passed_over.chain([(record.chip.clone(), last)]).collect()
}

pub async fn request(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let db = state.usage_db().await?;
    let record = crate::store::usage::by_request_id(db, &id)
        .await
        .map_err(Error::from)?
        .ok_or_else(Failure::not_found)?;
    if !signed.session.person.sees(record.account_id) {
        return Err(Failure::not_found());
    }
    let account = accounts::get(db, record.account_id).await?;
    let zone = accounts::zone_of(&account, state.config().billing.zone());
    let at = |ms: i64| time(crate::store::from_ms(ms), zone);
    let prices = state.prices();
    let price = prices.version(record.price_version_id);
    let (lines, total) = match price {
        Some(price) => usage::arithmetic(&record, price)?,
        None => (Vec::new(), Decimal::ZERO),
    };
    let t = signed.prefs.t();
    let page = RequestPage {
        frame: Frame::signed(&signed, "nav.usage"),
        facts: vec![
            ("usage.request_id", record.request_id.clone()),
            ("account", account.name.clone()),
            ("model", record.model.clone()),
            ("chip", record.chip.clone()),
            (
                "usage.deployment",
                record.deployment.clone().unwrap_or_else(|| "—".into()),
            ),
            ("usage.endpoint", record.endpoint.clone()),
            (
                "usage.stream",
                t.get(if record.stream { "yes" } else { "no" }).to_owned(),
            ),
            (
                "state",
                format!("{} (HTTP {})", record.status, record.http_status),
            ),
            (
                "usage.error",
                record.error.clone().unwrap_or_else(|| "—".into()),
            ),
            ("usage.started", at(record.started_at)),
            ("usage.ended", at(record.ended_at)),
            ("usage.latency", format!("{} ms", record.latency_ms)),
            (
                "usage.ttft",
                record.ttft_ms.map_or("—".into(), |ms| format!("{ms} ms")),
            ),
        ],
        tokens: vec![
            (
                "usage.source",
                t.get(source_label(&record.usage_source)).to_owned(),
            ),
            ("usage.prompt", count(record.prompt_tokens)),
            ("usage.cached", count(record.cached_tokens)),
            ("usage.cache_write", count(record.cache_write_tokens)),
            ("usage.completion", count(record.completion_tokens)),
            ("usage.reasoning", count(record.reasoning_tokens)),
            ("usage.images", count(record.images)),
        ],
        reported: record.reported.map(|r| {
            vec![
                ("usage.prompt", count(r.tokens.prompt)),
                ("usage.cached", count(r.tokens.cached)),
                ("usage.cache_write", count(r.tokens.cache_write)),
                ("usage.completion", count(r.tokens.completion)),
                ("usage.reasoning", count(r.tokens.reasoning)),
                ("usage.images", count(r.units.images)),
            ]
        }),
        attempts: attempts(&record),
        version: price.map(|p| {
            format!(
                "#{} · {} × {} · {}",
                p.id,
                p.entry.model,
                p.entry.chip,
                time(p.entry.effective_from, zone)
            )
        }),
        lines: lines
            .iter()
            .map(|l| {
                [
                    l.unit.as_str().to_owned(),
                    count(l.quantity as i64),
                    exact(l.price),
                    count(i64::from(l.per)),
                    exact(l.amount),
                ]
            })
            .collect(),
        total: exact(total),
        stored: exact(record.cost),
        matches: total == record.cost.normalize(),
    };
    render(&page)
}
