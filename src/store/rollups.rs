//! Usage summed for reading: invoices, reports and a key's month read the rollups, kept by
//! the ledger's triggers in the same transaction as the records
//! (`migrations/*/..._usage_rollups.sql`), so their cost grows with the days, hours and
//! groups of the period asked, never with its records: whole days of the billing zone from
//! `usage_daily`, other whole UTC hours from `usage_hourly`, and only the rest (a period's
//! ragged ends, a bucket edge inside an hour in a zone with a half-hour offset) from the
//! records themselves, through their time index. `keep_days_in` sets the zone of the daily
//! sums; `audit` recomputes every rollup from the records for `tollgate ledger verify`.

use std::collections::BTreeMap;

use chrono_tz::Tz;
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::{Db, Read, Result, StoreError, on};
use crate::billing::Totals;
use crate::billing::period;

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
                r.price_version_id, {slot} AS slot,
                CAST(SUM(CASE WHEN r.status = 'ok' THEN {requests} ELSE 0 END) AS BIGINT)
                    AS ok_requests{sums}
         FROM {table} WHERE {time} >= $1 AND {time} < $2 AND {scope}
         GROUP BY 1, 2, 3, 4, 5, 6"
    )
}

/// The counts a rollup sums, as its columns and `Totals`' fields are named.
const SUMMED: [&str; 8] = [
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "images",
    "tasks",
    "compute_ms",
    "uploads",
];

fn totals_from_row(r: &impl Read) -> Result<Totals> {
    let c = Counts::read(r)?;
    Ok(Totals {
        account_id: r.read("account_id")?,
        lineage_id: r.read("lineage_id")?,
        model: r.read("model")?,
        chip: r.read("chip")?,
        price_version_id: r.read("price_version_id")?,
        slot_ms: r.read("slot")?,
        requests: c.requests,
        ok_requests: r.read("ok_requests")?,
        prompt_tokens: c.prompt_tokens,
        cached_tokens: c.cached_tokens,
        completion_tokens: c.completion_tokens,
        images: c.images,
        tasks: c.tasks,
        compute_ms: c.compute_ms,
        uploads: c.uploads,
    })
}

/// Makes the daily rollups sum the days of `zone`: if the ledger keeps them in another
/// zone (or none yet), writes `zone`'s days and sums them again, in one transaction that
/// holds off new records meanwhile: from the hourly rollups when every day of `zone` starts
/// on a UTC hour, else from the records. A ledger already in `zone` is left as it is.
pub async fn keep_days_in(db: &Db, zone: Tz) -> Result<()> {
    let kept: Option<String> = on!(db, |pool| {
        sqlx::query_scalar("SELECT zone FROM rollup_zone")
            .fetch_optional(pool)
            .await?
    });
    if kept.as_deref() == Some(zone.name()) {
        return Ok(());
    }
    let days = period::rollup_days(zone);
    let on_the_hour = days.iter().all(|d| d % HOUR_MS == 0);
    let sums: String = SUMMED
        .iter()
        .map(|c| match (*c, on_the_hour) {
            ("requests", false) => ", count(*)".to_string(),
            (c, _) => format!(", sum(r.{c})"),
        })
        .collect();
    let day_of = |time: &str| {
        format!("(SELECT start FROM rollup_days WHERE start <= {time} ORDER BY start DESC LIMIT 1)")
    };
    let rebuild = match on_the_hour {
        true => format!(
            "INSERT INTO usage_daily
             SELECT r.account_id, r.day, r.lineage_id, r.model, r.chip, r.deployment,
                    r.endpoint, r.status, r.price_version_id{sums}
             FROM (SELECT r.*, {day} AS day FROM usage_hourly r WHERE r.hour >= $1) r
             GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
            day = day_of("r.hour"),
        ),
        false => format!(
            "INSERT INTO usage_daily
             SELECT r.account_id, r.day, coalesce(k.lineage_id, k.id), r.model, r.chip,
                    coalesce(r.deployment, ''), r.endpoint, r.status, r.price_version_id{sums}
             FROM (SELECT r.*, {day} AS day FROM usage_records r WHERE r.started_at >= $1) r
             JOIN api_keys k ON k.id = r.key_id
             GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
            day = day_of("r.started_at"),
        ),
    };
    let started = std::time::Instant::now();
    let (begin, hold_off) = match db {
        Db::Sqlite(_) => ("BEGIN IMMEDIATE", None),
        Db::Postgres(_) => (
            "BEGIN",
            Some("LOCK TABLE rollup_zone, usage_records IN SHARE ROW EXCLUSIVE MODE"),
        ),
    };
    on!(db, |pool| {
        let mut conn = pool.acquire().await?;
        sqlx::query(begin).execute(&mut *conn).await?;
        let done = async {
            if let Some(lock) = hold_off {
                sqlx::query(lock).execute(&mut *conn).await?;
            }
            // Another process may have done it meanwhile (replicas starting together).
            let now: Option<String> = sqlx::query_scalar("SELECT zone FROM rollup_zone")
                .fetch_optional(&mut *conn)
                .await?;
            if now.as_deref() == Some(zone.name()) {
                return Ok(false);
            }
            for sql in [
                "DELETE FROM rollup_days",
                "DELETE FROM usage_daily",
                "DELETE FROM rollup_zone",
            ] {
                sqlx::query(sql).execute(&mut *conn).await?;
            }
            for chunk in days.chunks(1000) {
                let mut insert = QueryBuilder::new("INSERT INTO rollup_days (start) ");
                insert.push_values(chunk, |mut row, day| {
                    row.push_bind(*day);
                });
                insert.build().execute(&mut *conn).await?;
            }
            sqlx::query(AssertSqlSafe(rebuild.as_str()))
                .bind(days[0])
                .execute(&mut *conn)
                .await?;
            sqlx::query("INSERT INTO rollup_zone (id, zone) VALUES (1, $1)")
                .bind(zone.name())
                .execute(&mut *conn)
                .await?;
            Ok::<_, sqlx::Error>(true)
        }
        .await;
        let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end).execute(&mut *conn).await?;
        if !done? {
            return Ok(());
        }
    });
    tracing::info!(
        zone = zone.name(),
        took_ms = started.elapsed().as_millis() as u64,
        "daily usage rollups summed for the billing time zone"
    );
    Ok(())
}

