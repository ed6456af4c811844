//! Retiring old usage records (`tollgate usage retire`): the records that started before a
//! day are deleted in bounded batches, each batch in one transaction with the sum of its
//! costs added to its accounts' `retired_funds`, while the rollups, running totals and
//! invoices that sum them stay as they are. The day is recorded first (`usage_retired`):
//! from then on the ledger takes no record of the retired period (it would be summed
//! twice), sums that would need its records are refused, and the audit checks the records
//! from that day on (`migrations/*/..._usage_rollups.sql`).

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::{Db, Money, Result, on};
use crate::billing::money;

/// The start (ms) of the first day whose records are all kept: records that started
/// before it may be retired. `None`: nothing was ever retired.
pub async fn retired_before(db: &Db) -> Result<Option<i64>> {
    Ok(on!(db, |pool| {
        sqlx::query_scalar("SELECT before FROM usage_retired")
            .fetch_optional(pool)
            .await?
    }))
}

/// Records that the records before `before_ms` are retired (or will be, batch by batch);
/// an earlier day already recorded is moved forward, never back.
pub async fn mark(db: &Db, before_ms: i64) -> Result<()> {
    on!(db, |pool| {
        sqlx::query(
            "INSERT INTO usage_retired (id, before) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET before = excluded.before
             WHERE usage_retired.before < excluded.before",
        )
        .bind(before_ms)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Deletes up to `limit` of the oldest records that started before the retired day, in
/// one transaction with their costs added to `retired_funds`; returns how many.
pub async fn batch(db: &Db, limit: i64) -> Result<u64> {
    const OLDEST: &str = "SELECT id FROM usage_records
         WHERE started_at < (SELECT before FROM usage_retired)
         ORDER BY started_at LIMIT $1";
    let gone: Vec<(i64, Money)> = match db {
        Db::Sqlite(pool) => {
            // SQLite's records are the rows behind its `usage_records` view (`compact`):
            // their costs are read through it, under the write lock, then the rows go
            // (their details with them).
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let gone: Vec<(i64, Money)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT account_id, cost FROM usage_records WHERE id IN ({OLDEST})"
            )))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM usage_rows WHERE id IN ({OLDEST})"
            )))
            .bind(limit)
            .execute(&mut *tx)
            .await?;
            debug_assert_eq!(deleted.rows_affected(), gone.len() as u64);
            let mut spent: HashMap<i64, Decimal> = HashMap::new();
            for (account_id, cost) in &gone {
                let sum = spent.entry(*account_id).or_default();
                *sum = money::add(*sum, cost.0)?;
            }
            for (account_id, cost) in spent {
                let before: Option<Money> =
                    sqlx::query_scalar("SELECT spent FROM retired_funds WHERE account_id = $1")
                        .bind(account_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let total = money::add(before.map_or(Decimal::ZERO, |m| m.0), cost)?;
                sqlx::query(
                    "INSERT INTO retired_funds (account_id, spent) VALUES ($1, $2)
                     ON CONFLICT (account_id) DO UPDATE SET spent = excluded.spent",
                )
                .bind(account_id)
                .bind(Money(total))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            gone
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let gone: Vec<(i64, Money)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "DELETE FROM usage_records WHERE id IN ({OLDEST}) RETURNING account_id, cost"
            )))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            add_spent(&mut tx, &gone).await?;
            tx.commit().await?;
            gone
        }
    };
    Ok(gone.len() as u64)
}

/// PostgreSQL: adds what retired records cost (account, cost; an account may repeat) to
/// their accounts' `retired_funds`, in the transaction that retires them.
pub(super) async fn add_spent(tx: &mut sqlx::PgConnection, costs: &[(i64, Money)]) -> Result<()> {
    sqlx::query(
        "INSERT INTO retired_funds (account_id, spent)
         SELECT a, sum(c) FROM UNNEST($1::BIGINT[], $2::NUMERIC[]) AS g(a, c)
         GROUP BY a
         ON CONFLICT (account_id)
         DO UPDATE SET spent = retired_funds.spent + excluded.spent",
    )
    .bind(costs.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(costs.iter().map(|c| c.1.0).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Runs `work` unless another process of the ledger is running it (PostgreSQL replicas:
/// an advisory lock held on a connection of its own meanwhile); `None` if another is.
pub async fn one_at_a_time<T>(
    db: &Db,
    work: impl AsyncFnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    /// The advisory lock's key: "tollgate retire".
    const LOCK: i64 = 0x746f_6c6c_7265_7469;
    let Db::Postgres(pool) = db else {
        return work().await.map(Some);
    };
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let done = work().await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK)
        .execute(&mut *conn)
        .await?;
    done.map(Some)
}

/// What the retired records of `account_id` cost, all told.
pub async fn spent(db: &Db, account_id: i64) -> Result<Decimal> {
    let spent: Option<Money> = on!(db, |pool| {
        sqlx::query_scalar("SELECT spent FROM retired_funds WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(pool)
            .await?
    });
    Ok(spent.map_or(Decimal::ZERO, |m| m.0))
}
