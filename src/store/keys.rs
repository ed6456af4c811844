//! API key rows: hashes and metadata, never secrets.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Db, Read, Result, from_ms, on, to_ms};

/// What a key may do. `None` means the configured default (limits) or everything (models).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute (prompt + completion).
    pub tpm: Option<u64>,
    pub allowed_models: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: i64,
    pub account_id: i64,
    /// The account's name (names never change): what deployments' owners and account
    /// price books name.
    pub account: String,
    pub name: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key stops working; in the future while a rotated key is in its grace period.
    pub revoked_at: Option<DateTime<Utc>>,
    pub rotated_to: Option<i64>,
    /// The first key of this key's rotation chain (its own id if it was never a successor):
    /// what rate limits are counted against.
    pub lineage_id: i64,
    pub limits: KeyLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    /// Rotated: still valid until its revocation time, the end of the grace period.
    Rotating,
    Revoked,
    Expired,
}

impl KeyRow {
    pub fn state(&self, now: DateTime<Utc>) -> KeyState {
        match (self.revoked_at, self.expires_at) {
            (Some(r), _) if r <= now => KeyState::Revoked,
            (_, Some(e)) if e <= now => KeyState::Expired,
            (Some(_), _) => KeyState::Rotating,
            _ => KeyState::Active,
        }
    }
}

fn from_row(row: &impl Read) -> Result<KeyRow> {
    let models: Option<String> = row.read("allowed_models")?;
    let id = row.read("id")?;
    Ok(KeyRow {
        id,
        account_id: row.read("account_id")?,
        account: row.read("account")?,
        name: row.read("name")?,
        prefix: row.read("prefix")?,
        secret_hash: row.read("secret_hash")?,
        created_at: from_ms(row.read("created_at")?),
        expires_at: row.read::<Option<i64>>("expires_at")?.map(from_ms),
        revoked_at: row.read::<Option<i64>>("revoked_at")?.map(from_ms),
        rotated_to: row.read("rotated_to")?,
        // Read leniently: a ledger an older version made (the benchmark's compared build)
        // has no such column.
        lineage_id: row
            .read::<Option<i64>>("lineage_id")
            .ok()
            .flatten()
            .unwrap_or(id),
        limits: KeyLimits {
            rpm: row.read::<Option<i64>>("rpm")?.map(|v| v as u32),
            tpm: row.read::<Option<i64>>("tpm")?.map(|v| v as u64),
            // Written only by this module, as a JSON array.
            allowed_models: models.and_then(|m| serde_json::from_str(&m).ok()),
        },
    })
}

pub struct NewKey<'a> {
    pub account_id: i64,
    pub name: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a [u8],
    pub expires_at: Option<DateTime<Utc>>,
    pub limits: KeyLimits,
}

fn models_json(limits: &KeyLimits) -> Option<String> {
    limits
        .allowed_models
        .as_ref()
        .map(|m| serde_json::to_string(m).expect("strings serialize"))
}

/// `INSERT` of a `NewKey`, bound by `insert_key!`.
const INSERT: &str = "INSERT INTO api_keys (account_id, name, prefix, secret_hash, created_at,
        expires_at, allowed_models, rpm, tpm)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id";

/// Keys with their account's name, then the condition `$rest`.
macro_rules! select_keys {
    ($rest:literal) => {
        concat!(
            "SELECT api_keys.*, accounts.name AS account FROM api_keys
             JOIN accounts ON accounts.id = api_keys.account_id ",
            $rest
        )
    };
}

/// Inserts `$key` on `$conn` (a pool or a transaction of either backend): a `KeyRow`.
macro_rules! insert_key {
    ($conn:expr, $key:expr) => {{
        let key: &NewKey = $key;
        let row = sqlx::query(INSERT)
            .bind(key.account_id)
            .bind(key.name)
            .bind(key.prefix)
            .bind(key.secret_hash)
            .bind(to_ms(Utc::now()))
            .bind(key.expires_at.map(to_ms))
            .bind(models_json(&key.limits))
            .bind(key.limits.rpm.map(i64::from))
            .bind(key.limits.tpm.map(|t| t as i64))
            .fetch_one(&mut *$conn)
            .await?;
        let id: i64 = sqlx::Row::try_get(&row, "id")?;
        let row = sqlx::query(select_keys!("WHERE api_keys.id = $1"))
            .bind(id)
            .fetch_one(&mut *$conn)
            .await?;
        from_row(&row)
    }};
}