/// What identifies a rollup row (its account aside).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Group {
    /// `hourly` or `daily`.
    pub rollup: &'static str,
    /// The start (ms) of its hour or day.
    pub start: i64,
    pub lineage_id: i64,
    pub model: String,
    pub chip: String,
    pub deployment: String,
    pub endpoint: String,
    pub status: String,
    pub price_version_id: i64,
}

/// The counts of a rollup row (`SUMMED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counts {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub completion_tokens: i64,
    pub images: i64,
    pub tasks: i64,
    pub compute_ms: i64,
    pub uploads: i64,
}

impl Counts {
    /// The `SUMMED` columns of a row.
    fn read(r: &impl Read) -> Result<Counts> {
        Ok(Counts {
            requests: r.read("requests")?,
            prompt_tokens: r.read("prompt_tokens")?,
            cached_tokens: r.read("cached_tokens")?,
            completion_tokens: r.read("completion_tokens")?,
            images: r.read("images")?,
            tasks: r.read("tasks")?,
            compute_ms: r.read("compute_ms")?,
            uploads: r.read("uploads")?,
        })
    }
}

/// A rollup row that is not what its records sum to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    #[serde(flatten)]
    pub group: Group,
    /// The stored counts (`None`: no such row).
    pub stored: Option<Counts>,
    /// What the records sum to (`None`: no records).
    pub summed: Option<Counts>,
}

/// Days of rollups compared at a time: bounds what an audit holds in memory.
const AUDIT_WINDOW_MS: i64 = 7 * 24 * HOUR_MS;

