//! Credit grants (`migrations/*/..._grants.sql`): issued once per idempotency key, burned
//! by the records that insert (`burn_sqlite` on the ledger writer's connection,
//! `burn_postgres` in the insert's transaction, both by `billing::grants::burn`), opened and
//! closed at their effective and expiry times (`due`). Every move of a grant's money moves
//! its account's `granted` or `grant_pool` in the same transaction.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{Db, Money, Read, Result, StoreError, from_ms, on, to_ms};
use crate::billing::grants::{self, Charge, Held, Use};
use crate::billing::money;
use crate::billing::record::UsageRecord;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub id: i64,
    pub account_id: i64,
    /// CNY (0 for a token grant).
    pub amount: Decimal,
    pub remaining: Decimal,
    /// A token grant's model, its tokens and those it has left.
    pub model: Option<String>,
    pub tokens: Option<i64>,
    pub remaining_tokens: Option<i64>,
    /// `paid` or `promotional`.
    pub kind: String,
    /// 0 burns first.
    pub priority: i32,
    pub effective_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// `pending` (not yet effective), `open`, `closed` (expired).
    pub state: String,
    /// What expiry released, unspent.
    pub released: Option<Decimal>,
    pub reason: String,
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

fn from_row(row: &impl Read) -> Result<Grant> {
    Ok(Grant {
        id: row.read("id")?,
        account_id: row.read("account_id")?,
        amount: row.money("amount")?,
        remaining: row.money("remaining")?,
        model: row.read("model")?,
        tokens: row.read("tokens")?,
        remaining_tokens: row.read("remaining_tokens")?,
        kind: row.read("kind")?,
        priority: row.read("priority")?,
        effective_at: from_ms(row.read("effective_at")?),
        expires_at: row.read::<Option<i64>>("expires_at")?.map(from_ms),
        state: row.read("state")?,
        released: row.read::<Option<Money>>("released")?.map(|m| m.0),
        reason: row.read("reason")?,
        actor: row.read("actor")?,
        created_at: from_ms(row.read("created_at")?),
    })
}

pub struct NewGrant<'a> {
    pub account_id: i64,
    /// 0 with `tokens`.
    pub amount: Decimal,
    /// A token grant: the model and how many tokens.
    pub tokens: Option<(&'a str, i64)>,
    pub kind: &'a str,
    pub priority: i32,
    pub effective_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: &'a str,
    pub actor: &'a str,
    pub key: &'a str,
}

/// Issues a grant once per idempotency key (open at once if already effective, its amount
/// in the account's pool); returns what is issued under the key and whether this call did.
pub async fn create(db: &Db, new: &NewGrant<'_>) -> Result<(Grant, bool)> {
    const INSERT: &str = "INSERT INTO grants (account_id, amount, remaining, kind, priority,
            effective_at, expires_at, state, reason, actor, idempotency_key, created_at,
            model, tokens, remaining_tokens)
         VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)
         ON CONFLICT (account_id, idempotency_key) DO NOTHING";
    let now = Utc::now();
    let open = new.effective_at <= now;
    macro_rules! insert {
        () => {
            sqlx::query(INSERT)
                .bind(new.account_id)
                .bind(Money(new.amount))
                .bind(new.kind)
                .bind(new.priority)
                .bind(to_ms(new.effective_at))
                .bind(new.expires_at.map(to_ms))
                .bind(if open { "open" } else { "pending" })
                .bind(new.reason)
                .bind(new.actor)
                .bind(new.key)
                .bind(to_ms(now))
                .bind(new.tokens.map(|(model, _)| model))
                .bind(new.tokens.map(|(_, n)| n))
        };
    }
    let inserted = match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let inserted = insert!().execute(&mut *tx).await?.rows_affected() == 1;
            if inserted && open {
                move_pool_sqlite(&mut tx, new.account_id, new.amount).await?;
            }
            tx.commit().await?;
            inserted
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let inserted = insert!().execute(&mut *tx).await?.rows_affected() == 1;
            if inserted && open {
                move_pool_postgres(&mut tx, new.account_id, new.amount).await?;
            }
            tx.commit().await?;
            inserted
        }
    };
    on!(db, |pool| {
        let row =
            sqlx::query("SELECT * FROM grants WHERE account_id = $1 AND idempotency_key = $2")
                .bind(new.account_id)
                .bind(new.key)
                .fetch_one(pool)
                .await?;
        Ok((from_row(&row)?, inserted))
    })
}

/// The account's grants, newest first.
pub async fn of_account(db: &Db, account_id: i64) -> Result<Vec<Grant>> {
    on!(db, |pool| {
        let rows = sqlx::query("SELECT * FROM grants WHERE account_id = $1 ORDER BY id DESC")
            .bind(account_id)
            .fetch_all(pool)
            .await?;
        rows.iter().map(from_row).collect()
    })
}

