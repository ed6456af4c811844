//! Each account's running money figures: what was topped up and what its usage records
//! cost, read as one row, never summed from the records. PostgreSQL keeps them (with the
//! held amount) in `account_funds` by triggers; SQLite, whose arithmetic on text is
//! floating point, has them kept exactly here, in the same transaction as the rows they sum
//! (`migrations/sqlite/0011_account_funds.sql`).

use std::collections::HashMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use sqlx::SqlitePool;

use super::{Db, Money, Result, StoreError};
use crate::billing::money;

/// An account's running figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Funds {
    pub topped_up: Decimal,
    pub spent: Decimal,
    /// What grants paid of the records' costs.
    pub granted: Decimal,
    /// What open grants still hold.
    pub grant_pool: Decimal,
}

impl Funds {
    /// Top-ups minus charges, plus what grants paid of them: the account's own money.
    pub fn balance(&self) -> Result<Decimal> {
        let own = money::sub(self.topped_up, self.spent)?;
        Ok(money::add(own, self.granted)?.normalize())
    }

    /// What admission counts with: the balance and what open grants still hold.
    pub fn spendable(&self) -> Result<Decimal> {
        Ok(money::add(self.balance()?, self.grant_pool)?.normalize())
    }
}

/// The running figures of `account_id` (zero for an account without any).
pub async fn of(db: &Db, account_id: i64) -> Result<Funds> {
    let row: Option<(Option<Money>, Option<Money>, Money, Money)> = super::on!(db, |pool| {
        sqlx::query_as(
            "SELECT topped_up, spent, granted, grant_pool FROM account_funds WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_optional(pool)
        .await?
    });
    match row {
        None => Ok(Funds::default()),
        Some((Some(topped_up), Some(spent), granted, grant_pool)) => Ok(Funds {
            topped_up: topped_up.0,
            spent: spent.0,
            granted: granted.0,
            grant_pool: grant_pool.0,
        }),
        Some(_) => Err(StoreError::Unavailable(anyhow::anyhow!(
            "account {account_id}'s figures are out of range of exact money or were never computed; ask the operator to check its top-ups"
        ))),
    }
}

/// The running figures of `account_id` and the newest top-up they include (0 for none),
/// read as one snapshot: SQLite commits top-ups one at a time in the order of their ids,
/// so every later top-up has a larger id.
pub async fn with_last_topup(pool: &SqlitePool, account_id: i64) -> Result<(Funds, i64)> {
    let (funds, last, _) = snapshot(pool, account_id, &[]).await?;
    Ok((funds, last))
}

/// `with_last_topup`, and in the same snapshot whether each of `request_ids` has its
/// record in the ledger (what a charge settled while the figures were read is counted in).
pub async fn snapshot(
    pool: &SqlitePool,
    account_id: i64,
    request_ids: &[String],
) -> Result<(Funds, i64, Vec<bool>)> {
    type Row = (Option<Money>, Option<Money>, Money, Money, i64);
    let mut tx = pool.begin().await?;
    let row: Option<Row> = sqlx::query_as(
        "SELECT topped_up, spent, granted, grant_pool,
                (SELECT coalesce(max(id), 0) FROM topups WHERE account_id = $1)
         FROM account_funds WHERE account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(&mut *tx)
    .await?;
    let mut present = Vec::with_capacity(request_ids.len());
    for id in request_ids {
        let query = sqlx::query("SELECT 1 FROM usage_rows WHERE request_key = $1");
        let found = super::compact::RequestKey::of(id)
            .bind(query)
            .fetch_optional(&mut *tx)
            .await?;
        present.push(found.is_some());
    }
    tx.commit().await?;
    match row {
        None => Ok((Funds::default(), 0, present)),
        Some((Some(topped_up), Some(spent), granted, grant_pool, last)) => Ok((
            Funds {
                topped_up: topped_up.0,
                spent: spent.0,
                granted: granted.0,
                grant_pool: grant_pool.0,
            },
            last,
            present,
        )),
        Some(_) => Err(StoreError::Unavailable(anyhow::anyhow!(
            "account {account_id}'s figures are out of range of exact money or were never computed; ask the operator to check its top-ups"
        ))),
    }
}

/// Adds what the records just inserted cost to their accounts' `spent`, on the ledger
/// writer's SQLite connection, inside the transaction that inserted them. An account not
/// yet computed (NULL) is left for the computation, which sums these records too.
pub fn charge(
    conn: &rusqlite::Connection,
    charged: &HashMap<i64, Decimal>,
) -> rusqlite::Result<()> {
    let mut read = conn.prepare_cached("SELECT spent FROM account_funds WHERE account_id = ?1")?;
    let mut write =
        conn.prepare_cached("UPDATE account_funds SET spent = ?2 WHERE account_id = ?1")?;
    for (&account_id, &cost) in charged {
        let spent: Option<String> = match read.query_row([account_id], |row| row.get(0)) {
            Ok(spent) => spent,
            Err(rusqlite::Error::QueryReturnedNoRows) => None,
            Err(e) => return Err(e),
        };
        let Some(spent) = spent else { continue };
        let spent = Decimal::from_str(&spent).map_err(text_error)?;
        let total = money::add(spent, cost).map_err(text_error)?;
        write.execute(rusqlite::params![account_id, total.to_string()])?;
    }
    Ok(())
}

/// Adds a top-up to its account's `topped_up` on SQLite, inside the transaction `tx` that
/// inserted it.
pub async fn credit(
    tx: &mut sqlx::SqliteConnection,
    account_id: i64,
    amount: Decimal,
) -> Result<()> {
    let current: Option<Option<Money>> =
        sqlx::query_scalar("SELECT topped_up FROM account_funds WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(Some(current)) = current {
        sqlx::query("UPDATE account_funds SET topped_up = $2 WHERE account_id = $1")
            .bind(account_id)
            .bind(Money(money::add(current.0, amount)?))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Computes, once, the running totals a ledger made before they existed lacks: each such
/// account's top-ups and record costs summed exactly, under SQLite's write lock so that
/// no import or top-up runs between the sums and their rows. Later opens find nothing to
/// do.
pub async fn compute_missing(pool: &SqlitePool) -> Result<()> {
    let missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM account_funds WHERE topped_up IS NULL OR spent IS NULL",
    )
    .fetch_one(pool)
    .await?;
    if missing == 0 {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let computed = sum_missing(&mut conn).await;
    let end = if computed.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    sqlx::query(end).execute(&mut *conn).await?;
    let accounts = computed?;
    tracing::info!(
        accounts,
        "accounts' running totals computed from the ledger, once"
    );
    Ok(())
}

async fn sum_missing(conn: &mut sqlx::SqliteConnection) -> Result<usize> {
    let accounts: Vec<i64> = sqlx::query_scalar(
        "SELECT account_id FROM account_funds WHERE topped_up IS NULL OR spent IS NULL",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut computed = 0;
    'accounts: for &account_id in &accounts {
        let mut sums = [Decimal::ZERO; 2];
        for (sum, sql) in sums.iter_mut().zip([
            "SELECT amount FROM topups WHERE account_id = $1",
            "SELECT cost FROM usage_records WHERE account_id = $1",
        ]) {
            let amounts: Vec<Money> = sqlx::query_scalar(sql)
                .bind(account_id)
                .fetch_all(&mut *conn)
                .await?;
            for amount in amounts {
                let Ok(added) = money::add(*sum, amount.0) else {
                    // Data past the bounds of exact money: that account alone fails,
                    // clearly, on its reads; the others are computed.
                    tracing::error!(account_id, "account figures out of range; left uncomputed");
                    continue 'accounts;
                };
                *sum = added;
            }
        }
        sqlx::query("UPDATE account_funds SET topped_up = $2, spent = $3 WHERE account_id = $1")
            .bind(account_id)
            .bind(Money(sums[0]))
            .bind(Money(sums[1]))
            .execute(&mut *conn)
            .await?;
        computed += 1;
    }
    Ok(computed)
}

fn text_error(e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.to_string().into())
}

/// An account's running figures beside the sums of what they total, read in one snapshot
/// of the ledger: what `tollgate ledger verify` compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// `None`: not computed (or out of range).
    pub running: Option<Funds>,
    pub summed: Funds,
    /// PostgreSQL: the running `held` and the sum of the pending holds.
    pub held: Option<(Decimal, Decimal)>,
}

/// Reads `account_id`'s running figures and sums its top-ups, record costs (streamed, so
/// any history fits in memory; with what its retired records cost) and pending holds, in
/// one snapshot.
pub async fn audit(db: &Db, account_id: i64) -> Result<Audit> {
    use futures_util::TryStreamExt;
    let postgres = matches!(db, Db::Postgres(_));
    let (running_sql, pending_sql) = match postgres {
        true => (
            "SELECT topped_up, spent, held, granted, grant_pool FROM account_funds
             WHERE account_id = $1",
            "SELECT sum(amount) FROM holds WHERE account_id = $1 AND state = 'pending'",
        ),
        // Holds live in the gateway's memory beside SQLite.
        false => (
            "SELECT topped_up, spent, NULL AS held, granted, grant_pool FROM account_funds
             WHERE account_id = $1",
            "SELECT NULL WHERE $1 IS NOT NULL",
        ),
    };
    type Row = (Option<Money>, Option<Money>, Option<Money>, Money, Money);
    let (running, summed, pending) = super::on!(db, |pool| {
        let mut tx = pool.begin().await?;
        if postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let running: Option<Row> = sqlx::query_as(running_sql)
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await?;
        // What retired records cost (`retire`), then the records still in the ledger.
        let retired: Option<Money> =
            sqlx::query_scalar("SELECT spent FROM retired_funds WHERE account_id = $1")
                .bind(account_id)
                .fetch_optional(&mut *tx)
                .await?;
        let mut summed = Funds {
            spent: retired.map_or(Decimal::ZERO, |m| m.0),
            ..Funds::default()
        };
        for (sum, sql) in [
            (
                &mut summed.topped_up,
                "SELECT amount FROM topups WHERE account_id = $1",
            ),
            (
                &mut summed.spent,
                "SELECT cost FROM usage_records WHERE account_id = $1",
            ),
            (
                &mut summed.granted,
                "SELECT amount FROM grant_uses WHERE account_id = $1",
            ),
            (
                &mut summed.grant_pool,
                "SELECT remaining FROM grants WHERE account_id = $1 AND state = 'open'",
            ),
        ] {
            let mut amounts = sqlx::query_scalar::<_, Money>(sql)
                .bind(account_id)
                .fetch(&mut *tx);
            while let Some(amount) = amounts.try_next().await? {
                *sum = money::add(*sum, amount.0)?;
            }
        }
        let pending: Option<Option<Money>> = sqlx::query_scalar(pending_sql)
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        (running, summed, pending.flatten())
    });
    let (running, held) = match running {
        Some((Some(topped_up), Some(spent), held, granted, grant_pool)) => {
            let funds = Funds {
                topped_up: topped_up.0,
                spent: spent.0,
                granted: granted.0,
                grant_pool: grant_pool.0,
            };
            (Some(funds), held.map(|h| h.0))
        }
        _ => (None, None),
    };
    Ok(Audit {
        running,
        summed,
        held: held.map(|h| (h, pending.map_or(Decimal::ZERO, |p| p.0))),
    })
}
