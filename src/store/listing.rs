//! Listings of usage records, newest first, a keyset page at a time (`before`: the last
//! record of the previous page), on indexes whatever the history: never an offset, never
//! a sort of an account's records. A listing narrowed by model, chip, status,
//! deployment or endpoint (values no index of the records holds) asks the rollups which days, then
//! which hours, hold such records, and walks only those hours.

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::usage::{StoredRecord, from_row};
use super::{Db, Read, Result, on, rollups};

/// Filters for listing records; all optional. Times are milliseconds, `[from, to)`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct UsageFilter {
    pub account_id: Option<i64>,
    pub key_id: Option<i64>,
    pub model: Option<String>,
    pub chip: Option<String>,
    pub status: Option<String>,
    pub deployment: Option<String>,
    /// The endpoint a record names (`chat`, `generation`, `image_task`, ...).
    pub endpoint: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Records before this (started at, id) in the listing's order: the previous page's
    /// last, for keyset paging.
    pub before: Option<(i64, i64)>,
}

impl UsageFilter {
    /// Whether it names a model, chip, status, deployment or endpoint: values no index of
    /// the records holds, found through the rollups.
    fn narrows(&self) -> bool {
        self.model.is_some()
            || self.chip.is_some()
            || self.status.is_some()
            || self.deployment.is_some()
            || self.endpoint.is_some()
    }

    /// `[lower, upper)` of the start times listed: the range asked, ending at the
    /// cursor's millisecond (included).
    fn bounds(&self) -> (i64, i64) {
        let lower = self.from_ms.unwrap_or(i64::MIN);
        let mut upper = self.to_ms.unwrap_or(i64::MAX);
        if let Some((at, _)) = self.before {
            upper = upper.min(at.saturating_add(1));
        }
        (lower, upper)
    }
}

/// Newest first (by start time, then id), at most `limit`, whatever the history: an index
/// walk on either ledger (by account or key: their (·, started_at) indexes, which SQLite
/// ends with the id; otherwise `usage_records_time`), never a sort of all of it. A listing
/// narrowed by model, chip, status or deployment walks only the hours whose rollups hold
/// such records, newest first, found day by day (`candidates`).
pub async fn list(db: &Db, filter: &UsageFilter, limit: i64) -> Result<Vec<StoredRecord>> {
    if !filter.narrows() {
        return walk(db, filter, limit).await;
    }
    let mut found = Vec::new();
    // Retired records are gone though their rollups stay: no hour before is walked.
    let retired = super::retire::retired_before(db).await?.unwrap_or(i64::MIN);
    let (lower, mut upper) = filter.bounds();
    let lower = lower.max(retired);
    while (found.len() as i64) < limit && lower < upper {
        let hours = candidates(db, filter, lower, upper).await?;
        let Some(&oldest) = hours.last() else { break };
        for hour in hours {
            let within = UsageFilter {
                from_ms: Some(hour.max(lower)),
                to_ms: Some(hour.saturating_add(rollups::HOUR_MS).min(upper)),
                ..filter.clone()
            };
            found.extend(walk(db, &within, limit - found.len() as i64).await?);
            if found.len() as i64 >= limit {
                break;
            }
        }
        upper = oldest;
    }
    Ok(found)
}