/// What each grant paid of the account's records that started in `[from, to)`: (grant
/// id, sum), by grant id.
pub async fn used_between(
    db: &Db,
    account_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(i64, Decimal)>> {
    let rows: Vec<(i64, Money)> = on!(db, |pool| {
        sqlx::query_as(
            "SELECT grant_id, amount FROM grant_uses
             WHERE account_id = $1 AND at >= $2 AND at < $3",
        )
        .bind(account_id)
        .bind(to_ms(from))
        .bind(to_ms(to))
        .fetch_all(pool)
        .await?
    });
    let mut sums: std::collections::BTreeMap<i64, Decimal> = Default::default();
    for (grant, amount) in rows {
        let sum = sums.entry(grant).or_default();
        *sum = money::add(*sum, amount.0)?;
    }
    Ok(sums.into_iter().collect())
}

/// Every use of the account's grants, summed: what `granted` must be.
pub async fn used_total(db: &Db, account_id: i64) -> Result<Decimal> {
    let amounts: Vec<Money> = on!(db, |pool| {
        sqlx::query_scalar("SELECT amount FROM grant_uses WHERE account_id = $1")
            .bind(account_id)
            .fetch_all(pool)
            .await?
    });
    amounts
        .iter()
        .try_fold(Decimal::ZERO, |sum, a| money::add(sum, a.0))
        .map_err(Into::into)
}

/// What one grant paid in all: money and (a token grant) tokens.
pub async fn uses_of(db: &Db, grant_id: i64) -> Result<(Decimal, i64)> {
    let rows: Vec<(Money, i64)> = on!(db, |pool| {
        sqlx::query_as("SELECT amount, tokens FROM grant_uses WHERE grant_id = $1")
            .bind(grant_id)
            .fetch_all(pool)
            .await?
    });
    let mut money_paid = Decimal::ZERO;
    let mut tokens = 0i64;
    for (amount, n) in rows {
        money_paid = money::add(money_paid, amount.0)?;
        tokens = tokens.saturating_add(n);
    }
    Ok((money_paid, tokens))
}

/// The soonest time a grant not yet closed opens or expires (ms), if any.
pub async fn next_due(db: &Db) -> Result<Option<i64>> {
    Ok(on!(db, |pool| {
        sqlx::query_scalar(
            "SELECT min(CASE WHEN state = 'pending' THEN effective_at ELSE expires_at END)
             FROM grants WHERE state <> 'closed'",
        )
        .fetch_one(pool)
        .await?
    }))
}

/// Opens the grants effective by `now` and closes those expired by then (what is left
/// leaves the pool, released): the accounts whose pool moved.
pub async fn due(db: &Db, now: DateTime<Utc>) -> Result<Vec<i64>> {
    let now = to_ms(now);
    let mut moved = BTreeSet::new();
    // One grant at a time, each in its own transaction that takes the row first.
    let ids: Vec<(i64, String)> = on!(db, |pool| {
        sqlx::query_as(
            "SELECT id, state FROM grants
             WHERE (state = 'pending' AND effective_at <= $1)
                OR (state = 'open' AND expires_at IS NOT NULL AND expires_at <= $1)
             ORDER BY id",
        )
        .bind(now)
        .fetch_all(pool)
        .await?
    });
    for (id, state) in ids {
        let next = match state.as_str() {
            "pending" => "open",
            _ => "closed",
        };
        // A pending grant past its expiry too is closed at once, nothing moved.
        const UPDATE: &str = "UPDATE grants
             SET state = CASE WHEN $3 = 'closed' OR (expires_at IS NOT NULL AND expires_at <= $4)
                              THEN 'closed' ELSE 'open' END,
                 released = CASE WHEN $3 = 'closed' OR (expires_at IS NOT NULL AND expires_at <= $4)
                                 THEN remaining ELSE released END
             WHERE id = $1 AND state = $2
             RETURNING account_id, remaining, state";
        macro_rules! update {
            ($tx:expr) => {
                sqlx::query_as::<_, (i64, Money, String)>(UPDATE)
                    .bind(id)
                    .bind(&state)
                    .bind(next)
                    .bind(now)
                    .fetch_optional(&mut *$tx)
                    .await?
            };
        }
        let delta = |remaining: Decimal, became: &str| match (state.as_str(), became) {
            ("pending", "open") => remaining,
            ("open", "closed") => -remaining,
            _ => Decimal::ZERO,
        };
        match db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                if let Some((account, remaining, became)) = update!(tx) {
                    let delta = delta(remaining.0, &became);
                    if !delta.is_zero() {
                        move_pool_sqlite(&mut tx, account, delta).await?;
                        moved.insert(account);
                    }
                }
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // The account's funds first, as a record's insert takes them (then its
                // grants): no two transactions wait for each other.
                let account: Option<i64> =
                    sqlx::query_scalar("SELECT account_id FROM grants WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(account) = account {
                    sqlx::query("SELECT 1 FROM account_funds WHERE account_id = $1 FOR UPDATE")
                        .bind(account)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some((account, remaining, became)) = update!(tx) {
                    let delta = delta(remaining.0, &became);
                    if !delta.is_zero() {
                        move_pool_postgres(&mut tx, account, delta).await?;
                        moved.insert(account);
                    }
                }
                tx.commit().await?;
            }
        }
    }
    Ok(moved.into_iter().collect())
}

