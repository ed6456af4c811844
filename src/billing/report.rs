//! Cost reports: usage and exact cost grouped by any of account, key, model, chip, and day
//! or hour in the billing timezone. Built from sums per time slot (hours, and 15 minutes
//! where a zone's day or hour begins inside a UTC hour), so every bucket is an exact union
//! of slots.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;

use super::PriceBook;
use super::Totals;
use super::invoice::{cost_of_sums, csv_field, to_fen};
use super::money::add;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Account,
    Key,
    Model,
    Chip,
    /// A private deployment's id ("-" for shared models).
    Deployment,
    Day,
    Hour,
}

impl Dimension {
    pub fn parse_list(text: &str) -> Result<Vec<Dimension>, String> {
        let mut dims = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let dim = match part {
                "account" => Dimension::Account,
                "key" => Dimension::Key,
                "model" => Dimension::Model,
                "chip" => Dimension::Chip,
                "deployment" => Dimension::Deployment,
                "day" => Dimension::Day,
                "hour" => Dimension::Hour,
                other => {
                    return Err(format!(
                        "cannot group by '{other}': use account, key, model, chip, deployment, day or hour"
                    ));
                }
            };
            if !dims.contains(&dim) {
                dims.push(dim);
            }
        }
        if dims.contains(&Dimension::Day) && dims.contains(&Dimension::Hour) {
            return Err("group by day or by hour, not both".into());
        }
        Ok(dims)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Account => "account",
            Dimension::Key => "key",
            Dimension::Model => "model",
            Dimension::Chip => "chip",
            Dimension::Deployment => "deployment",
            Dimension::Day => "day",
            Dimension::Hour => "hour",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    /// One value per grouping dimension, in the order asked.
    pub group: Vec<String>,
    pub requests: i64,
    /// Requests that completed (the rest failed); not in the report's own formats.
    #[serde(skip)]
    pub ok_requests: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub completion_tokens: i64,
    pub cost_exact: Decimal,
    pub cost: Decimal,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub timezone: String,
    pub group_by: Vec<Dimension>,
    pub currency: &'static str,
    pub rows: Vec<Row>,
    /// Exact sum of every record in the range: equal to the records' own costs.
    pub total_exact: Decimal,
    /// `total_exact` rounded half-up to the fen.
    pub total: Decimal,
    /// Cost per (local day, or hour when grouped by hour) and model×chip, for the chart.
    pub series: BTreeMap<String, BTreeMap<String, Decimal>>,
}

/// Display names for ids: account names and key prefixes.
#[derive(Debug, Default)]
pub struct Names {
    pub accounts: HashMap<i64, String>,
    pub keys: HashMap<i64, String>,
}

fn bucket(slot_ms: i64, zone: Tz, hourly: bool) -> String {
    let local = Utc
        .timestamp_millis_opt(slot_ms)
        .single()
        .unwrap_or_default()
        .with_timezone(&zone);
    if hourly {
        local.format("%Y-%m-%d %H:00").to_string()
    } else {
        local.format("%Y-%m-%d").to_string()
    }
}

/// The instants inside `range` where a bucket (local day, or hour when `hourly`) begins
/// within a UTC hour: none in a zone whose offset is a whole number of hours, the local
/// midnights (or hours) of a zone like Asia/Kolkata. Sums are read in slots that no such
/// instant crosses (`store::rollups::By::slots`), so each falls in one bucket.
pub fn slot_edges(zone: Tz, range: (DateTime<Utc>, DateTime<Utc>), hourly: bool) -> Vec<i64> {
    const DAY_MS: i64 = 24 * 3_600_000;
    const SLOT_MS: i64 = 15 * 60_000;
    let (from, to) = (range.0.timestamp_millis(), range.1.timestamp_millis());
    let offset = |ms: i64| {
        let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
        zone.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    };
    // Offsets change at most a few times a year: a look each day finds any part hour.
    let samples = (from..to).step_by(DAY_MS as usize).chain([to]);
    if samples.map(offset).all(|seconds| seconds % 3600 == 0) {
        return Vec::new();
    }
    let mut edges = Vec::new();
    let mut at = from.div_euclid(SLOT_MS) * SLOT_MS + SLOT_MS;
    let mut previous = bucket(from, zone, hourly);
    while at < to {
        let current = bucket(at, zone, hourly);
        if current != previous {
            edges.push(at);
            previous = current;
        }
        at += SLOT_MS;
    }
    edges
}

