//! The PostgreSQL backend: one ledger shared by many replicas. Money is exact NUMERIC;
//! usage records arrive from each replica's journal in batches, one statement per
//! `ROWS_PER_STATEMENT` records (an array per column, unnested), skipping request ids
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
///
/// Most batches hold no request id stored before, so a batch goes in first as a plain
/// insert: `ON CONFLICT` would probe the request index once more for every record before
/// inserting it (a seventh of the backend's time per record, bench/README.md). A replay,
/// or an id twice in the batch, makes that insert fail on the index, and nothing of it is
/// kept; the batch then goes in again, skipping the ids stored.
pub async fn insert_usage(
    pool: &PgPool,
    records: &[&UsageRecord],
) -> std::result::Result<(), InsertError> {
    if !try_insert(pool, records, false).await.map_err(classify)? {
        try_insert(pool, records, true).await.map_err(classify)?;
    }
    Ok(())
}

/// One try at the batch, in one transaction. A plain try (not `skip_stored`) that meets a
/// request id stored before, or one the batch holds twice, rolls back and says `false`.
async fn try_insert(
    pool: &PgPool,
    records: &[&UsageRecord],
    skip_stored: bool,
) -> std::result::Result<bool, sqlx::Error> {
    // Each array unnested in the select list: the arrays are read in step, row by row.
    // `FROM UNNEST($1, ...)` gives the same rows, but first copies each array's elements
    // into a tuple store of its own (bench/README.md).
    let columns: Vec<String> = (1..=usage::COLUMN_NAMES.len())
        .map(|n| format!("unnest(${n})"))
        .collect();
    let mut sql = format!(
        "INSERT INTO usage_records ({}) SELECT {}",
        usage::COLUMN_NAMES.join(", "),
        columns.join(", ")
    );
    if skip_stored {
        sql += " ON CONFLICT (request_id, started_at) DO NOTHING RETURNING request_id";
    }
    let mut tx = pool.begin().await?;
    let mut inserted = std::collections::HashSet::new();
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let query = usage::bind_columns(sqlx::query(AssertSqlSafe(sql.as_str())), chunk);
        if skip_stored {
            for row in query.fetch_all(&mut *tx).await? {
                inserted.insert(sqlx::Row::try_get::<String, _>(&row, 0)?);
            }
            continue;
        }
        match query.execute(&mut *tx).await {
            Ok(done) if done.rows_affected() == chunk.len() as u64 => {}
            // Fewer rows than records (no trigger of today skips one): the second try
            // finds out which were taken.
            Ok(_) => return tx.rollback().await.map(|()| false),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return tx.rollback().await.map(|()| false);
            }
            Err(e) => return Err(e),
        }
    }
    // Only the records this insert took burn grants: a replay burns nothing twice, nor
    // does a record repeated in the batch (the insert took its first).
    let taken: Vec<&UsageRecord> = match skip_stored {
        false => records.to_vec(),
        true => (records.iter().copied())
            .filter(|r| inserted.remove(&r.request_id))
            .collect(),
    };
    super::grants::burn_postgres(&mut tx, &taken).await?;
    tx.commit().await.map(|()| true)
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
