//! SQLite access through sqlx: the pool, migrations, and one module per table group.

pub mod accounts;
pub mod invoices;
pub mod journal;
pub mod keys;
pub mod prices;
pub mod signal;
pub mod usage;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::config::{DatabaseConfig, Synchronous};
use crate::error::ApiError;

pub type Db = SqlitePool;

/// What a store query can fail with, mapped to HTTP once (`From<StoreError> for ApiError`).
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Unavailable(cause) => match cause.downcast::<crate::error::Overflow>() {
                Ok(overflow) => overflow.into(),
                Err(cause) => {
                    tracing::error!(error = %format!("{cause:#}"), "database error");
                    ApiError::Unavailable("the database is unavailable; retry shortly".into())
                }
            },
        }
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another connection's write lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite file of `config`.
pub fn sqlite_path(config: &DatabaseConfig) -> anyhow::Result<PathBuf> {
    Ok(options(config)?.get_filename().to_owned())
}

fn options(config: &DatabaseConfig) -> anyhow::Result<SqliteConnectOptions> {
    SqliteConnectOptions::from_str(&config.url)
        .with_context(|| format!("database.url '{}' is not a SQLite URL", config.url))
}

/// Opens (creating if needed) the database in WAL mode, applies pending migrations, and
/// imports the usage journal if no running gateway holds it.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Db> {
    let synchronous = match config.synchronous {
        Synchronous::Normal => SqliteSynchronous::Normal,
        Synchronous::Full => SqliteSynchronous::Full,
    };
    let options = options(config)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open database {}", config.url))?;
    MIGRATOR
        .run(&pool)
        .await
        .context("cannot migrate the database")?;
    // Records a stopped gateway left in its journal belong in what this process reads.
    let database = config.clone();
    tokio::task::spawn_blocking(move || journal::recover(&database)).await??;
    Ok(pool)
}

/// The ledger writer's own blocking connection to the database `connect` opened and
/// migrated, with the same settings (WAL mode is the file's own).
pub fn open_for_ledger_writer(config: &DatabaseConfig) -> anyhow::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let path = sqlite_path(config)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(&path, flags)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", config.synchronous.as_str())?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    anyhow::ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "database {} is not in WAL mode",
        path.display()
    );
    Ok(conn)
}

pub fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}