/// The hours before `upper` (and from `lower`'s) that hold records `filter` would list,
/// newest first: those of the newest day that holds some, by the daily rollups (when the
/// ledger keeps them; else the newest 24 hours that hold some).
async fn candidates(db: &Db, filter: &UsageFilter, lower: i64, upper: i64) -> Result<Vec<i64>> {
    let floor = lower
        .div_euclid(rollups::HOUR_MS)
        .saturating_mul(rollups::HOUR_MS);
    let mut upper = upper;
    while floor < upper {
        let (from, to) = match newest_day(db, filter, floor, upper).await? {
            Some(Day::Found(start, end)) => (start.max(floor), end.min(upper)),
            Some(Day::None) => return Ok(Vec::new()),
            None => (floor, upper),
        };
        let hours: Vec<i64> = on!(db, |pool| {
            let mut query = QueryBuilder::new("SELECT DISTINCT hour FROM usage_hourly r WHERE ");
            push_rollup_filter(&mut query, filter, EVERY_ACCOUNT, "hour", from, to);
            query.push(" ORDER BY hour DESC LIMIT 24");
            query.build_query_scalar().fetch_all(pool).await?
        });
        // A day whose records of this kind all start at or after `upper`: the one before.
        if !hours.is_empty() || from == floor {
            return Ok(hours);
        }
        upper = from;
    }
    Ok(Vec::new())
}

/// The rollups' condition for a listing over every account.
const EVERY_ACCOUNT: &str = "r.account_id IN (SELECT id FROM accounts)";

/// What the daily rollups say of the newest day before `upper` with records `filter`
/// would list.
enum Day {
    /// Its start and the next day's.
    Found(i64, i64),
    /// No day holds any.
    None,
}

/// `None`: the ledger keeps no daily rollups.
async fn newest_day(db: &Db, filter: &UsageFilter, floor: i64, upper: i64) -> Result<Option<Day>> {
    let kept: Option<String> = on!(db, |pool| {
        sqlx::query_scalar("SELECT zone FROM rollup_zone")
            .fetch_optional(pool)
            .await?
    });
    if kept.is_none() {
        return Ok(None);
    }
    // The day that holds `floor` begins before it.
    let from = floor.saturating_sub(2 * 24 * rollups::HOUR_MS);
    // Over every account, each account's newest day is sought on its own (the rollups'
    // key leads with the account, then the day): one short walk back per account, where
    // one query over all of them would read every account's days.
    let every = filter.key_id.is_none() && filter.account_id.is_none();
    let day: Option<i64> = on!(db, |pool| {
        let mut query = QueryBuilder::new(match every {
            true => "SELECT max((SELECT max(day) FROM usage_daily r WHERE ",
            false => "SELECT max(day) FROM usage_daily r WHERE ",
        });
        push_rollup_filter(
            &mut query,
            filter,
            "r.account_id = a.id",
            "day",
            from,
            upper,
        );
        if every {
            query.push(")) FROM accounts a");
        }
        query.build_query_scalar().fetch_one(pool).await?
    });
    let Some(day) = day else {
        return Ok(Some(Day::None));
    };
    let end: Option<i64> = on!(db, |pool| {
        sqlx::query_scalar("SELECT min(start) FROM rollup_days WHERE start > $1")
            .bind(day)
            .fetch_one(pool)
            .await?
    });
    Ok(Some(Day::Found(day, end.unwrap_or(i64::MAX))))
}

/// The conditions on a rollup table (as `r`) for `filter`'s accounts (the primary key's
/// first column: all, one, or a key's and its lineage), its values, and `[from, to)` on
/// its `time` column.
fn push_rollup_filter<DB: Database>(
    query: &mut QueryBuilder<DB>,
    filter: &UsageFilter,
    every_account: &str,
    time: &str,
    from: i64,
    to: i64,
) where
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    match (filter.key_id, filter.account_id) {
        (Some(key), _) => {
            query.push("r.account_id = (SELECT account_id FROM api_keys WHERE id = ");
            query.push_bind(key);
            query.push(
                ") AND r.lineage_id = (SELECT coalesce(lineage_id, id) FROM api_keys WHERE id = ",
            );
            query.push_bind(key).push(")");
        }
        (None, Some(account)) => {
            query.push("r.account_id = ").push_bind(account);
        }
        (None, None) => {
            query.push(every_account);
        }
    }
    query.push(format!(" AND r.{time} >= ")).push_bind(from);
    query.push(format!(" AND r.{time} < ")).push_bind(to);
    let deployment = filter.deployment.clone();
    for (condition, value) in [
        (" AND r.model = ", &filter.model),
        (" AND r.chip = ", &filter.chip),
        (" AND r.status = ", &filter.status),
        (" AND r.deployment = ", &deployment),
        (" AND r.endpoint = ", &filter.endpoint),
    ] {
        if let Some(v) = value {
            query.push(condition).push_bind(v.clone());
        }
    }
}

