//! The ledger's storage: one seam, two backends. `Db` is SQLite (one machine, the default)
//! or PostgreSQL (many replicas); the modules per table group hold each query once, in SQL
//! both accept, run on either pool through `on!`. What differs per backend (connecting,
//! migrations, how money is stored, bulk inserts of usage) is in `sqlite` and `postgres`.

pub mod accounts;
pub mod audit_log;
pub mod compact;
pub mod funds;
pub mod grants;
pub mod health;
pub mod holds;
pub mod invoices;
pub mod journal;
pub mod keys;
pub mod listing;
pub mod partitions;
pub mod people;
pub mod postgres;
pub mod prices;
pub mod replicas;
pub mod retire;
pub mod rollups;
pub mod signal;
pub mod sqlite;
pub mod tasks;
pub mod usage;
pub mod webhooks;

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;

use crate::billing::record::UsageRecord;
use crate::config::{Backend, DatabaseConfig};
use crate::error::Error;

/// A pool of connections to the ledger; cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Runs `$body` with `$pool` bound to the pool of whichever backend `$db` is: the body is
/// written once and compiled for each.
macro_rules! on {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on;

/// An exact amount of money as a column: text in SQLite (which has no exact decimal
/// type), NUMERIC in PostgreSQL. Each backend module says how it is bound and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money(pub Decimal);

/// A type both backends read from a column.
pub trait Column:
    for<'r> sqlx::Decode<'r, sqlx::Sqlite>
    + sqlx::Type<sqlx::Sqlite>
    + for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
{
}

impl<T> Column for T where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
{
}

/// A row of either backend, read by column name: what the table modules turn into their
/// types, written once for both.
pub trait Read {
    fn read<T: Column>(&self, column: &str) -> Result<T>;

    fn money(&self, column: &str) -> Result<Decimal> {
        Ok(self.read::<Money>(column)?.0)
    }

    fn money_or_null(&self, column: &str) -> Result<Option<Decimal>> {
        Ok(self.read::<Option<Money>>(column)?.map(|m| m.0))
    }

    /// A value stored as JSON text; its default when the column is NULL.
    fn json<T: serde::de::DeserializeOwned + Default>(&self, column: &str) -> Result<T> {
        match self.read::<Option<String>>(column)? {
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                StoreError::Unavailable(anyhow::Error::new(e).context(column.to_owned()))
            }),
            None => Ok(T::default()),
        }
    }
}

/// `value` as the JSON text a column holds, or NULL when it is its default (nothing to
/// keep).
pub fn json_text<T: serde::Serialize + Default + PartialEq>(value: &T) -> Option<String> {
    (*value != T::default()).then(|| serde_json::to_string(value).expect("plain data serializes"))
}

/// The connection that ships usage records from the journal into the ledger, many to a
/// statement: a blocking SQLite connection of its own, or a small PostgreSQL pool.
pub enum Sink {
    /// With the accounts' change signal: a batch whose token grants paid for records moves
    /// balances that admission (in memory beside SQLite) reads again.
    Sqlite(
        parking_lot::Mutex<rusqlite::Connection>,
        signal::ChangeSignal,
    ),
    Postgres(sqlx::PgPool),
}

/// Why `Sink::insert` failed.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// The ledger refuses these records (a constraint): inserting them again fails again.
    #[error("the ledger refuses the record: {0}")]
    Refused(String),
    /// The ledger could not be reached or written; trying again later may succeed.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

impl Sink {
    /// Opens the sink of the (already migrated) ledger `config` names.
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<Sink> {
        Ok(match config.backend() {
            Backend::Sqlite => Sink::Sqlite(
                sqlite::open_for_ledger_writer(config)?.into(),
                signal::ChangeSignal::beside_sqlite(&config.url, "accounts"),
            ),
            Backend::Postgres => Sink::Postgres(postgres::sink(config)?),
        })
    }

