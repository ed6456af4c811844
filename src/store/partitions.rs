//! PostgreSQL keeps usage records in one partition per UTC month
//! (`migrations/postgres/0012_usage_partitions.sql`): months are created ahead, retired
//! months are dropped whole. SQLite has one table; every function here leaves it as it is.

use chrono::{DateTime, Duration, Utc};

use super::{Db, Money, Result, to_ms};

/// How far ahead of now the months are created: a replica that stops keeping them (its
/// hourly job stopped) leaves this much time before records go to the default partition.
const AHEAD: Duration = Duration::days(92);

/// Creates the partitions of this month and of the months up to `AHEAD`, and of every
/// month whose records wait in the default partition; returns how many it created.
pub async fn keep_ahead(db: &Db, now: DateTime<Utc>) -> Result<i32> {
    keep(db, (to_ms(now), to_ms(now + AHEAD))).await
}

/// Creates the partitions of every month from `from` to `to` (ms), e.g. the months an
/// import writes, so that their records do not go through the default partition.
pub async fn keep(db: &Db, (from, to): (i64, i64)) -> Result<i32> {
    let Db::Postgres(pool) = db else {
        return Ok(0);
    };
    Ok(sqlx::query_scalar("SELECT keep_usage_partitions($1, $2)")
        .bind(from)
        .bind(to)
        .fetch_one(pool)
        .await?)
}

/// Of `records` (request id, start in ms), the request ids PostgreSQL holds with another
/// start: such a record is no replay of the stored one, and storing it would give one
/// request id two records. PostgreSQL's unique key is the id with its start (one index
/// per month), so an import asks before writing; SQLite's is the id alone, and its writer
/// refuses such a record itself (`usage::insert`).
pub async fn stored_at_other_times(db: &Db, records: &[(&str, i64)]) -> Result<Vec<String>> {
    clashes(db, "", records).await
}

/// Each id looked up in each month's index of request ids (a lateral probe: a batch never
/// makes the planner scan the records instead).
const CLASHES: &str = "SELECT b.id FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS b(id, start)
     CROSS JOIN LATERAL (
         SELECT 1 FROM usage_records r
         WHERE r.request_id = b.id AND r.started_at <> b.start LIMIT 1) r";

/// `stored_at_other_times`, or with `explain` its plan, a line a row.
async fn clashes(db: &Db, explain: &str, records: &[(&str, i64)]) -> Result<Vec<String>> {
    let Db::Postgres(pool) = db else {
        return Ok(Vec::new());
    };
    Ok(
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("{explain} {CLASHES}")))
            .bind(records.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(records.iter().map(|r| r.1).collect::<Vec<_>>())
            .fetch_all(pool)
            .await?,
    )
}

/// The plan of `stored_at_other_times` for `records` (PostgreSQL; SQLite: none).
pub async fn plan_of_stored_at_other_times(
    db: &Db,
    records: &[(&str, i64)],
) -> Result<Vec<String>> {
    clashes(db, "EXPLAIN", records).await
}

/// The first millisecond after the month a partition named `usage_records_yYYYYmMM` holds.
fn month_end(partition: &str) -> Option<i64> {
    let month = partition.strip_prefix("usage_records_y")?;
    let (year, month) = month.split_once('m')?;
    let (year, month): (i32, u32) = (year.parse().ok()?, month.parse().ok()?);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let start = chrono::NaiveDate::from_ymd_opt(year, month, 1)?.and_hms_opt(0, 0, 0)?;
    Some(start.and_utc().timestamp_millis())
}

/// PostgreSQL: drops every month that ended before the retired day (`usage_retired`),
/// each in one transaction with what its records cost added to `retired_funds`; returns
/// how many records went. The records after the last whole month are retired in batches
/// (`retire::batch`), as on SQLite.
pub async fn drop_retired_months(db: &Db) -> Result<u64> {
    let Db::Postgres(pool) = db else {
        return Ok(0);
    };
    let Some(before) = super::retire::retired_before(db).await? else {
        return Ok(0);
    };
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::TEXT FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'usage_records'::regclass
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let months = partitions
        .into_iter()
        .filter(|p| month_end(p).is_some_and(|end| end <= before));
    let mut dropped = 0;
    for month in months {
        let mut tx = pool.begin().await?;
        // No writer adds to the month meanwhile (the retired period takes none anyway).
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {month} IN SHARE MODE"
        )))
        .execute(&mut *tx)
        .await?;
        let spent: Vec<(i64, Money, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT account_id, sum(cost), count(*) FROM {month} GROUP BY account_id"
        )))
        .fetch_all(&mut *tx)
        .await?;
        let costs: Vec<(i64, Money)> = spent.iter().map(|s| (s.0, s.1)).collect();
        super::retire::add_spent(&mut tx, &costs).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {month}")))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        dropped += spent.iter().map(|s| s.2 as u64).sum::<u64>();
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::month_end;

    #[test]
    fn a_partition_name_says_where_its_month_ends() {
        let end = |y, m| {
            chrono::NaiveDate::from_ymd_opt(y, m, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_millis()
        };
        assert_eq!(month_end("usage_records_y2026m11"), Some(end(2026, 12)));
        assert_eq!(month_end("usage_records_y2026m12"), Some(end(2027, 1)));
        assert_eq!(month_end("usage_records_default"), None);
        assert_eq!(month_end("usage_records_y2026m13"), None);
    }
}
