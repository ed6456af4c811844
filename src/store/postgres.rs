//! The PostgreSQL backend: one ledger shared by many replicas. Money is exact NUMERIC;
//! usage records arrive from each replica's journal in batches, one statement per
//! `ROWS_PER_STATEMENT` records (an array per column, `UNNEST`ed), skipping request ids
//! already stored.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use rust_decimal::Decimal;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgArgumentBuffer, PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgTypeInfo, PgValueRef,
};
use sqlx::{AssertSqlSafe, Decode, Encode, Postgres, Type};

use super::{Column, InsertError, Money, Read, Result, usage};
use crate::billing::record::UsageRecord;
use crate::config::DatabaseConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How long a request waits for a free connection before the database counts as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Usage records per `INSERT`: a backlog shipped after an outage goes in statements of
/// this size, all in one transaction.
const ROWS_PER_STATEMENT: usize = 1000;

fn options(config: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    // The URL may hold a password: it is not repeated in the error.
    PgConnectOptions::from_str(&config.url)
        .map_err(|e| anyhow::anyhow!("database.url is not a PostgreSQL URL: {e}"))
        .map(|o| o.application_name("tollgate"))
}

/// Connects to the database and applies pending migrations (under PostgreSQL's advisory
/// lock, so replicas starting together migrate once).
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options(config)?)
        .await
        .context("cannot connect to the PostgreSQL ledger")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("cannot migrate the database")?;
    Ok(pool)
}

/// The ledger writer's pool: two connections, made when first used, kept while the
/// writer runs.
pub fn sink(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options(config)?))
}

/// Inserts `records` in one transaction, skipping request ids already stored with the same
/// start (the unique key of a table partitioned by month; a request id names one request,
/// which started once), and burns the grants of those it took (`grants::burn_postgres`).
pub async fn insert_usage(
    pool: &PgPool,
    records: &[&UsageRecord],
) -> std::result::Result<(), InsertError> {
    let parameters: Vec<String> = (1..=usage::COLUMN_NAMES.len())
        .map(|n| format!("${n}"))
        .collect();
    let sql = format!(
        "INSERT INTO usage_records ({})
         SELECT * FROM UNNEST({})
         ON CONFLICT (request_id, started_at) DO NOTHING
         RETURNING request_id",
        usage::COLUMN_NAMES.join(", "),
        parameters.join(", ")
    );
    let mut tx = pool.begin().await.map_err(classify)?;
    let mut inserted = std::collections::HashSet::new();
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let query = sqlx::query(AssertSqlSafe(sql.as_str()));
        let rows = usage::bind_columns(query, chunk)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        for row in rows {
            inserted.insert(sqlx::Row::try_get::<String, _>(&row, 0).map_err(classify)?);
        }
    }
    // Only the records this insert took burn grants: a replay burns nothing twice, nor
    // does a record repeated in the batch (the insert took its first).
    let taken: Vec<&UsageRecord> = (records.iter().copied())
        .filter(|r| inserted.remove(&r.request_id))
        .collect();
    super::grants::burn_postgres(&mut tx, &taken)
        .await
        .map_err(classify)?;
    tx.commit().await.map_err(classify)
}

/// A constraint, a trigger's refusal or a value out of range refuses the record for good;
/// anything else may pass when tried again.
fn classify(e: sqlx::Error) -> InsertError {
    if let sqlx::Error::Database(d) = &e
        && let Some(code) = d.code()
        && (code.starts_with("23") || code.starts_with("22") || code == "P0001")
    {
        return InsertError::Refused(d.message().to_owned());
    }
    InsertError::Unavailable(e.into())
}

impl Read for PgRow {
    fn read<T: Column>(&self, column: &str) -> Result<T> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
}

impl Type<Postgres> for Money {
    fn type_info() -> PgTypeInfo {
        <Decimal as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Money {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> std::result::Result<IsNull, BoxDynError> {
        <Decimal as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Money {
    fn decode(value: PgValueRef<'r>) -> std::result::Result<Self, BoxDynError> {
        Ok(Money(<Decimal as Decode<Postgres>>::decode(value)?))
    }
}
