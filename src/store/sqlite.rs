//! The SQLite backend: one file in WAL mode, the embedded default for one machine. Money
//! is stored as exact decimal text; the ledger writer has its own blocking connection.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use rust_decimal::Decimal;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    SqliteTypeInfo, SqliteValueRef,
};
use sqlx::{Decode, Encode, Sqlite, SqlitePool, Type};

use super::{Column, Money, Read, Result};
use crate::config::{DatabaseConfig, Synchronous};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another connection's write lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The same for the ledger writer's imports: shorter, since a failed import is only tried
/// again later (its records wait in the journal), and a short wait sees the lock go sooner.
const IMPORT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The SQLite file of `config`.
pub fn path(config: &DatabaseConfig) -> anyhow::Result<PathBuf> {
    Ok(options(config)?.get_filename().to_owned())
}

fn options(config: &DatabaseConfig) -> anyhow::Result<SqliteConnectOptions> {
    SqliteConnectOptions::from_str(&config.url)
        .with_context(|| format!("database.url '{}' is not a SQLite URL", config.url))
}

/// Opens (creating if needed) the database in WAL mode and applies pending migrations.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<SqlitePool> {
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
    super::funds::compute_missing(&pool)
        .await
        .context("cannot compute the accounts' running totals")?;
    Ok(pool)
}

/// The ledger writer's own blocking connection to the database `connect` opened and
/// migrated, with the same settings (WAL mode is the file's own).
pub fn open_for_ledger_writer(config: &DatabaseConfig) -> anyhow::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let path = path(config)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(&path, flags)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(IMPORT_BUSY_TIMEOUT)?;
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

impl Read for SqliteRow {
    fn read<T: Column>(&self, column: &str) -> Result<T> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
}

impl Type<Sqlite> for Money {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for Money {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as sqlx::Database>::ArgumentBuffer,
    ) -> std::result::Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.0.to_string(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Money {
    fn decode(value: SqliteValueRef<'r>) -> std::result::Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(Money(Decimal::from_str(text).map_err(|e| {
            format!("'{text}' is not an exact amount: {e}")
        })?))
    }
}
