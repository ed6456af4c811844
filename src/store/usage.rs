//! Usage records: written in batches by the ledger writer, read by audits and tests.

use std::str::FromStr;

use rust_decimal::Decimal;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Db, Result, to_ms};
use crate::billing::Totals;
use crate::billing::record::UsageRecord;

/// Records per multi-row `INSERT`: one statement execution opens the table and its three
/// indexes once for all of them.
const ROWS_PER_INSERT: usize = 16;

/// Inserts `records` on the ledger writer's connection, all or none: one statement for a
/// single record, one transaction for more, in statements of `ROWS_PER_INSERT` rows. A
/// request id already present is skipped, so a batch retried after an unclear failure
/// never writes a record twice.
pub fn insert<'a, I>(conn: &rusqlite::Connection, records: I) -> rusqlite::Result<()>
where
    I: IntoIterator<Item = &'a UsageRecord>,
    I::IntoIter: ExactSizeIterator,
{
    let records: Vec<&UsageRecord> = records.into_iter().collect();
    let transaction = (records.len() > 1)
        .then(|| conn.unchecked_transaction())
        .transpose()?;
    let mut chunks = records.chunks_exact(ROWS_PER_INSERT);
    if chunks.len() > 0 {
        let mut insert = conn.prepare_cached(&insert_sql(ROWS_PER_INSERT))?;
        for chunk in &mut chunks {
            for (row, record) in chunk.iter().enumerate() {
                bind(&mut insert, row * COLUMNS, record)?;
            }
            insert.raw_execute()?;
        }
    }
    if !chunks.remainder().is_empty() {
        let mut insert = conn.prepare_cached(&insert_sql(1))?;
        for record in chunks.remainder() {
            bind(&mut insert, 0, record)?;
            insert.raw_execute()?;
        }
    }
    match transaction {
        Some(t) => t.commit(),
        None => Ok(()),
    }
}

/// `INSERT ... VALUES (?, ...), ...` for `rows` records.
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; COLUMNS].join(", "));
    format!(
        "INSERT INTO usage_records ({}) VALUES {} ON CONFLICT (request_id) DO NOTHING",
        COLUMN_NAMES.join(", "),
        vec![row; rows].join(", ")
    )
}

/// Every column of `usage_records` (but its row id), written once: its name and type as
/// read back (`StoredRecord`), the value a `UsageRecord` binds to it (`bind`), and how it is
/// read when the stored type is not what SQLite returns (`from_row`). The table itself is
/// in `migrations/`.
macro_rules! usage_columns {
    ($r:ident, $row:ident => { $($column:ident: $stored:ty = $bind:expr $(; read $read:expr)?,)* }) => {
        /// The columns, in the order they are bound.
        const COLUMN_NAMES: &[&str] = &[$(stringify!($column)),*];
        /// Columns bound per record.
        const COLUMNS: usize = COLUMN_NAMES.len();

        /// A stored record, flattened for reading (audits, tests, CLI).
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        pub struct StoredRecord {
            pub id: i64,
            $(pub $column: $stored,)*
        }

        /// Binds `r` to the `COLUMNS` parameters after the first `offset`.
        fn bind(
            insert: &mut rusqlite::CachedStatement,
            offset: usize,
            $r: &UsageRecord,
        ) -> rusqlite::Result<()> {
            let values: [&dyn rusqlite::ToSql; COLUMNS] = [$(&$bind),*];
            for (i, value) in values.into_iter().enumerate() {
                insert.raw_bind_parameter(offset + i + 1, value)?;
            }
            Ok(())
        }

        fn from_row($row: &sqlx::sqlite::SqliteRow) -> Result<StoredRecord> {
            Ok(StoredRecord {
                id: $row.get("id"),
                $($column: usage_columns!(@read $row, $column, $stored $(, $read)?),)*
            })
        }
    };
    (@read $row:ident, $column:ident, $stored:ty) => {
        $row.get::<$stored, _>(stringify!($column))
    };
    (@read $row:ident, $column:ident, $stored:ty, $read:expr) => {
        $read
    };
}

usage_columns!(r, row => {
    request_id: String = r.request_id,
    account_id: i64 = r.account_id,
    key_id: i64 = r.key_id,
    model: String = r.model,
    chip: String = r.chip,
    deployment: Option<String> = r.deployment,
    endpoint: String = r.endpoint.as_str(),
    stream: bool = r.stream,
    status: String = r.status.as_str(),
    http_status: i64 = r.http_status,
    error: Option<String> = r.error,
    prompt_tokens: i64 = (r.tokens.prompt as i64),
    completion_tokens: i64 = (r.tokens.completion as i64),
    cached_tokens: i64 = (r.tokens.cached as i64),
    usage_source: String = r.usage_source.as_str(),
    price_version_id: i64 = r.price_version_id,
    cost: Decimal = r.cost.to_string(); read Decimal::from_str(&row.get::<String, _>("cost"))?,
    blocked: bool = r.blocked,
    moderation: Option<String> = r.moderation,
    started_at: i64 = to_ms(r.started_at),
    ended_at: i64 = to_ms(r.ended_at),
    latency_ms: i64 = r.latency_ms,
    ttft_ms: Option<i64> = r.ttft_ms,
});

