//! Accounts: who is billed.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Db, from_ms, to_ms};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

fn from_row(row: sqlx::sqlite::SqliteRow) -> Account {
    Account {
        id: row.get("id"),
        name: row.get("name"),
        created_at: from_ms(row.get("created_at")),
    }
}

/// Creates an account; fails if the name is taken.
pub async fn create(db: &Db, name: &str) -> anyhow::Result<Account> {
    let now = Utc::now();
    let row = sqlx::query("INSERT INTO accounts (name, created_at) VALUES (?, ?) RETURNING *")
        .bind(name)
        .bind(to_ms(now))
        .fetch_one(db)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                anyhow::anyhow!("an account named '{name}' already exists")
            }
            other => other.into(),
        })?;
    Ok(from_row(row))
}

pub async fn find_by_name(db: &Db, name: &str) -> anyhow::Result<Option<Account>> {
    let row = sqlx::query("SELECT * FROM accounts WHERE name = ?")
        .bind(name)
        .fetch_optional(db)
        .await?;
    Ok(row.map(from_row))
}

pub async fn get(db: &Db, id: i64) -> anyhow::Result<Option<Account>> {
    let row = sqlx::query("SELECT * FROM accounts WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(from_row))
}

pub async fn list(db: &Db) -> anyhow::Result<Vec<Account>> {
    let rows = sqlx::query("SELECT * FROM accounts ORDER BY id")
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(from_row).collect())
}
