//! The audit log: every change made through the console, the admin API or the CLI (who,
//! what, before and after, when, from where). Append-only: the ledger's triggers refuse to
//! change or delete an entry. Read newest first, by keyset pages.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Db, Read, Result, from_ms, on, to_ms};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub address: String,
    pub account_id: Option<i64>,
    pub action: String,
    pub target: String,
    /// JSON, `None` for what did not exist before.
    pub before: Option<String>,
    /// JSON, `None` for what no longer exists.
    pub after: Option<String>,
}

fn from_row(row: &impl Read) -> Result<Entry> {
    Ok(Entry {
        id: row.read("id")?,
        at: from_ms(row.read("at")?),
        actor: row.read("actor")?,
        address: row.read("address")?,
        account_id: row.read("account_id")?,
        action: row.read("action")?,
        target: row.read("target")?,
        before: row.read("before")?,
        after: row.read("after")?,
    })
}

pub struct NewEntry<'a> {
    pub actor: &'a str,
    pub address: &'a str,
    pub account_id: Option<i64>,
    pub action: &'a str,
    pub target: &'a str,
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
}

pub async fn append(db: &Db, entry: NewEntry<'_>) -> Result<()> {
    let now = to_ms(Utc::now());
    on!(db, |pool| {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, address, account_id, action, target, before, after)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(now)
        .bind(entry.actor)
        .bind(entry.address)
        .bind(entry.account_id)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.before)
        .bind(entry.after)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Up to `limit` entries older than `before_id` (all when `None`), of one account or of
/// all, newest first: one index range, however long the log.
pub async fn page(
    db: &Db,
    account_id: Option<i64>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Entry>> {
    let before = before_id.unwrap_or(i64::MAX);
    on!(db, |pool| {
        let rows = match account_id {
            Some(account) => {
                sqlx::query(
                    "SELECT * FROM audit_log WHERE account_id = $1 AND id < $2
                     ORDER BY id DESC LIMIT $3",
                )
                .bind(account)
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            None => {
                sqlx::query("SELECT * FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2")
                    .bind(before)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        };
        rows.iter().map(from_row).collect()
    })
}
