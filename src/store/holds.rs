//! Spending holds in PostgreSQL (`migrations/postgres/0002_spending_holds.sql`): reserved
//! by one conditional update of the account's funds, posted by the insert of the request's
//! record, voided when the request ends without one or when it expires. The figures move
//! only through the triggers there.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::{Money, Result, to_ms};
use crate::error::Overflow;

/// PostgreSQL advisory lock that makes one replica at a time void expired holds.
const RECONCILER_LOCK: i64 = 0x746f_6c6c_6761_7401;

/// How long settled holds are kept for operators to look at.
const KEEP_SETTLED_MS: i64 = 24 * 3600 * 1000;

/// A new pending hold.
pub struct NewHold<'a> {
    pub request_id: &'a str,
    pub account_id: i64,
    pub amount: Decimal,
    pub replica: &'a str,
    pub expires_at: DateTime<Utc>,
}

/// Reserves `hold.amount` if the account has it available (top-ups - charges - holds +
/// credit) and its figures are amounts this version can compute with (data written past
/// the bounds of `billing::money` by an older version is not); returns whether it did. One
/// statement: the check and the reservation cannot be split by another replica's.
pub async fn reserve(pool: &PgPool, hold: &NewHold<'_>) -> Result<bool> {
    let reserved = sqlx::query(
        "WITH reserved AS (
             UPDATE account_funds f SET held = f.held + $2
             FROM accounts a
             WHERE f.account_id = $1 AND a.id = $1
               AND f.topped_up - f.spent + COALESCE(a.credit_limit, 0) <= $7
               AND ((a.billing_mode = 'postpaid' AND a.credit_limit IS NULL)
                    OR f.topped_up - f.spent - f.held - $2
                       + CASE WHEN a.billing_mode = 'prepaid' THEN 0 ELSE a.credit_limit END
                       >= 0)
             RETURNING f.account_id)
         INSERT INTO holds (request_id, account_id, amount, replica, created_at, expires_at)
         SELECT $3, account_id, $2, $4, $5, $6 FROM reserved",
    )
    .bind(hold.account_id)
    .bind(Money(hold.amount))
    .bind(hold.request_id)
    .bind(hold.replica)
    .bind(to_ms(Utc::now()))
    .bind(to_ms(hold.expires_at))
    .bind(Money(Decimal::MAX))
    .execute(pool)
    .await?;
    Ok(reserved.rows_affected() == 1)
}

/// What the account has available now (`None`: no limit); `Overflow` if that is beyond
/// what exact money in this version can hold.
pub async fn available(pool: &PgPool, account_id: i64) -> Result<Option<Decimal>> {
    let available: Option<Option<String>> = sqlx::query_scalar(
        "SELECT (f.topped_up - f.spent - f.held
                 + CASE WHEN a.billing_mode = 'prepaid' THEN 0 ELSE a.credit_limit END)::text
         FROM account_funds f JOIN accounts a ON a.id = f.account_id
         WHERE f.account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(pool)
    .await?;
    available
        .flatten()
        .map(|text| Decimal::from_str(&text).map_err(|_| anyhow::Error::from(Overflow).into()))
        .transpose()
}

/// Gives a pending hold back (its request ended without a record).
pub async fn void(pool: &PgPool, request_id: &str) -> Result<()> {
    sqlx::query("UPDATE holds SET state = 'voided' WHERE request_id = $1 AND state = 'pending'")
        .bind(request_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// What pending holds of the account reserve.
pub async fn held(pool: &PgPool, account_id: i64) -> Result<Decimal> {
    let held: Option<Money> =
        sqlx::query_scalar("SELECT held FROM account_funds WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(pool)
            .await?;
    Ok(held.map_or(Decimal::ZERO, |m| m.0))
}

/// Voids the pending holds that expired before `now` and forgets settled ones after a
/// day, unless another replica is doing it (`None` then): under an advisory lock, so
/// running it twice or on every replica at once is safe. Returns how many were voided.
pub async fn void_expired(pool: &PgPool, now: DateTime<Utc>) -> Result<Option<u64>> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RECONCILER_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    let voided = sqlx::query(
        "UPDATE holds SET state = 'voided' WHERE state = 'pending' AND expires_at < $1",
    )
    .bind(to_ms(now))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM holds WHERE state <> 'pending' AND created_at < $1")
        .bind(to_ms(now) - KEEP_SETTLED_MS)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(voided))
}

/// Pending holds that `replica` took.
pub async fn pending_of(pool: &PgPool, replica: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM holds WHERE state = 'pending' AND replica = $1")
            .bind(replica)
            .fetch_one(pool)
            .await?,
    )
}