/// Recomputes `account_id`'s hourly and daily rollups from its records, a week at a time,
/// in one snapshot of the ledger, and returns the rows that differ.
pub async fn audit(db: &Db, account_id: i64) -> Result<Vec<Mismatch>> {
    let groups = "lineage_id, model, chip, deployment, endpoint, status, price_version_id";
    let sums: String = SUMMED
        .iter()
        .map(|c| match *c {
            "requests" => ", CAST(count(*) AS BIGINT) AS requests".to_string(),
            c => format!(", CAST(sum(r.{c}) AS BIGINT) AS {c}"),
        })
        .collect();
    // A record's day is looked up as the triggers do; records up to a day either side of
    // the window are read, and kept if their day is in it.
    let audits = [
        (
            "hourly",
            "usage_hourly",
            "hour",
            "r.started_at / 3600000 * 3600000",
            0,
        ),
        (
            "daily",
            "usage_daily",
            "day",
            "(SELECT start FROM rollup_days WHERE start <= r.started_at ORDER BY start DESC LIMIT 1)",
            2 * 24 * HOUR_MS,
        ),
    ];
    let bounds_sql = "SELECT (SELECT min(started_at) FROM usage_records WHERE account_id = $1),
                             (SELECT max(started_at) FROM usage_records WHERE account_id = $1),
                             (SELECT min(hour) FROM usage_hourly WHERE account_id = $1),
                             (SELECT max(hour) FROM usage_hourly WHERE account_id = $1),
                             (SELECT min(day) FROM usage_daily WHERE account_id = $1),
                             (SELECT max(day) FROM usage_daily WHERE account_id = $1)";
    let postgres = matches!(db, Db::Postgres(_));
    on!(db, |pool| {
        let mut tx = pool.begin().await?;
        if postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        type Bounds = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let b: Bounds = sqlx::query_as(bounds_sql)
            .bind(account_id)
            .fetch_one(&mut *tx)
            .await?;
        // Records before the retired day are gone; what sums them is checked no more.
        let retired: Option<i64> = sqlx::query_scalar("SELECT before FROM usage_retired")
            .fetch_optional(&mut *tx)
            .await?;
        let first = [b.0, b.2, b.4].into_iter().flatten().min();
        let last = [b.1, b.3, b.5].into_iter().flatten().max();
        let mut mismatches = Vec::new();
        let (Some(first), Some(last)) = (first, last) else {
            tx.commit().await?;
            return Ok(mismatches);
        };
        for (rollup, table, column, start_of, margin) in audits {
            let stored_sql = format!(
                "SELECT {column} AS start, {groups}, {} FROM {table}
                 WHERE account_id = $1 AND {column} >= $2 AND {column} < $3",
                SUMMED.join(", ")
            );
            let summed_sql = format!(
                "SELECT r.start, coalesce(k.lineage_id, k.id) AS lineage_id, r.model, r.chip,
                        coalesce(r.deployment, '') AS deployment, r.endpoint, r.status,
                        r.price_version_id{sums}
                 FROM (SELECT r.*, {start_of} AS start FROM usage_records r
                       WHERE r.account_id = $1 AND r.started_at >= $2 - {margin}
                         AND r.started_at < $3 + {margin}) r
                 JOIN api_keys k ON k.id = r.key_id
                 WHERE r.start >= $2 AND r.start < $3
                 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"
            );
            let mut from = first.div_euclid(HOUR_MS) * HOUR_MS - margin;
            if let Some(retired) = retired {
                // The first whole hour, or day (the retired day starts one), kept whole.
                let kept = match margin {
                    0 => {
                        retired.div_euclid(HOUR_MS) * HOUR_MS
                            + HOUR_MS * i64::from(retired.rem_euclid(HOUR_MS) != 0)
                    }
                    _ => retired,
                };
                from = from.max(kept);
            }
            while from <= last {
                let to = from.saturating_add(AUDIT_WINDOW_MS);
                let mut rows: BTreeMap<Group, (Option<Counts>, Option<Counts>)> = BTreeMap::new();
                for (sql, stored) in [(stored_sql.as_str(), true), (summed_sql.as_str(), false)] {
                    let found = sqlx::query(AssertSqlSafe(sql))
                        .bind(account_id)
                        .bind(from)
                        .bind(to)
                        .fetch_all(&mut *tx)
                        .await?;
                    for row in &found {
                        let (group, counts) = group_from_row(rollup, row)?;
                        let entry = rows.entry(group).or_default();
                        match stored {
                            true => entry.0 = Some(counts),
                            false => entry.1 = Some(counts),
                        }
                    }
                }
                mismatches.extend(
                    rows.into_iter()
                        .filter(|(_, (stored, summed))| stored != summed)
                        .map(|(group, (stored, summed))| Mismatch {
                            group,
                            stored,
                            summed,
                        }),
                );
                from = to;
            }
        }
        tx.commit().await?;
        Ok(mismatches)
    })
}

fn group_from_row(rollup: &'static str, r: &impl Read) -> Result<(Group, Counts)> {
    let group = Group {
        rollup,
        start: r.read("start")?,
        lineage_id: r.read("lineage_id")?,
        model: r.read("model")?,
        chip: r.read("chip")?,
        deployment: r.read("deployment")?,
        endpoint: r.read("endpoint")?,
        status: r.read("status")?,
        price_version_id: r.read("price_version_id")?,
    };
    Ok((group, Counts::read(r)?))
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