async fn move_pool_sqlite(
    tx: &mut sqlx::SqliteConnection,
    account_id: i64,
    delta: Decimal,
) -> Result<()> {
    let pool: Option<Money> =
        sqlx::query_scalar("SELECT grant_pool FROM account_funds WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(pool) = pool else {
        return Err(StoreError::Unavailable(anyhow::anyhow!(
            "account {account_id} has no funds row"
        )));
    };
    sqlx::query("UPDATE account_funds SET grant_pool = $2 WHERE account_id = $1")
        .bind(account_id)
        .bind(Money(money::add(pool.0, delta)?))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn move_pool_postgres(
    tx: &mut sqlx::PgConnection,
    account_id: i64,
    delta: Decimal,
) -> Result<()> {
    sqlx::query("UPDATE account_funds SET grant_pool = grant_pool + $2 WHERE account_id = $1")
        .bind(account_id)
        .bind(Money(delta))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The records' charges by account, for the burn.
fn charges<'a>(records: &[&'a UsageRecord]) -> HashMap<i64, Vec<Charge<'a>>> {
    let mut by_account: HashMap<i64, Vec<Charge<'a>>> = HashMap::new();
    for r in records.iter().filter(|r| r.cost > Decimal::ZERO) {
        by_account.entry(r.account_id).or_default().push(Charge {
            request_id: &r.request_id,
            started_ms: to_ms(r.started_at),
            cost: r.cost,
            model: &r.model,
            tokens: r.tokens.prompt.saturating_add(r.tokens.completion),
        });
    }
    by_account
}

/// A grant's row as the burn reads it.
fn held(
    id: i64,
    remaining: Decimal,
    tokens: Option<(String, i64)>,
    priority: i32,
    (effective_at, expires_at): (i64, Option<i64>),
) -> Held {
    Held {
        id,
        remaining,
        tokens: tokens.map(|(model, n)| (model, n.max(0) as u64)),
        priority,
        effective_at,
        expires_at,
    }
}

/// A token grant's model and tokens left, from its columns.
fn token_part(model: Option<String>, left: Option<i64>) -> Option<(String, i64)> {
    model.zip(left)
}

