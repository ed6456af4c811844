//! Accounts: who is billed.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Db, Result, from_ms, to_ms};

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

fn from_row(row: sqlx::sqlite::SqliteRow) -> Account {
    let mode: String = row.get("billing_mode");
    let credit: Option<String> = row.get("credit_limit");
    Account {
        id: row.get("id"),
        name: row.get("name"),
        created_at: from_ms(row.get("created_at")),
        billing_mode: if mode == "prepaid" {
            BillingMode::Prepaid
        } else {
            BillingMode::Postpaid
        },
        // Written only by `set_billing` from a Decimal.
        credit_limit: credit.and_then(|c| Decimal::from_str(&c).ok()),
    }
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
    sqlx::query("UPDATE accounts SET billing_mode = ?, credit_limit = ? WHERE id = ?")
        .bind(mode)
        .bind(credit_limit.map(|c| c.to_string()))
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topup {
    pub id: i64,
    pub account_id: i64,
    pub amount: Decimal,
    pub idempotency_key: String,
    pub note: String,
    pub created_at: DateTime<Utc>,
}

fn topup_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Topup> {
    let amount: String = row.get("amount");
    Ok(Topup {
        id: row.get("id"),
        account_id: row.get("account_id"),
        amount: Decimal::from_str(&amount)?,
        idempotency_key: row.get("idempotency_key"),
        note: row.get("note"),
        created_at: from_ms(row.get("created_at")),
    })
}

/// Records a top-up once per idempotency key. Returns the top-up and whether it is new.
pub async fn top_up(
    db: &Db,
    account_id: i64,
    amount: Decimal,
    key: &str,
    note: &str,
) -> Result<(Topup, bool)> {
    let inserted = sqlx::query(
        "INSERT INTO topups (account_id, amount, idempotency_key, note, created_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (account_id, idempotency_key) DO NOTHING",
    )
    .bind(account_id)
    .bind(amount.to_string())
    .bind(key)
    .bind(note)
    .bind(to_ms(Utc::now()))
    .execute(db)
    .await?
    .rows_affected()
        == 1;
    let row = sqlx::query("SELECT * FROM topups WHERE account_id = ? AND idempotency_key = ?")
        .bind(account_id)
        .bind(key)
        .fetch_one(db)
        .await?;
    Ok((topup_from_row(&row)?, inserted))
}

/// The sum of an account's top-ups, exactly.
pub async fn topped_up(db: &Db, account_id: i64) -> Result<Decimal> {
    let rows = sqlx::query("SELECT amount FROM topups WHERE account_id = ?")
        .bind(account_id)
        .fetch_all(db)
        .await?;
    let mut sum = Decimal::ZERO;
    for row in rows {
        let amount = Decimal::from_str(&row.get::<String, _>("amount"))?;
        sum = crate::billing::money::add(sum, amount)?;
    }
    Ok(sum)
}

/// Creates an account; fails if the name is taken.
pub async fn create(db: &Db, name: &str) -> Result<Account> {
    let now = Utc::now();
    let row = sqlx::query("INSERT INTO accounts (name, created_at) VALUES (?, ?) RETURNING *")
        .bind(name)
        .bind(to_ms(now))
        .fetch_one(db)
        .await
        .map_err(|e| match super::StoreError::from(e) {
            super::StoreError::Conflict(_) => {
                super::StoreError::Conflict(format!("an account named '{name}' already exists"))
            }
            other => other,
        })?;
    Ok(from_row(row))
}

pub async fn find_by_name(db: &Db, name: &str) -> Result<Option<Account>> {
    let row = sqlx::query("SELECT * FROM accounts WHERE name = ?")
        .bind(name)
        .fetch_optional(db)
        .await?;
    Ok(row.map(from_row))
}

pub async fn get(db: &Db, id: i64) -> Result<Option<Account>> {
    let row = sqlx::query("SELECT * FROM accounts WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(from_row))
}

pub async fn list(db: &Db) -> Result<Vec<Account>> {
    let rows = sqlx::query("SELECT * FROM accounts ORDER BY id")
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(from_row).collect())
}
