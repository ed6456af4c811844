//! SQLite access through sqlx: the pool, migrations, and one module per table group.

pub mod accounts;
pub mod invoices;
pub mod keys;
pub mod prices;
pub mod signal;
pub mod usage;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::config::DatabaseConfig;

pub type Db = SqlitePool;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Opens (creating if needed) the database in WAL mode and applies pending migrations.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Db> {
    let synchronous = match config.synchronous.as_str() {
        "normal" => SqliteSynchronous::Normal,
        _ => SqliteSynchronous::Full,
    };
    let options = SqliteConnectOptions::from_str(&config.url)
        .with_context(|| format!("database.url '{}' is not a SQLite URL", config.url))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open database {}", config.url))?;
    MIGRATOR
        .run(&pool)
        .await
        .context("cannot migrate the database")?;
    Ok(pool)
}

pub fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}