pub async fn by_request_id(db: &Db, request_id: &str) -> Result<Option<StoredRecord>> {
    let row = sqlx::query("SELECT * FROM usage_records WHERE request_id = ?")
        .bind(request_id)
        .fetch_optional(db)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The most recent records of an account, newest first.
pub async fn recent(db: &Db, account_id: i64, limit: i64) -> Result<Vec<StoredRecord>> {
    let rows = sqlx::query(
        "SELECT * FROM usage_records WHERE account_id = ? ORDER BY started_at DESC, id DESC LIMIT ?",
    )
    .bind(account_id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

pub async fn count(db: &Db) -> Result<i64> {
    Ok(sqlx::query("SELECT COUNT(*) FROM usage_records")
        .fetch_one(db)
        .await?
        .get(0))
}

/// Filters for listing records; all optional. Times are milliseconds, `[from, to)`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct UsageFilter {
    pub account_id: Option<i64>,
    pub key_id: Option<i64>,
    pub model: Option<String>,
    pub chip: Option<String>,
    pub status: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Records with an id below this (the previous page's `next_cursor`).
    pub before_id: Option<i64>,
}

/// Newest first, at most `limit`.
pub async fn list(db: &Db, filter: &UsageFilter, limit: i64) -> Result<Vec<StoredRecord>> {
    let mut query: QueryBuilder<Sqlite> =
        QueryBuilder::new("SELECT * FROM usage_records WHERE 1 = 1");
    if let Some(v) = filter.account_id {
        query.push(" AND account_id = ").push_bind(v);
    }
    if let Some(v) = filter.key_id {
        query.push(" AND key_id = ").push_bind(v);
    }
    if let Some(v) = &filter.model {
        query.push(" AND model = ").push_bind(v.clone());
    }
    if let Some(v) = &filter.chip {
        query.push(" AND chip = ").push_bind(v.clone());
    }
    if let Some(v) = &filter.status {
        query.push(" AND status = ").push_bind(v.clone());
    }
    if let Some(v) = filter.from_ms {
        query.push(" AND started_at >= ").push_bind(v);
    }
    if let Some(v) = filter.to_ms {
        query.push(" AND started_at < ").push_bind(v);
    }
    if let Some(v) = filter.before_id {
        query.push(" AND id < ").push_bind(v);
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    let rows = query.build().fetch_all(db).await?;
    rows.iter().map(from_row).collect()
}

/// Whose records to sum.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    All,
    Account(i64),
    Key(i64),
}

pub const SLOT_MS: i64 = 15 * 60 * 1000;

/// Sums over `[from_ms, to_ms)`, grouped by account, key, model, chip and price version,
/// and by 15-minute slot if `by_slot`.
pub async fn totals(
    db: &Db,
    scope: Scope,
    from_ms: i64,
    to_ms: i64,
    by_slot: bool,
) -> Result<Vec<Totals>> {
    let slot = if by_slot {
        "started_at / 900000 * 900000"
    } else {
        "NULL"
    };
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
        "SELECT account_id, key_id, model, chip, price_version_id, {slot} AS slot,
                COUNT(*) AS requests, SUM(status = 'ok') AS ok_requests,
                SUM(prompt_tokens) AS prompt, SUM(cached_tokens) AS cached,
                SUM(completion_tokens) AS completion
         FROM usage_records WHERE started_at >= "
    ));
    query
        .push_bind(from_ms)
        .push(" AND started_at < ")
        .push_bind(to_ms);
    match scope {
        Scope::All => {}
        Scope::Account(id) => {
            query.push(" AND account_id = ").push_bind(id);
        }
        Scope::Key(id) => {
            query.push(" AND key_id = ").push_bind(id);
        }
    }
    query.push(" GROUP BY account_id, key_id, model, chip, price_version_id, slot");
    let rows = query.build().fetch_all(db).await?;
    Ok(rows
        .iter()
        .map(|r| Totals {
            account_id: r.get("account_id"),
            key_id: r.get("key_id"),
            model: r.get("model"),
            chip: r.get("chip"),
            price_version_id: r.get("price_version_id"),
            slot_ms: r.get("slot"),
            requests: r.get("requests"),
            ok_requests: r.get("ok_requests"),
            prompt_tokens: r.get("prompt"),
            cached_tokens: r.get("cached"),
            completion_tokens: r.get("completion"),
        })
        .collect())
}