/// Burns the grants of the records just inserted (and only those), on the ledger writer's
/// SQLite connection inside the transaction that inserted them. Whether a token grant paid
/// for any (money no pool held: admission's figure is then short of the ledger's).
pub fn burn_sqlite(
    conn: &rusqlite::Connection,
    records: &[&UsageRecord],
) -> rusqlite::Result<bool> {
    let mut tokens_paid = false;
    let text =
        |e: &dyn std::fmt::Display| rusqlite::Error::ToSqlConversionFailure(e.to_string().into());
    let mut read = conn.prepare_cached(
        "SELECT id, remaining, priority, effective_at, expires_at, state, model,
                remaining_tokens
         FROM grants WHERE account_id = ?1 AND (remaining <> '0' OR remaining_tokens > 0)",
    )?;
    for (account, charges) in charges(records) {
        let mut open = HashMap::new();
        let mut grants = Vec::new();
        let mut rows = read.query([account])?;
        while let Some(row) = rows.next()? {
            let remaining: String = row.get(1)?;
            let remaining = Decimal::from_str(&remaining).map_err(|e| text(&e))?;
            let id: i64 = row.get(0)?;
            let tokens = token_part(row.get(6)?, row.get(7)?);
            open.insert(id, tokens.is_none() && row.get::<_, String>(5)? == "open");
            let times = (row.get(3)?, row.get(4)?);
            grants.push(held(id, remaining, tokens, row.get(2)?, times));
        }
        drop(rows);
        if grants.is_empty() {
            continue;
        }
        let uses = grants::burn(&mut grants, &charges);
        if uses.is_empty() {
            continue;
        }
        let mut write = conn.prepare_cached(
            "UPDATE grants SET remaining = ?2, remaining_tokens = ?3 WHERE id = ?1",
        )?;
        for g in &grants {
            let tokens = g.tokens.as_ref().map(|(_, n)| *n as i64);
            write.execute(rusqlite::params![
                g.id,
                g.remaining.normalize().to_string(),
                tokens
            ])?;
        }
        let mut insert = conn.prepare_cached(
            "INSERT INTO grant_uses (grant_id, account_id, request_id, at, amount, tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for u in &uses {
            insert.execute(rusqlite::params![
                u.grant_id,
                account,
                u.request_id,
                u.at_ms,
                u.amount.normalize().to_string(),
                u.tokens as i64
            ])?;
        }
        tokens_paid |= uses.iter().any(|u| u.tokens > 0);
        let (granted, from_pool) = totals(&uses, &open).map_err(|e| text(&e))?;
        let (old_granted, old_pool): (String, String) = conn.query_row(
            "SELECT granted, grant_pool FROM account_funds WHERE account_id = ?1",
            [account],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let parse = |s: &str| Decimal::from_str(s).map_err(|e| text(&e));
        let granted = money::add(parse(&old_granted)?, granted).map_err(|e| text(&e))?;
        let pool = money::sub(parse(&old_pool)?, from_pool).map_err(|e| text(&e))?;
        conn.execute(
            "UPDATE account_funds SET granted = ?2, grant_pool = ?3 WHERE account_id = ?1",
            rusqlite::params![account, granted.to_string(), pool.to_string()],
        )?;
    }
    Ok(tokens_paid)
}

/// What the uses paid in all, and what of it came from open money grants (the pool).
fn totals(
    uses: &[Use],
    open: &HashMap<i64, bool>,
) -> std::result::Result<(Decimal, Decimal), money::Overflow> {
    let mut granted = Decimal::ZERO;
    let mut from_pool = Decimal::ZERO;
    for u in uses {
        granted = money::add(granted, u.amount)?;
        if open.get(&u.grant_id).copied().unwrap_or(false) {
            from_pool = money::add(from_pool, u.amount)?;
        }
    }
    Ok((granted, from_pool))
}

/// A grant as the PostgreSQL burn reads it.
#[derive(sqlx::FromRow)]
struct GrantRow {
    id: i64,
    account_id: i64,
    remaining: Money,
    priority: i32,
    effective_at: i64,
    expires_at: Option<i64>,
    state: String,
    model: Option<String>,
    remaining_tokens: Option<i64>,
}

/// Burns the grants of the records just inserted (`inserted`: their request ids), in the
/// PostgreSQL transaction that inserted them, the grants' rows locked.
pub async fn burn_postgres(
    tx: &mut sqlx::PgConnection,
    records: &[&UsageRecord],
) -> std::result::Result<(), sqlx::Error> {
    let by_account = charges(records);
    if by_account.is_empty() {
        return Ok(());
    }
    let mut accounts: Vec<i64> = by_account.keys().copied().collect();
    accounts.sort_unstable();
    let rows: Vec<GrantRow> = sqlx::query_as(
        "SELECT id, account_id, remaining, priority, effective_at, expires_at, state, model,
                remaining_tokens
         FROM grants WHERE account_id = ANY($1) AND (remaining > 0 OR remaining_tokens > 0)
         ORDER BY id FOR UPDATE",
    )
    .bind(&accounts)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut of_account: HashMap<i64, Vec<Held>> = HashMap::new();
    let mut open = HashMap::new();
    for row in rows {
        let tokens = token_part(row.model, row.remaining_tokens);
        open.insert(row.id, tokens.is_none() && row.state == "open");
        let times = (row.effective_at, row.expires_at);
        (of_account.entry(row.account_id).or_default()).push(held(
            row.id,
            row.remaining.0,
            tokens,
            row.priority,
            times,
        ));
    }
    let overflow = |e: money::Overflow| sqlx::Error::Protocol(e.to_string());
    for account in accounts {
        let Some(grants) = of_account.get_mut(&account) else {
            continue;
        };
        let uses = grants::burn(grants, &by_account[&account]);
        if uses.is_empty() {
            continue;
        }
        for g in grants.iter() {
            sqlx::query("UPDATE grants SET remaining = $2, remaining_tokens = $3 WHERE id = $1")
                .bind(g.id)
                .bind(Money(g.remaining))
                .bind(g.tokens.as_ref().map(|(_, n)| *n as i64))
                .execute(&mut *tx)
                .await?;
        }
        for u in &uses {
            sqlx::query(
                "INSERT INTO grant_uses (grant_id, account_id, request_id, at, amount, tokens)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(u.grant_id)
            .bind(account)
            .bind(&u.request_id)
            .bind(u.at_ms)
            .bind(Money(u.amount))
            .bind(u.tokens as i64)
            .execute(&mut *tx)
            .await?;
        }
        let (granted, from_pool) = totals(&uses, &open).map_err(overflow)?;
        sqlx::query(
            "UPDATE account_funds SET granted = granted + $2, grant_pool = grant_pool - $3
             WHERE account_id = $1",
        )
        .bind(account)
        .bind(Money(granted))
        .bind(Money(from_pool))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