pub async fn insert(db: &Db, key: NewKey<'_>) -> Result<KeyRow> {
    on!(db, |pool| {
        let mut conn = pool.acquire().await?;
        insert_key!(conn, &key)
    })
}

/// Inserts `keys` in one transaction (many keys at once: the benchmark's).
pub async fn insert_all(db: &Db, keys: &[NewKey<'_>]) -> Result<Vec<KeyRow>> {
    on!(db, |pool| {
        let mut tx = pool.begin().await?;
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            rows.push(insert_key!(tx, key)?);
        }
        tx.commit().await?;
        Ok(rows)
    })
}

pub async fn find_by_hash(db: &Db, secret_hash: &[u8]) -> Result<Option<KeyRow>> {
    on!(db, |pool| {
        let row = sqlx::query(select_keys!("WHERE secret_hash = $1"))
            .bind(secret_hash)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    })
}

pub async fn get(db: &Db, id: i64) -> Result<Option<KeyRow>> {
    on!(db, |pool| {
        let row = sqlx::query(select_keys!("WHERE api_keys.id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    })
}

/// Keys of one account, or of all accounts, oldest first.
pub async fn list(db: &Db, account_id: Option<i64>) -> Result<Vec<KeyRow>> {
    on!(db, |pool| {
        let rows = sqlx::query(select_keys!(
            "WHERE $1 IS NULL OR api_keys.account_id = $1 ORDER BY api_keys.id"
        ))
        .bind(account_id)
        .fetch_all(pool)
        .await?;
        rows.iter().map(from_row).collect()
    })
}

/// Replaces a key's name, expiry and limits.
pub async fn update(
    db: &Db,
    id: i64,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
    limits: &KeyLimits,
) -> Result<()> {
    on!(db, |pool| {
        sqlx::query(
            "UPDATE api_keys SET name = $1, expires_at = $2, allowed_models = $3, rpm = $4,
                tpm = $5
             WHERE id = $6",
        )
        .bind(name)
        .bind(expires_at.map(to_ms))
        .bind(models_json(limits))
        .bind(limits.rpm.map(i64::from))
        .bind(limits.tpm.map(|t| t as i64))
        .bind(id)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Revokes a key at `at` (now, or the end of a rotation's grace period); an earlier
/// revocation is kept.
const REVOKE: &str = "UPDATE api_keys
     SET revoked_at = CASE WHEN revoked_at IS NULL OR revoked_at > $1 THEN $1 ELSE revoked_at END
     WHERE id = $2";

pub async fn revoke(db: &Db, id: i64, at: DateTime<Utc>) -> Result<()> {
    on!(db, |pool| {
        sqlx::query(REVOKE)
            .bind(to_ms(at))
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Issues `new` as the successor of key `old_id`, which stays valid until `grace_until`.
pub async fn rotate(
    db: &Db,
    old_id: i64,
    new: NewKey<'_>,
    grace_until: DateTime<Utc>,
) -> Result<KeyRow> {
    on!(db, |pool| {
        let mut tx = pool.begin().await?;
        let mut row = insert_key!(tx, &new)?;
        sqlx::query(REVOKE)
            .bind(to_ms(grace_until))
            .bind(old_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE api_keys SET rotated_to = $1 WHERE id = $2")
            .bind(row.id)
            .bind(old_id)
            .execute(&mut *tx)
            .await?;
        row.lineage_id = sqlx::query_scalar(
            "UPDATE api_keys
             SET lineage_id = (SELECT COALESCE(lineage_id, id) FROM api_keys WHERE id = $1)
             WHERE id = $2 RETURNING lineage_id",
        )
        .bind(old_id)
        .bind(row.id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    })
}

/// When the key last made a request, from the ledger (no write on the hot path).
pub async fn last_used(db: &Db, id: i64) -> Result<Option<DateTime<Utc>>> {
    // The newest step of the key's time index (SQLite's `max()` through the records'
    // view would read them all).
    let ms: Option<i64> = on!(db, |pool| {
        sqlx::query_scalar(
            "SELECT started_at FROM usage_records WHERE key_id = $1
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?
    });
    Ok(ms.map(from_ms))
}
