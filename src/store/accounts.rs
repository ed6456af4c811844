//! Accounts: who is billed.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Db, Money, Read, Result, StoreError, from_ms, on, to_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingMode {
    /// Spends its top-ups; refused (402) when they run out.
    Prepaid,
    /// Billed afterwards; refused only beyond its credit limit, if it has one.
    Postpaid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub billing_mode: BillingMode,
    /// Postpaid: how much may be owed (`None`: no limit). Not used for prepaid accounts.
    pub credit_limit: Option<Decimal>,
    /// The name people read, in any script (e.g. 无问芯穹 beside `infini`); may be empty.
    pub display_name: String,
    /// The account's own time zone (an IANA name); `None`: the billing time zone.
    pub time_zone: Option<String>,
}

impl Account {
    /// How far below zero the balance may go; `None` when there is no limit at all.
    pub fn allowance(&self) -> Option<Decimal> {
        match self.billing_mode {
            BillingMode::Prepaid => Some(Decimal::ZERO),
            BillingMode::Postpaid => self.credit_limit,
        }
    }
}

fn from_row(row: &impl Read) -> Result<Account> {
    let mode: String = row.read("billing_mode")?;
    Ok(Account {
        id: row.read("id")?,
        name: row.read("name")?,
        created_at: from_ms(row.read("created_at")?),
        billing_mode: if mode == "prepaid" {
            BillingMode::Prepaid
        } else {
            BillingMode::Postpaid
        },
        credit_limit: row.money_or_null("credit_limit")?,
        display_name: row.read("display_name")?,
        time_zone: row.read("time_zone")?,
    })
}