/// The records `filter` lists, newest first, at most `limit`, by one walk of an index.
async fn walk(db: &Db, filter: &UsageFilter, limit: i64) -> Result<Vec<StoredRecord>> {
    on!(db, |pool| {
        let mut query = QueryBuilder::new("SELECT * FROM usage_records WHERE 1 = 1");
        push_listing(&mut query, filter, limit);
        let rows = query.build().fetch_all(pool).await?;
        rows.iter().map(from_row).collect()
    })
}

/// How the ledger would run `list`'s walk of the records (within one hour for a narrowed
/// listing, as `list` walks it): SQLite's `EXPLAIN QUERY PLAN` lines, or PostgreSQL's
/// `EXPLAIN` (whose plan depends on the statistics it has): what a test checks for full
/// scans and sorts.
pub async fn plan_of_list(db: &Db, filter: &UsageFilter, limit: i64) -> Result<Vec<String>> {
    let mut walked = filter.clone();
    if filter.narrows() {
        // The hour `list` walks first: the newest that holds such records (else the
        // hour of the bounds asked).
        let (lower, upper) = filter.bounds();
        let asked = match upper {
            i64::MAX => lower.max(0),
            upper => upper - 1,
        };
        let newest = candidates(db, filter, lower, upper).await?.first().copied();
        let hour = newest.unwrap_or(asked.div_euclid(rollups::HOUR_MS) * rollups::HOUR_MS);
        walked.from_ms = Some(hour);
        walked.to_ms = Some(hour.saturating_add(rollups::HOUR_MS));
    }
    let (explain, column) = super::explain(db);
    on!(db, |pool| {
        let mut query =
            QueryBuilder::new(format!("{explain} SELECT * FROM usage_records WHERE 1 = 1"));
        push_listing(&mut query, &walked, limit);
        let rows = query.build().fetch_all(pool).await?;
        rows.iter().map(|row| row.read::<String>(column)).collect()
    })
}

/// The listing's conditions, keyset and order.
fn push_listing<DB: Database>(query: &mut QueryBuilder<DB>, filter: &UsageFilter, limit: i64)
where
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    push_filter(query, filter);
    // A range the index seeks to (`started_at <=`), then the ties of that millisecond.
    if let Some((started_at, id)) = filter.before {
        query.push(" AND started_at <= ").push_bind(started_at);
        query.push(" AND (started_at < ").push_bind(started_at);
        query.push(" OR id < ").push_bind(id).push(")");
    }
    query
        .push(" ORDER BY started_at DESC, id DESC LIMIT ")
        .push_bind(limit);
}

/// `filter`'s conditions, each ` AND ...`.
fn push_filter<DB: Database>(query: &mut QueryBuilder<DB>, filter: &UsageFilter)
where
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    let numbers = [
        (" AND account_id = ", filter.account_id),
        (" AND key_id = ", filter.key_id),
        (" AND started_at >= ", filter.from_ms),
        (" AND started_at < ", filter.to_ms),
    ];
    for (condition, value) in numbers {
        if let Some(v) = value {
            query.push(condition).push_bind(v);
        }
    }
    let texts = [
        (" AND model = ", &filter.model),
        (" AND chip = ", &filter.chip),
        (" AND status = ", &filter.status),
        (" AND deployment = ", &filter.deployment),
        (" AND endpoint = ", &filter.endpoint),
    ];
    for (condition, value) in texts {
        if let Some(v) = value {
            query.push(condition).push_bind(v.clone());
        }
    }
}
