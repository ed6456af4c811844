//! Usage summed for reading: invoices, reports and a key's month read the rollups, kept by
//! the ledger's triggers in the same transaction as the records
//! (`migrations/*/..._usage_rollups.sql`), so their cost grows with the days, hours and
//! groups of the period asked, never with its records: whole days of the billing zone from
//! `usage_daily`, other whole UTC hours from `usage_hourly`, and only the rest (a period's
//! ragged ends, a bucket edge inside an hour in a zone with a half-hour offset) from the
//! records themselves, through their time index. `keep_days_in` sets the zone of the daily
//! sums; `audit` recomputes every rollup from the records for `tollgate ledger verify`.

mod audit;
mod days;

pub use audit::{Counts, Group, Mismatch, audit};
pub use days::keep_days_in;

use chrono_tz::Tz;
use sqlx::AssertSqlSafe;

use super::{Db, Read, Result, StoreError, on};
use crate::billing::Totals;

pub const HOUR_MS: i64 = 3_600_000;
/// The slot records read directly are grouped by: every timezone's offset is a multiple
/// of 15 minutes, so its hours and days are unions of such slots.
pub const SLOT_MS: i64 = 15 * 60 * 1000;

/// Whose usage to sum.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    All,
    Account(i64),
    /// A key's lineage: the key and the keys it was rotated from (or to), by the id of
    /// the first.
    Lineage(i64),
}

impl Scope {
    /// The id its condition binds (0 for all).
    fn id(self) -> i64 {
        match self {
            Scope::All => 0,
            Scope::Account(id) | Scope::Lineage(id) => id,
        }
    }
}

/// What sums are grouped by besides model, chip and price version (which pricing needs):
/// only what the reader asks for, so that a report over all keys does not make a group per
/// key.
#[derive(Debug, Clone, Copy, Default)]
pub struct By<'a> {
    pub account: bool,
    /// By key lineage.
    pub key: bool,
    /// By time slot (a day or an hour from the rollups, 15 minutes from records), no slot
    /// crossing any of these instants (ms): the edges of a report's local days or hours.
    pub slots: Option<&'a [i64]>,
    /// The billing zone: whole days of it may be read from the daily rollups, if the ledger
    /// keeps them in that zone.
    pub zone: Option<Tz>,
}

/// Where a part of a period is summed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Days,
    Rollups,
    Records,
}

/// `[from, to)` cut into the parts summed from the daily rollups (whole days, starting at
/// `days`, crossed by no edge), the hourly rollups (other whole UTC hours crossed by no
/// edge) and the records (the rest), in time order.
fn spans(from: i64, to: i64, edges: &[i64], days: &[i64]) -> Vec<(Source, i64, i64)> {
    let mut spans: Vec<(Source, i64, i64)> = Vec::new();
    let mut at = from;
    for day in days.windows(2) {
        let (start, end) = (day[0], day[1]);
        let crossed = edges.iter().any(|&e| start < e && e < end);
        if start < at || end > to || crossed {
            continue;
        }
        hour_spans(&mut spans, at, start, edges);
        push(&mut spans, Source::Days, start, end);
        at = end;
    }
    hour_spans(&mut spans, at, to, edges);
    spans
}

/// Appends `[source, a, b)`, joined to the last span if it is of the same source and ends
/// at `a`.
fn push(spans: &mut Vec<(Source, i64, i64)>, source: Source, a: i64, b: i64) {
    if a >= b {
        return;
    }
    match spans.last_mut() {
        Some((last, _, end)) if *last == source && *end == a => *end = b,
        _ => spans.push((source, a, b)),
    }
}

/// Appends `[from, to)` cut into whole UTC hours crossed by no edge (hourly rollups) and the
/// rest (records).
fn hour_spans(spans: &mut Vec<(Source, i64, i64)>, from: i64, to: i64, edges: &[i64]) {
    if from >= to {
        return;
    }
    let floor = |t: i64| t.div_euclid(HOUR_MS) * HOUR_MS;
    let mut partial: Vec<i64> = [from, to]
        .iter()
        .chain(edges.iter().filter(|&&e| from < e && e < to))
        .filter(|&&t| t.rem_euclid(HOUR_MS) != 0)
        .map(|&t| floor(t))
        .collect();
    partial.sort_unstable();
    partial.dedup();
    let mut at = from;
    for hour in partial {
        let (start, end) = (hour.max(from), hour.saturating_add(HOUR_MS).min(to));
        if end <= at {
            continue;
        }
        push(spans, Source::Rollups, at, start);
        push(spans, Source::Records, start.max(at), end);
        at = end;
    }
    push(spans, Source::Rollups, at, to);
}

/// The starts of the days of the daily rollups from `from_ms` to `to_ms` (both included),
/// if the ledger keeps them in `zone`.
async fn days_of(db: &Db, zone: Option<Tz>, from_ms: i64, to_ms: i64) -> Result<Vec<i64>> {
    let Some(zone) = zone else {
        return Ok(Vec::new());
    };
    Ok(on!(db, |pool| {
        sqlx::query_scalar(
            "SELECT start FROM rollup_days
             WHERE start >= $1 AND start <= $2
               AND EXISTS (SELECT 1 FROM rollup_zone WHERE zone = $3)
             ORDER BY start",
        )
        .bind(from_ms)
        .bind(to_ms)
        .bind(zone.name())
        .fetch_all(pool)
        .await?
    }))
}