/// `totals` must be grouped by slot, no slot crossing `slot_edges`.
pub fn build(
    totals: &[Totals],
    prices: &PriceBook,
    names: &Names,
    zone: Tz,
    range: (DateTime<Utc>, DateTime<Utc>),
    group_by: Vec<Dimension>,
) -> anyhow::Result<Report> {
    let hourly = group_by.contains(&Dimension::Hour);
    let mut rows: BTreeMap<Vec<String>, Row> = BTreeMap::new();
    let mut series: BTreeMap<String, BTreeMap<String, Decimal>> = BTreeMap::new();
    let mut total = Decimal::ZERO;
    for t in totals {
        let cost = cost_of_sums(std::slice::from_ref(t), prices)?;
        let when = bucket(t.slot_ms.unwrap_or_default(), zone, hourly);
        let group: Vec<String> = group_by
            .iter()
            .map(|d| match d {
                Dimension::Account => names
                    .accounts
                    .get(&t.account_id)
                    .cloned()
                    .unwrap_or_else(|| t.account_id.to_string()),
                Dimension::Key => names
                    .keys
                    .get(&t.lineage_id)
                    .cloned()
                    .unwrap_or_else(|| t.lineage_id.to_string()),
                Dimension::Model => t.model.clone(),
                Dimension::Chip => t.chip.clone(),
                Dimension::Deployment => match t.deployment.as_str() {
                    "" => "-".to_owned(),
                    id => id.to_owned(),
                },
                Dimension::Day | Dimension::Hour => when.clone(),
            })
            .collect();
        let row = rows.entry(group.clone()).or_insert_with(|| Row {
            group,
            ..Row::default()
        });
        row.requests = row.requests.saturating_add(t.requests);
        row.ok_requests = row.ok_requests.saturating_add(t.ok_requests);
        row.prompt_tokens = row.prompt_tokens.saturating_add(t.prompt_tokens);
        row.cached_tokens = row.cached_tokens.saturating_add(t.cached_tokens);
        row.cache_write_tokens = row.cache_write_tokens.saturating_add(t.cache_write_tokens);
        row.completion_tokens = row.completion_tokens.saturating_add(t.completion_tokens);
        row.cost_exact = add(row.cost_exact, cost)?;
        let point = series
            .entry(when)
            .or_default()
            .entry(format!("{} × {}", t.model, t.chip))
            .or_default();
        *point = add(*point, cost)?;
        total = add(total, cost)?;
    }
    let rows = rows
        .into_values()
        .map(|mut r| {
            r.cost_exact = r.cost_exact.normalize();
            r.cost = to_fen(r.cost_exact);
            r
        })
        .collect();
    Ok(Report {
        from: range.0,
        to: range.1,
        timezone: zone.name().to_string(),
        group_by,
        currency: "CNY",
        rows,
        total_exact: total.normalize(),
        total: to_fen(total),
        series,
    })
}

impl Report {
    pub fn to_csv(&self) -> String {
        let mut out: String = self
            .group_by
            .iter()
            .map(|d| format!("{},", d.as_str()))
            .collect();
        out.push_str(
            "requests,prompt_tokens,cached_tokens,cache_write_tokens,completion_tokens,cost_exact,cost\n",
        );
        for r in &self.rows {
            for g in &r.group {
                out.push_str(&csv_field(g));
                out.push(',');
            }
            out.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                r.requests,
                r.prompt_tokens,
                r.cached_tokens,
                r.cache_write_tokens,
                r.completion_tokens,
                r.cost_exact,
                r.cost
            ));
        }
        // TOTAL, blanks under the other group columns and the five counts, then the costs.
        let mut total = vec!["TOTAL".to_string()];
        total.extend(std::iter::repeat_n(String::new(), self.group_by.len() + 4));
        total.extend([self.total_exact.to_string(), self.total.to_string()]);
        out.push_str(&total.join(","));
        out.push('\n');
        out
    }
}
