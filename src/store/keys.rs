//! API key rows: hashes and metadata, never secrets.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Db, from_ms, to_ms};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn from_row(row: sqlx::sqlite::SqliteRow) -> KeyRow {
    KeyRow {
        id: row.get("id"),
        account_id: row.get("account_id"),
        name: row.get("name"),
        prefix: row.get("prefix"),
        secret_hash: row.get("secret_hash"),
        created_at: from_ms(row.get("created_at")),
        expires_at: row.get::<Option<i64>, _>("expires_at").map(from_ms),
        revoked_at: row.get::<Option<i64>, _>("revoked_at").map(from_ms),
    }
}

pub struct NewKey<'a> {
    pub account_id: i64,
    pub name: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a [u8],
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn insert(db: &Db, key: NewKey<'_>) -> anyhow::Result<KeyRow> {
    let row = sqlx::query(
        "INSERT INTO api_keys (account_id, name, prefix, secret_hash, created_at, expires_at)
         VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
    )
    .bind(key.account_id)
    .bind(key.name)
    .bind(key.prefix)
    .bind(key.secret_hash)
    .bind(to_ms(Utc::now()))
    .bind(key.expires_at.map(to_ms))
    .fetch_one(db)
    .await?;
    Ok(from_row(row))
}

pub async fn find_by_hash(db: &Db, secret_hash: &[u8]) -> anyhow::Result<Option<KeyRow>> {
    let row = sqlx::query("SELECT * FROM api_keys WHERE secret_hash = ?")
        .bind(secret_hash)
        .fetch_optional(db)
        .await?;
    Ok(row.map(from_row))
}
