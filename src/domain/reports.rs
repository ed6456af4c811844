//! Cost reports: usage and exact cost over a time range, grouped any way, rendered as
//! JSON, CSV or a self-contained HTML page.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use crate::billing::PriceBook;
use crate::billing::period::Month;
use crate::billing::report::{self, Dimension, Names, Report};
use crate::billing::report_html;
use crate::error::Error;
use crate::store::{self, Db};

/// `2026-11-03` (local midnight in the billing timezone) or an RFC 3339 instant.
pub fn parse_instant(text: &str, zone: Tz, param: &'static str) -> Result<DateTime<Utc>, Error> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| {
            zone.from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            Error::invalid(
                format!("'{text}' is neither a date (2026-11-03) nor an RFC 3339 time"),
                param,
            )
        })
}

/// What a report request says; absent bounds mean the current billing month.
pub struct ReportRequest<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub group_by: &'a str,
    /// Whose usage: every account's, or one account's.
    pub scope: store::rollups::Scope,
}

pub async fn build(
    db: &Db,
    prices: &PriceBook,
    zone: Tz,
    request: ReportRequest<'_>,
) -> Result<Report, Error> {
    let (month_start, month_end) = Month::containing(Utc::now(), zone).bounds(zone);
    let from = request
        .from
        .map(|f| parse_instant(f, zone, "from"))
        .transpose()?
        .unwrap_or(month_start);
    let to = request
        .to
        .map(|t| parse_instant(t, zone, "to"))
        .transpose()?
        .unwrap_or(month_end);
    if to <= from {
        return Err(Error::invalid("'to' must be after 'from'", "to"));
    }
    let group_by =
        Dimension::parse_list(request.group_by).map_err(|e| Error::invalid(e, "group_by"))?;
    build_between(db, prices, zone, request.scope, (from, to), group_by).await
}

/// The report of `scope`'s usage over `[from, to)`, grouped by `group_by`, from the rollups.
pub async fn build_between(
    db: &Db,
    prices: &PriceBook,
    zone: Tz,
    scope: store::rollups::Scope,
    range: (DateTime<Utc>, DateTime<Utc>),
    group_by: Vec<Dimension>,
) -> Result<Report, Error> {
    build_filtered(db, prices, zone, scope, range, group_by, &|_| true).await
}

/// What `scope` spent over `[from, to)` and how many requests it made, from the rollups
/// summed by model × chip × price version only (no day or key groups to price one by one).
pub async fn total_between(
    db: &Db,
    prices: &PriceBook,
    zone: Tz,
    scope: store::rollups::Scope,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> Result<(i64, Decimal), Error> {
    let by = store::rollups::By {
        zone: Some(zone),
        ..Default::default()
    };
    let totals =
        store::rollups::totals(db, scope, store::to_ms(from), store::to_ms(to), by).await?;
    let requests = totals
        .iter()
        .map(|t| t.requests)
        .fold(0i64, i64::saturating_add);
    let cost = crate::billing::invoice::cost_of_sums(&totals, prices)?;
    Ok((requests, cost.normalize()))
}

/// Like `build_between`, of the sums `keep` keeps (by model, chip or key lineage: what the
/// sums are grouped by).
pub async fn build_filtered(
    db: &Db,
    prices: &PriceBook,
    zone: Tz,
    scope: store::rollups::Scope,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    group_by: Vec<Dimension>,
    keep: &(dyn Fn(&crate::billing::Totals) -> bool + Sync),
) -> Result<Report, Error> {
    let edges = report::slot_edges(zone, (from, to), group_by.contains(&Dimension::Hour));
    let by = store::rollups::By {
        account: group_by.contains(&Dimension::Account),
        key: group_by.contains(&Dimension::Key),
        slots: Some(&edges), // the chart's days or hours, and the day or hour groups
        zone: Some(zone),
    };
    let (from_ms, to_ms) = (store::to_ms(from), store::to_ms(to));
    let mut totals = store::rollups::totals(db, scope, from_ms, to_ms, by).await?;
    totals.retain(|t| keep(t));
    let mut names = Names::default();
    for account in store::accounts::list(db).await? {
        names.accounts.insert(account.id, account.name);
    }
    let account = match scope {
        store::rollups::Scope::Account(id) => Some(id),
        _ => None,
    };
    // A lineage is shown as its newest key.
    let mut keys = store::keys::list(db, account).await?;
    keys.sort_by_key(|k| k.id);
    for key in keys {
        names.keys.insert(key.lineage_id, key.prefix);
    }
    Ok(report::build(
        &totals,
        prices,
        &names,
        zone,
        (from, to),
        group_by,
    )?)
}

/// The report as `json`, `csv` or `html`: content type and body.
pub fn render(report: &Report, format: &str) -> Result<(&'static str, String), Error> {
    match format {
        "json" => Ok((
            "application/json",
            serde_json::to_string(report).map_err(anyhow::Error::from)?,
        )),
        "csv" => Ok(("text/csv; charset=utf-8", report.to_csv())),
        "html" => Ok(("text/html; charset=utf-8", report_html::render(report))),
        other => Err(Error::invalid(
            format!("format '{other}' is not json, csv or html"),
            "format",
        )),
    }
}
