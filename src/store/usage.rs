//! Usage records: written in batches by the ledger writer, read by audits and tests.

use std::str::FromStr;

use rust_decimal::Decimal;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{Db, to_ms};
use crate::metering::record::UsageRecord;

/// Inserts a batch in one statement. A request id already present is skipped, so a batch
/// retried after an unclear failure never writes a record twice.
pub async fn insert_batch(
    conn: &mut SqliteConnection,
    records: &[UsageRecord],
) -> sqlx::Result<()> {
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO usage_records (request_id, account_id, key_id, model, chip, deployment,
            endpoint, stream, status, http_status, error, prompt_tokens, completion_tokens,
            cached_tokens, usage_source, price_version_id, cost, blocked, moderation,
            started_at, ended_at, latency_ms, ttft_ms) ",
    );
    query.push_values(records, |mut row, r| {
        row.push_bind(&r.request_id)
            .push_bind(r.account_id)
            .push_bind(r.key_id)
            .push_bind(&r.model)
            .push_bind(&r.chip)
            .push_bind(&r.deployment)
            .push_bind(r.endpoint)
            .push_bind(r.stream)
            .push_bind(r.status.as_str())
            .push_bind(i64::from(r.http_status))
            .push_bind(&r.error)
            .push_bind(r.tokens.prompt as i64)
            .push_bind(r.tokens.completion as i64)
            .push_bind(r.tokens.cached as i64)
            .push_bind(r.usage_source.as_str())
            .push_bind(r.price_version_id)
            .push_bind(r.cost.to_string())
            .push_bind(r.blocked)
            .push_bind(&r.moderation)
            .push_bind(to_ms(r.started_at))
            .push_bind(to_ms(r.ended_at))
            .push_bind(r.latency_ms)
            .push_bind(r.ttft_ms);
    });
    query.push(" ON CONFLICT (request_id) DO NOTHING");
    query.build().execute(conn).await?;
    Ok(())
}

/// A stored record, flattened for reading (audits, tests, CLI).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredRecord {
    pub request_id: String,
    pub account_id: i64,
    pub key_id: i64,
    pub model: String,
    pub chip: String,
    pub deployment: Option<String>,
    pub endpoint: String,
    pub stream: bool,
    pub status: String,
    pub http_status: i64,
    pub error: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub usage_source: String,
    pub price_version_id: i64,
    pub cost: Decimal,
    pub blocked: bool,
    pub moderation: Option<String>,
    pub started_at: i64,
    pub ended_at: i64,
    pub latency_ms: i64,
    pub ttft_ms: Option<i64>,
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<StoredRecord> {
    let cost: String = row.get("cost");
    Ok(StoredRecord {
        request_id: row.get("request_id"),
        account_id: row.get("account_id"),
        key_id: row.get("key_id"),
        model: row.get("model"),
        chip: row.get("chip"),
        deployment: row.get("deployment"),
        endpoint: row.get("endpoint"),
        stream: row.get("stream"),
        status: row.get("status"),
        http_status: row.get("http_status"),
        error: row.get("error"),
        prompt_tokens: row.get("prompt_tokens"),
        completion_tokens: row.get("completion_tokens"),
        cached_tokens: row.get("cached_tokens"),
        usage_source: row.get("usage_source"),
        price_version_id: row.get("price_version_id"),
        cost: Decimal::from_str(&cost)?,
        blocked: row.get("blocked"),
        moderation: row.get("moderation"),
        started_at: row.get("started_at"),
        ended_at: row.get("ended_at"),
        latency_ms: row.get("latency_ms"),
        ttft_ms: row.get("ttft_ms"),
    })
}

pub async fn by_request_id(db: &Db, request_id: &str) -> anyhow::Result<Option<StoredRecord>> {
    let row = sqlx::query("SELECT * FROM usage_records WHERE request_id = ?")
        .bind(request_id)
        .fetch_optional(db)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The most recent records of an account, newest first.
pub async fn recent(db: &Db, account_id: i64, limit: i64) -> anyhow::Result<Vec<StoredRecord>> {
    let rows = sqlx::query(
        "SELECT * FROM usage_records WHERE account_id = ? ORDER BY started_at DESC, id DESC LIMIT ?",
    )
    .bind(account_id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

pub async fn count(db: &Db) -> anyhow::Result<i64> {
    Ok(sqlx::query("SELECT COUNT(*) FROM usage_records")
        .fetch_one(db)
        .await?
        .get(0))
}