    /// Inserts `records`, all or none; a request id already stored is skipped, so a batch
    /// retried after an unclear failure never writes a record twice.
    pub async fn insert(&self, records: &[&UsageRecord]) -> std::result::Result<(), InsertError> {
        match self {
            Sink::Sqlite(conn, accounts) => {
                let inserted = usage::insert(&conn.lock(), records.iter().copied());
                match inserted {
                    Ok(true) => {
                        accounts.announce().await;
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(match e.sqlite_error_code() {
                        Some(rusqlite::ErrorCode::ConstraintViolation) => {
                            InsertError::Refused(e.to_string())
                        }
                        _ => InsertError::Unavailable(e.into()),
                    }),
                }
            }
            Sink::Postgres(pool) => postgres::insert_usage(pool, records).await,
        }
    }

    /// Readies the sink for a bulk import (`tollgate usage import`): on SQLite a page cache
    /// of 256 MiB, so that records out of time order do not make every insert read index
    /// pages from disk again.
    pub fn for_bulk(self) -> anyhow::Result<Sink> {
        if let Sink::Sqlite(conn, _) = &self {
            conn.lock().pragma_update(None, "cache_size", -262_144)?;
        }
        Ok(self)
    }

    /// How many usage records the ledger holds.
    pub async fn count(&self) -> anyhow::Result<i64> {
        Ok(match self {
            Sink::Sqlite(conn, _) => {
                conn.lock()
                    .query_row("SELECT count(*) FROM usage_rows", [], |row| row.get(0))?
            }
            Sink::Postgres(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM usage_records")
                    .fetch_one(pool)
                    .await?
            }
        })
    }
}

/// What a store query can fail with, mapped once to the domain's `Error` (and so to HTTP).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint holds the value already (a name, an idempotency key): 409.
    #[error("{0}")]
    Conflict(String),
    /// The database could not answer, or holds what this version cannot read: 503 (the
    /// cause is logged, not shown).
    #[error("the database is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict("this already exists".into())
            }
            _ => StoreError::Unavailable(e.into()),
        }
    }
}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> Self {
        StoreError::Unavailable(e)
    }
}

impl From<rust_decimal::Error> for StoreError {
    fn from(e: rust_decimal::Error) -> Self {
        StoreError::Unavailable(e.into())
    }
}

impl From<crate::error::Overflow> for StoreError {
    fn from(e: crate::error::Overflow) -> Self {
        StoreError::Unavailable(e.into())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(message) => Error::Conflict(message),
            StoreError::Unavailable(cause) => match cause.downcast::<crate::error::Overflow>() {
                Ok(overflow) => overflow.into(),
                Err(cause) => {
                    tracing::error!(error = %format!("{cause:#}"), "database error");
                    Error::Unavailable("the database is unavailable; retry shortly".into())
                }
            },
        }
    }
}

/// Opens the ledger `config` names (creating and migrating it if needed) and imports the
/// usage journal if no running gateway holds it.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Db> {
    let db = match config.backend() {
        Backend::Sqlite => Db::Sqlite(sqlite::connect(config).await?),
        Backend::Postgres => Db::Postgres(postgres::connect(config).await?),
    };
    // Records a stopped gateway left in its journal belong in what this process reads.
    journal::recover(config).await?;
    Ok(db)
}

/// Opens the ledger of `config` as `connect` does, its daily rollups kept in the billing
/// time zone (`rollups::keep_days_in`): what `tollgate serve` and every CLI command use.
pub async fn open(config: &crate::config::Config) -> anyhow::Result<Db> {
    let db = connect(&config.database).await?;
    rollups::keep_days_in(&db, config.billing.zone())
        .await
        .context("cannot sum the daily usage rollups")?;
    partitions::keep_ahead(&db, Utc::now())
        .await
        .context("cannot create the usage records' monthly partitions")?;
    Ok(db)
}

/// How to ask `db` for a query's plan, and the column its lines come in.
pub(crate) fn explain(db: &Db) -> (&'static str, &'static str) {
    match db {
        Db::Sqlite(_) => ("EXPLAIN QUERY PLAN", "detail"),
        Db::Postgres(_) => ("EXPLAIN", "QUERY PLAN"),
    }
}

/// Whether the database answers.
pub async fn ping(db: &Db) -> bool {
    on!(db, |pool| sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .is_ok())
}

/// Where the usage journal lives: beside the SQLite file, or in the replica's own spool
/// directory when the ledger is PostgreSQL.
pub fn journal_base(config: &DatabaseConfig) -> anyhow::Result<PathBuf> {
    match config.backend() {
        Backend::Sqlite => sqlite::path(config),
        Backend::Postgres => {
            std::fs::create_dir_all(&config.spool).with_context(|| {
                format!(
                    "cannot create the spool directory {}",
                    config.spool.display()
                )
            })?;
            Ok(config.spool.join("ledger"))
        }
    }
}

pub fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}
