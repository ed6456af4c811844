//! Usage summed for reading: invoices, reports and a key's month read the hourly rollups
//! (`usage_hourly`, kept by the ledger's triggers in the same transaction as the records,
//! `migrations/*/..._usage_hourly.sql`), so their cost grows with the hours and groups of
//! the period asked, never with its records. Only the parts of a period that are not whole
//! UTC hours (its ends, a bucket edge inside an hour in a zone with a half-hour offset) are
//! summed from the records themselves, through their time index. `audit` recomputes the
//! rollups from the records for `tollgate ledger verify`.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use super::{Db, Read, Result, on};
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
    /// By time slot (an hour from the rollups, 15 minutes from records), no slot crossing
    /// any of these instants (ms): the edges of a report's local days or hours.
    pub slots: Option<&'a [i64]>,
}

/// Where a part of a period is summed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Rollups,
    Records,
}

/// `[from, to)` cut into the parts summed from the rollups (whole UTC hours crossed by no
/// edge) and from the records (the rest), in time order.
fn spans(from: i64, to: i64, edges: &[i64]) -> Vec<(Source, i64, i64)> {
    let floor = |t: i64| t.div_euclid(HOUR_MS) * HOUR_MS;
    let mut partial: Vec<i64> = [from, to]
        .iter()
        .chain(edges.iter().filter(|&&e| from < e && e < to))
        .filter(|&&t| t.rem_euclid(HOUR_MS) != 0)
        .map(|&t| floor(t))
        .collect();
    partial.sort_unstable();
    partial.dedup();
    let mut spans: Vec<(Source, i64, i64)> = Vec::new();
    let mut push = |source, a: i64, b: i64| {
        if a >= b {
            return;
        }
        match spans.last_mut() {
            Some((last, _, end)) if *last == source && *end == a => *end = b,
            _ => spans.push((source, a, b)),
        }
    };
    let mut at = from;
    for hour in partial {
        let (start, end) = (hour.max(from), hour.saturating_add(HOUR_MS).min(to));
        if end <= at {
            continue;
        }
        push(Source::Rollups, at, start);
        push(Source::Records, start.max(at), end);
        at = end;
    }
    push(Source::Rollups, at, to);
    spans
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
    for (source, from, to) in spans(from_ms, to_ms, by.slots.unwrap_or_default()) {
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

/// How SQLite would run `totals`' queries, on rollups and on records (their `EXPLAIN QUERY
/// PLAN` lines; empty on PostgreSQL, whose plans depend on statistics): what a test checks
/// for full scans.
pub async fn plan_of_totals(db: &Db, scope: Scope, by: By<'_>) -> Result<Vec<String>> {
    let Db::Sqlite(pool) = db else {
        return Ok(Vec::new());
    };
    let mut plan = Vec::new();
    for source in [Source::Rollups, Source::Records] {
        let sql = format!("EXPLAIN QUERY PLAN {}", totals_sql(source, scope, by));
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(0i64)
            .bind(1i64)
            .bind(scope.id())
            .fetch_all(pool)
            .await?;
        for row in &rows {
            plan.push(row.read::<String>("detail")?);
        }
    }
    Ok(plan)
}

fn totals_sql(source: Source, scope: Scope, by: By) -> String {
    let (table, time, requests, lineage, slot) = match source {
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
    let scope = match scope {
        Scope::All => "$3 = 0".to_string(),
        Scope::Account(_) => "r.account_id = $3".to_string(),
        Scope::Lineage(_) => format!("{lineage} = $3"),
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
    Ok(Totals {
        account_id: r.read("account_id")?,
        lineage_id: r.read("lineage_id")?,
        model: r.read("model")?,
        chip: r.read("chip")?,
        price_version_id: r.read("price_version_id")?,
        slot_ms: r.read("slot")?,
        requests: r.read("requests")?,
        ok_requests: r.read("ok_requests")?,
        prompt_tokens: r.read("prompt_tokens")?,
        cached_tokens: r.read("cached_tokens")?,
        completion_tokens: r.read("completion_tokens")?,
        images: r.read("images")?,
        tasks: r.read("tasks")?,
        compute_ms: r.read("compute_ms")?,
        uploads: r.read("uploads")?,
    })
}

/// What identifies a rollup row (its account aside).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Group {
    pub hour: i64,
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

/// Recomputes `account_id`'s rollups from its records, a week at a time, in one snapshot of
/// the ledger, and returns the rows that differ.
pub async fn audit(db: &Db, account_id: i64) -> Result<Vec<Mismatch>> {
    let group_columns = "hour, lineage_id, model, chip, deployment, endpoint, status, \
                         price_version_id";
    let stored_sql = format!(
        "SELECT {group_columns}, {} FROM usage_hourly
         WHERE account_id = $1 AND hour >= $2 AND hour < $3",
        SUMMED.join(", ")
    );
    let sums: String = SUMMED
        .iter()
        .map(|c| match *c {
            "requests" => ", CAST(count(*) AS BIGINT) AS requests".to_string(),
            c => format!(", CAST(sum(r.{c}) AS BIGINT) AS {c}"),
        })
        .collect();
    let summed_sql = format!(
        "SELECT r.started_at / 3600000 * 3600000 AS hour,
                coalesce(k.lineage_id, k.id) AS lineage_id, r.model, r.chip,
                coalesce(r.deployment, '') AS deployment, r.endpoint, r.status,
                r.price_version_id{sums}
         FROM usage_records r JOIN api_keys k ON k.id = r.key_id
         WHERE r.account_id = $1 AND r.started_at >= $2 AND r.started_at < $3
         GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"
    );
    let bounds_sql = "SELECT (SELECT min(hour) FROM usage_hourly WHERE account_id = $1),
                             (SELECT max(hour) FROM usage_hourly WHERE account_id = $1),
                             (SELECT min(started_at) FROM usage_records WHERE account_id = $1),
                             (SELECT max(started_at) FROM usage_records WHERE account_id = $1)";
    let postgres = matches!(db, Db::Postgres(_));
    on!(db, |pool| {
        let mut tx = pool.begin().await?;
        if postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        type Bounds = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let bounds: Bounds = sqlx::query_as(bounds_sql)
            .bind(account_id)
            .fetch_one(&mut *tx)
            .await?;
        let first = [bounds.0, bounds.2].into_iter().flatten().min();
        let last = [bounds.1, bounds.3].into_iter().flatten().max();
        let mut mismatches = Vec::new();
        if let (Some(first), Some(last)) = (first, last) {
            let mut from = first.div_euclid(HOUR_MS) * HOUR_MS;
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
                        let (group, counts) = group_from_row(row)?;
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

fn group_from_row(r: &impl Read) -> Result<(Group, Counts)> {
    let group = Group {
        hour: r.read("hour")?,
        lineage_id: r.read("lineage_id")?,
        model: r.read("model")?,
        chip: r.read("chip")?,
        deployment: r.read("deployment")?,
        endpoint: r.read("endpoint")?,
        status: r.read("status")?,
        price_version_id: r.read("price_version_id")?,
    };
    let counts = Counts {
        requests: r.read("requests")?,
        prompt_tokens: r.read("prompt_tokens")?,
        cached_tokens: r.read("cached_tokens")?,
        completion_tokens: r.read("completion_tokens")?,
        images: r.read("images")?,
        tasks: r.read("tasks")?,
        compute_ms: r.read("compute_ms")?,
        uploads: r.read("uploads")?,
    };
    Ok((group, counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Source::{Records, Rollups};

    const H: i64 = HOUR_MS;

    #[test]
    fn whole_hours_come_from_rollups_and_the_rest_from_records() {
        // A period on the hour: rollups alone.
        assert_eq!(spans(0, 24 * H, &[]), [(Rollups, 0, 24 * H)]);
        // Ragged ends: records for the part hours.
        assert_eq!(
            spans(H / 2, 3 * H + 60_000, &[]),
            [
                (Records, H / 2, H),
                (Rollups, H, 3 * H),
                (Records, 3 * H, 3 * H + 60_000)
            ]
        );
        // Within one hour: records alone.
        assert_eq!(spans(10, 20, &[]), [(Records, 10, 20)]);
        // Edges on the hour change nothing; an edge inside an hour (a +05:30 zone's
        // midnight) makes that hour come from records, so that no slot crosses it.
        assert_eq!(spans(0, 4 * H, &[H, 2 * H]), [(Rollups, 0, 4 * H)]);
        assert_eq!(
            spans(0, 4 * H, &[H + H / 2, 99 * H + 1]),
            [
                (Rollups, 0, H),
                (Records, H, 2 * H),
                (Rollups, 2 * H, 4 * H)
            ]
        );
        // Part hours side by side are one span.
        assert_eq!(spans(H / 2, 2 * H, &[H + 1]), [(Records, H / 2, 2 * H)]);
        assert!(spans(5, 5, &[]).is_empty());
    }
}