/// Sums over `[from_ms, to_ms)` grouped by model, chip and price version and by what `by`
/// asks; the ids not grouped by are 0. A group may come in several rows (one per part of
/// the period): readers add them up.
pub async fn totals(
    db: &Db,
    scope: Scope,
    from_ms: i64,
    to_ms: i64,
    by: By<'_>,
) -> Result<Vec<Totals>> {
    let mut totals = Vec::new();
    let days = days_of(db, by.zone, from_ms, to_ms).await?;
    let spans = spans(from_ms, to_ms, by.slots.unwrap_or_default(), &days);
    if let Some(retired) = super::retire::retired_before(db).await?
        && let Some((_, from, _)) = spans
            .iter()
            .find(|(source, from, _)| *source == Source::Records && *from < retired)
    {
        return Err(StoreError::Conflict(format!(
            "the records of {} are retired: ask for whole days (or hours) before {}",
            super::from_ms(*from).to_rfc3339(),
            super::from_ms(retired).to_rfc3339()
        )));
    }
    for (source, from, to) in spans {
        let sql = totals_sql(source, scope, by);
        on!(db, |pool| {
            // Built from this module's own fragments; the values are bound.
            let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(from)
                .bind(to)
                .bind(scope.id())
                .fetch_all(pool)
                .await?;
            for row in &rows {
                totals.push(totals_from_row(row)?);
            }
        })
    }
    Ok(totals)
}

/// How the ledger would run `totals`' queries over `[from_ms, to_ms)`, on the daily and
/// hourly rollups and on records (SQLite's `EXPLAIN QUERY PLAN` lines, or PostgreSQL's
/// `EXPLAIN`): what a test checks for full scans.
pub async fn plan_of_totals(
    db: &Db,
    scope: Scope,
    by: By<'_>,
    (from_ms, to_ms): (i64, i64),
) -> Result<Vec<String>> {
    let (explain, column) = super::explain(db);
    let mut plan = Vec::new();
    for source in [Source::Days, Source::Rollups, Source::Records] {
        let sql = format!("{explain} {}", totals_sql(source, scope, by));
        on!(db, |pool| {
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(from_ms)
                .bind(to_ms)
                .bind(scope.id())
                .fetch_all(pool)
                .await?;
            for row in &rows {
                plan.push(row.read::<String>(column)?);
            }
        })
    }
    Ok(plan)
}

fn totals_sql(source: Source, scope: Scope, by: By) -> String {
    let (table, time, requests, lineage, slot) = match source {
        Source::Days => (
            "usage_daily r",
            "r.day",
            "r.requests",
            "r.lineage_id",
            "r.day",
        ),
        Source::Rollups => (
            "usage_hourly r",
            "r.hour",
            "r.requests",
            "r.lineage_id",
            "r.hour",
        ),
        Source::Records => (
            "usage_records r JOIN api_keys k ON k.id = r.key_id",
            "r.started_at",
            "1",
            "coalesce(k.lineage_id, k.id)",
            "r.started_at / 900000 * 900000",
        ),
    };
    let column = |asked: bool, name: &'static str, otherwise: &'static str| match asked {
        true => name,
        false => otherwise,
    };
    let account = column(by.account, "r.account_id", "CAST(0 AS BIGINT)");
    let grouped_lineage = column(by.key, lineage, "CAST(0 AS BIGINT)");
    let slot = column(by.slots.is_some(), slot, "CAST(NULL AS BIGINT)");
    // The rollups' primary key starts with the account: each read names its accounts.
    let scope = match (scope, source) {
        (Scope::All, Source::Records) => "$3 = 0".to_string(),
        (Scope::All, _) => "$3 = 0 AND r.account_id IN (SELECT id FROM accounts)".to_string(),
        (Scope::Account(_), _) => "r.account_id = $3".to_string(),
        (Scope::Lineage(_), Source::Records) => format!("{lineage} = $3"),
        (Scope::Lineage(_), _) => format!(
            "r.account_id = (SELECT account_id FROM api_keys WHERE id = $3) AND {lineage} = $3"
        ),
    };
    let sums: String = SUMMED
        .iter()
        .map(|column| {
            let value = match (source, *column) {
                (Source::Records, "requests") => "1".to_string(),
                _ => format!("r.{column}"),
            };
            format!(", CAST(SUM({value}) AS BIGINT) AS {column}")
        })
        .collect();
    format!(
        "SELECT {account} AS account_id, {grouped_lineage} AS lineage_id, r.model, r.chip,
                r.price_version_id, {slot} AS slot, coalesce(r.deployment, '') AS deployment,
                CAST(SUM(CASE WHEN r.status = 'ok' THEN {requests} ELSE 0 END) AS BIGINT)
                    AS ok_requests{sums}
         FROM {table} WHERE {time} >= $1 AND {time} < $2 AND {scope}
         GROUP BY 1, 2, 3, 4, 5, 6, 7"
    )
}

