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

/// Reserves `hold.amount` if the account has it available (top-ups - charges + granted +
/// what open grants hold - holds + credit) and its figures are amounts this version can compute with (data written past
/// the bounds of `billing::money` by an older version is not); returns whether it did. One
/// statement: the check and the reservation cannot be split by another replica's.
pub async fn reserve(pool: &PgPool, hold: &NewHold<'_>) -> Result<bool> {
    let reserved = sqlx::query(
        "WITH reserved AS (
             UPDATE account_funds f SET held = f.held + $2
             FROM accounts a
             WHERE f.account_id = $1 AND a.id = $1
               AND f.topped_up - f.spent + f.granted + f.grant_pool
                   + COALESCE(a.credit_limit, 0) <= $7
               AND ((a.billing_mode = 'postpaid' AND a.credit_limit IS NULL)
                    OR f.topped_up - f.spent + f.granted + f.grant_pool - f.held - $2
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
        "SELECT (f.topped_up - f.spent + f.granted + f.grant_pool - f.held
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

/// The account's running figures as admission counts with them: top-ups minus charges
/// plus grants (paid and still held), and what pending holds reserve (`None`: no such account).
pub async fn funds(pool: &PgPool, account_id: i64) -> Result<Option<(Decimal, Decimal)>> {
    let row: Option<(Money, Money)> = sqlx::query_as(
        "SELECT topped_up - spent + granted + grant_pool, held FROM account_funds
             WHERE account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(balance, held)| (balance.0, held.0)))
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

/// Which expired holds the reconciler may void: their records can no longer come.
pub struct Abandoned<'a> {
    /// Holds that expired before this.
    pub now: DateTime<Utc>,
    /// The reconciling replica: its own expired holds are void once every record it still
    /// spools was appended after they expired (`spooled_since`, or `now` with none).
    pub replica: &'a str,
    pub spooled_since: DateTime<Utc>,
    /// Whether other replicas' holds may be voided: only when the reconciler has been in
    /// touch with the database long enough (two heartbeats) for every live replica to
    /// have written its heartbeat since (after an outage, none has).
    pub others: bool,
}

/// Voids the pending holds whose records can no longer come, and forgets settled ones
/// after a day, unless another replica is doing it (`None` then): under an advisory lock,
/// so running it twice or on every replica at once is safe. An expired hold is voided
/// only if the replica that took it is dead (no heartbeat for `replicas::ALIVE_MS`), or is
/// this one and no longer spools a record from before the hold expired: never while a
/// live replica may still ship its record (voiding it then would let the account spend
/// the amount twice). Returns how many were voided.
pub async fn void_abandoned(pool: &PgPool, what: &Abandoned<'_>) -> Result<Option<u64>> {
    let now = what.now;
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RECONCILER_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    let voided = sqlx::query(
        "UPDATE holds h SET state = 'voided'
         WHERE h.state = 'pending' AND h.expires_at < $1
           AND CASE WHEN h.replica = $2 THEN h.expires_at < $3
               ELSE $4 AND NOT EXISTS (
                   SELECT 1 FROM replicas r WHERE r.name = h.replica AND r.seen_at >= $5)
               END",
    )
    .bind(to_ms(now))
    .bind(what.replica)
    .bind(to_ms(what.spooled_since))
    .bind(what.others)
    .bind(to_ms(now) - super::replicas::ALIVE_MS)
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
