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

pub type Db = SqlitePool;

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