/// The counts a rollup sums, as its columns and `Totals`' fields are named, in the order
/// of the rollup tables' columns.
pub(super) const SUMMED: [&str; 10] = [
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "images",
    "tasks",
    "compute_ms",
    "uploads",
    "cache_write_tokens",
    "reasoning_tokens",
];

fn totals_from_row(r: &impl Read) -> Result<Totals> {
    let c = Counts::read(r)?;
    Ok(Totals {
        account_id: r.read("account_id")?,
        lineage_id: r.read("lineage_id")?,
        model: r.read("model")?,
        chip: r.read("chip")?,
        deployment: r.read("deployment")?,
        price_version_id: r.read("price_version_id")?,
        slot_ms: r.read("slot")?,
        requests: c.requests,
        ok_requests: r.read("ok_requests")?,
        prompt_tokens: c.prompt_tokens,
        cached_tokens: c.cached_tokens,
        cache_write_tokens: c.cache_write_tokens,
        completion_tokens: c.completion_tokens,
        reasoning_tokens: c.reasoning_tokens,
        images: c.images,
        tasks: c.tasks,
        compute_ms: c.compute_ms,
        uploads: c.uploads,
    })
}

/// An account's (or one key lineage's, `lineage` not 0) requests and prompt + completion
/// tokens per UTC hour since `since_ms`: where a quota plan's counts start
/// (`limits::plans`). One account's hours of the primary key.
pub async fn hours_of(
    db: &Db,
    account_id: i64,
    lineage: i64,
    since_ms: i64,
) -> Result<Vec<(i64, u64, u64)>> {
    let rows: Vec<(i64, i64, i64)> = on!(db, |pool| {
        sqlx::query_as(
            "SELECT hour, CAST(SUM(requests) AS BIGINT),
                    CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT)
             FROM usage_hourly
             WHERE account_id = $1 AND hour >= $2 AND ($3 = 0 OR lineage_id = $3)
             GROUP BY hour ORDER BY hour",
        )
        .bind(account_id)
        .bind(since_ms.div_euclid(HOUR_MS) * HOUR_MS)
        .bind(lineage)
        .fetch_all(pool)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(|(hour, r, t)| (hour, r.max(0) as u64, t.max(0) as u64))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Source::{Days, Records, Rollups};

    const H: i64 = HOUR_MS;

    #[test]
    fn whole_hours_come_from_rollups_and_the_rest_from_records() {
        // A period on the hour: rollups alone.
        assert_eq!(spans(0, 24 * H, &[], &[]), [(Rollups, 0, 24 * H)]);
        // Ragged ends: records for the part hours.
        assert_eq!(
            spans(H / 2, 3 * H + 60_000, &[], &[]),
            [
                (Records, H / 2, H),
                (Rollups, H, 3 * H),
                (Records, 3 * H, 3 * H + 60_000)
            ]
        );
        // Within one hour: records alone.
        assert_eq!(spans(10, 20, &[], &[]), [(Records, 10, 20)]);
        // Edges on the hour change nothing; an edge inside an hour (a +05:30 zone's
        // midnight) makes that hour come from records, so that no slot crosses it.
        assert_eq!(spans(0, 4 * H, &[H, 2 * H], &[]), [(Rollups, 0, 4 * H)]);
        assert_eq!(
            spans(0, 4 * H, &[H + H / 2, 99 * H + 1], &[]),
            [
                (Rollups, 0, H),
                (Records, H, 2 * H),
                (Rollups, 2 * H, 4 * H)
            ]
        );
        // Part hours side by side are one span.
        assert_eq!(
            spans(H / 2, 2 * H, &[H + 1], &[]),
            [(Records, H / 2, 2 * H)]
        );
        assert!(spans(5, 5, &[], &[]).is_empty());
    }

    #[test]
    fn whole_days_come_from_the_daily_rollups() {
        const D: i64 = 24 * H;
        // Days starting at 16:00 UTC (Asia/Shanghai).
        let days: Vec<i64> = (0..5).map(|d| d * D + 16 * H).collect();
        // A month's invoice: its days.
        assert_eq!(
            spans(16 * H, 3 * D + 16 * H, &[], &days),
            [(Days, 16 * H, 3 * D + 16 * H)]
        );
        // A period starting and ending within days: hours, then days, then hours and a
        // part hour.
        assert_eq!(
            spans(10 * H, 2 * D + 20 * H + 5, &[], &days),
            [
                (Rollups, 10 * H, 16 * H),
                (Days, 16 * H, 2 * D + 16 * H),
                (Rollups, 2 * D + 16 * H, 2 * D + 20 * H),
                (Records, 2 * D + 20 * H, 2 * D + 20 * H + 5)
            ]
        );
        // Hour buckets cut every day: hours alone.
        let hours: Vec<i64> = (16..40).map(|h| h * H).collect();
        assert_eq!(
            spans(16 * H, D + 16 * H, &hours, &days),
            [(Rollups, 16 * H, D + 16 * H)]
        );
    }
}
