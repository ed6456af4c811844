//! The rollups' audit (`tollgate ledger verify`): every hourly and daily row summed again
//! from the records, a week at a time in one snapshot per account, each differing row named.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use super::{HOUR_MS, SUMMED};
use crate::store::{Db, Read, Result, on};

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
    pub cache_write_tokens: i64,
    pub reasoning_tokens: i64,
}

impl Counts {
    /// The `SUMMED` columns of a row.
    pub(super) fn read(r: &impl Read) -> Result<Counts> {
        Ok(Counts {
            requests: r.read("requests")?,
            prompt_tokens: r.read("prompt_tokens")?,
            cached_tokens: r.read("cached_tokens")?,
            completion_tokens: r.read("completion_tokens")?,
            images: r.read("images")?,
            tasks: r.read("tasks")?,
            compute_ms: r.read("compute_ms")?,
            uploads: r.read("uploads")?,
            cache_write_tokens: r.read("cache_write_tokens")?,
            reasoning_tokens: r.read("reasoning_tokens")?,
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
    let bounds_sql = "SELECT (SELECT started_at FROM usage_records WHERE account_id = $1
                              ORDER BY started_at LIMIT 1),
                             (SELECT started_at FROM usage_records WHERE account_id = $1
                              ORDER BY started_at DESC LIMIT 1),
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