/// Sets how an account is billed.
pub async fn set_billing(
    db: &Db,
    id: i64,
    mode: BillingMode,
    credit_limit: Option<Decimal>,
) -> Result<()> {
    let mode = match mode {
        BillingMode::Prepaid => "prepaid",
        BillingMode::Postpaid => "postpaid",
    };
    on!(db, |pool| {
        sqlx::query("UPDATE accounts SET billing_mode = $1, credit_limit = $2 WHERE id = $3")
            .bind(mode)
            .bind(credit_limit.map(Money))
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Sets an account's display name and time zone (`None`: the billing time zone).
pub async fn set_profile(
    db: &Db,
    id: i64,
    display_name: &str,
    time_zone: Option<&str>,
) -> Result<()> {
    on!(db, |pool| {
        sqlx::query("UPDATE accounts SET display_name = $1, time_zone = $2 WHERE id = $3")
            .bind(display_name)
            .bind(time_zone)
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Money into an account besides its usage: a top-up, or a credit note (positive) or a
/// debit note (negative amount) correcting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topup {
    pub id: i64,
    pub account_id: i64,
    /// `topup`, `credit_note` or `debit_note`.
    pub kind: String,
    pub amount: Decimal,
    pub idempotency_key: String,
    /// Why (a note's reason).
    pub note: String,
    /// The month a note is about (`2026-11`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Who issued a note.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

fn topup_from_row(row: &impl Read) -> Result<Topup> {
    Ok(Topup {
        id: row.read("id")?,
        account_id: row.read("account_id")?,
        kind: row.read("kind")?,
        amount: row.money("amount")?,
        idempotency_key: row.read("idempotency_key")?,
        note: row.read("note")?,
        period: row.read("period")?,
        actor: row.read("actor")?,
        created_at: from_ms(row.read("created_at")?),
    })
}

/// Money to record in an account, once per idempotency key.
pub struct NewFunds<'a> {
    pub account_id: i64,
    /// `topup`, `credit_note` or `debit_note`.
    pub kind: &'a str,
    /// Signed: a debit note's is negative.
    pub amount: Decimal,
    pub key: &'a str,
    pub note: &'a str,
    pub period: Option<&'a str>,
    pub actor: &'a str,
    /// When it counts from (a reserved hour's start); now when `None`.
    pub at: Option<DateTime<Utc>>,
}

/// Records a top-up once per idempotency key (see `add_funds`).
pub async fn top_up(
    db: &Db,
    account_id: i64,
    amount: Decimal,
    key: &str,
    note: &str,
) -> Result<(Topup, bool)> {
    let funds = NewFunds {
        account_id,
        kind: "topup",
        amount,
        key,
        note,
        period: None,
        actor: "",
        at: None,
    };
    add_funds(db, &funds).await
}

/// Records money into (or, negative, out of) an account once per idempotency key,
/// crediting its running total in the same transaction (on PostgreSQL, its trigger does).
/// Returns what is recorded under the key and whether this call recorded it.
pub async fn add_funds(db: &Db, new: &NewFunds<'_>) -> Result<(Topup, bool)> {
    const INSERT: &str = "INSERT INTO topups (account_id, amount, idempotency_key, note,
            created_at, kind, period, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (account_id, idempotency_key) DO NOTHING";
    let now = to_ms(new.at.unwrap_or_else(Utc::now));
    macro_rules! insert {
        () => {
            sqlx::query(INSERT)
                .bind(new.account_id)
                .bind(Money(new.amount))
                .bind(new.key)
                .bind(new.note)
                .bind(now)
                .bind(new.kind)
                .bind(new.period)
                .bind(new.actor)
        };
    }
    let inserted = match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let inserted = insert!().execute(&mut *tx).await?.rows_affected() == 1;
            if inserted {
                super::funds::credit(&mut tx, new.account_id, new.amount).await?;
            }
            tx.commit().await?;
            inserted
        }
        Db::Postgres(pool) => insert!().execute(pool).await?.rows_affected() == 1,
    };
    on!(db, |pool| {
        let row =
            sqlx::query("SELECT * FROM topups WHERE account_id = $1 AND idempotency_key = $2")
                .bind(new.account_id)
                .bind(new.key)
                .fetch_one(pool)
                .await?;
        Ok((topup_from_row(&row)?, inserted))
    })
}

/// The credit and debit notes of `account_id` issued in `[from, to)`, oldest first.
pub async fn notes_between(
    db: &Db,
    account_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Topup>> {
    let mut notes = of_kind_between(db, account_id, "credit_note", (from, to)).await?;
    notes.extend(of_kind_between(db, account_id, "debit_note", (from, to)).await?);
    notes.sort_by_key(|n| (n.created_at, n.id));
    Ok(notes)
}

/// Every top-up, note and reserved hour of `account_id`, oldest first (audits and tests).
pub async fn all_funds(db: &Db, account_id: i64) -> Result<Vec<Topup>> {
    on!(db, |pool| {
        let rows = sqlx::query("SELECT * FROM topups WHERE account_id = $1 ORDER BY id")
            .bind(account_id)
            .fetch_all(pool)
            .await?;
        rows.iter().map(topup_from_row).collect()
    })
}

/// The reserved hours charged to `account_id` that started in `[from, to)`, oldest first.
pub async fn reservations_between(
    db: &Db,
    account_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Topup>> {
    of_kind_between(db, account_id, "reservation", (from, to)).await
}

/// The start of the last reserved hour of `deployment` charged to `account_id`.
pub async fn last_reserved_hour(
    db: &Db,
    account_id: i64,
    deployment: &str,
) -> Result<Option<DateTime<Utc>>> {
    let ms: Option<i64> = on!(db, |pool| {
        sqlx::query_scalar(
            "SELECT max(created_at) FROM topups
             WHERE account_id = $1 AND kind = 'reservation' AND note = $2",
        )
        .bind(account_id)
        .bind(deployment)
        .fetch_one(pool)
        .await?
    });
    Ok(ms.map(from_ms))
}

async fn of_kind_between(
    db: &Db,
    account_id: i64,
    kind: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Vec<Topup>> {
    on!(db, |pool| {
        let rows = sqlx::query(
            "SELECT * FROM topups
             WHERE account_id = $1 AND created_at >= $2 AND created_at < $3
               AND kind = $4
             ORDER BY created_at, id",
        )
        .bind(account_id)
        .bind(to_ms(from))
        .bind(to_ms(to))
        .bind(kind)
        .fetch_all(pool)
        .await?;
        rows.iter().map(topup_from_row).collect()
    })
}

/// The sum of an account's top-ups and notes (signed), exactly: its running `topped_up`.
pub async fn topped_up(db: &Db, account_id: i64) -> Result<Decimal> {
    let amounts: Vec<Money> = on!(db, |pool| {
        sqlx::query_scalar("SELECT amount FROM topups WHERE account_id = $1")
            .bind(account_id)
            .fetch_all(pool)
            .await?
    });
    let mut sum = Decimal::ZERO;
    for amount in amounts {
        sum = crate::billing::money::add(sum, amount.0)?;
    }
    Ok(sum)
}

/// Account `account_id`'s newest top-ups and notes, at most `limit` (an account has few;
/// its reserved hours, one a hour, are left out).
pub async fn recent_topups(db: &Db, account_id: i64, limit: i64) -> Result<Vec<Topup>> {
    on!(db, |pool| {
        let rows = sqlx::query(
            "SELECT * FROM topups WHERE account_id = $1 AND kind <> 'reservation'
             ORDER BY id DESC LIMIT $2",
        )
        .bind(account_id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter().map(topup_from_row).collect()
    })
}

/// Creates an account; fails if the name is taken.
pub async fn create(db: &Db, name: &str) -> Result<Account> {
    let now = to_ms(Utc::now());
    let row = on!(db, |pool| {
        sqlx::query("INSERT INTO accounts (name, created_at) VALUES ($1, $2) RETURNING *")
            .bind(name)
            .bind(now)
            .fetch_one(pool)
            .await
            .map(|row| from_row(&row))
    });
    row.map_err(|e| match StoreError::from(e) {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("an account named '{name}' already exists"))
        }
        other => other,
    })?
}

pub async fn find_by_name(db: &Db, name: &str) -> Result<Option<Account>> {
    on!(db, |pool| {
        let row = sqlx::query("SELECT * FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    })
}

pub async fn get(db: &Db, id: i64) -> Result<Option<Account>> {
    on!(db, |pool| {
        let row = sqlx::query("SELECT * FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    })
}

pub async fn list(db: &Db) -> Result<Vec<Account>> {
    on!(db, |pool| {
        let rows = sqlx::query("SELECT * FROM accounts ORDER BY id")
            .fetch_all(pool)
            .await?;
        rows.iter().map(from_row).collect()
    })
}
