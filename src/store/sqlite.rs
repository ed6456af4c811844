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

use foldhash::{HashMap, HashMapExt};

use super::rollups::HOUR_MS;
use super::{Column, Money, Read, Result, to_ms};
use crate::billing::record::UsageRecord;
use crate::config::{DatabaseConfig, Synchronous};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another connection's write lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The same for the ledger writer's imports: shorter, since a failed import is only tried
/// again later (its records wait in the journal), and a short wait sees the lock go sooner.
const IMPORT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Turns off SQLite's count of the memory it allocates (on by default), which takes a
/// global mutex on every allocation and free: in a profile of `usage import`, mutexes were
/// 6% of the time. tollgate never reads the count. Called once, before any thread uses
/// SQLite (the binary's `main`); later, SQLite refuses the change and nothing happens.
pub fn skip_memory_count() {
    // SAFETY: `sqlite3_config` must not run while another thread uses SQLite; it is called
    // from `main` before the runtime starts. After `sqlite3_initialize` it returns
    // SQLITE_MISUSE and changes nothing.
    unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as libc::c_int);
    }
}

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
    // A batch's statement journal (its inserts may abort one by one) kept in memory, not
    // written to a temporary file.
    conn.pragma_update(None, "temp_store", "memory")?;
    // Every statement an import runs stays prepared: a dozen or so, the usage insert in
    // each of its sizes among them (rusqlite keeps 16 by default).
    conn.set_prepared_statement_cache_capacity(32);
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

/// A rollup row's group: account, hour or day, key (its lineage once looked up), model,
/// chip, deployment ('' for none), endpoint, status, price version.
type Group<'r> = (
    i64,
    i64,
    i64,
    &'r str,
    &'r str,
    &'r str,
    &'r str,
    &'static str,
    i64,
);

/// A batch's records summed by integers first: account, key, shape (`compact`: it names
/// the model, chip, deployment, endpoint, status and price version), hour, and day (none
/// before the first). Hashing and comparing a group's strings for every record took most
/// of the rollups' time; this way it is done once for each cell.
type Cell = (i64, i64, i64, i64, Option<i64>);

/// Adds the records just inserted, each with its shape id, to the hourly and daily
/// rollups, on the ledger writer's connection inside the transaction that inserted them:
/// summed per group in memory first, so that a batch upserts each group once
/// (PostgreSQL's statement trigger does the same in SQL,
/// `migrations/postgres/0011_usage_rollups.sql`). Days are those of `rollup_days`, read in
/// the same transaction.
pub fn roll_up<'r>(
    conn: &rusqlite::Connection,
    inserted: &[(&'r UsageRecord, i64)],
) -> rusqlite::Result<()> {
    let starts = || inserted.iter().map(|(r, _)| to_ms(r.started_at));
    let (Some(first), Some(last)) = (starts().min(), starts().max()) else {
        return Ok(());
    };
    let mut days_in = conn.prepare_cached(
        "SELECT start FROM rollup_days
         WHERE start >= coalesce((SELECT start FROM rollup_days WHERE start <= ?1
                                  ORDER BY start DESC LIMIT 1), ?1)
           AND start <= ?2 ORDER BY start",
    )?;
    let days: Vec<i64> = days_in
        .query_map([first, last], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut cells: HashMap<Cell, (&'r UsageRecord, [i64; 10])> = HashMap::new();
    for &(r, shape) in inserted {
        let at = to_ms(r.started_at);
        // The last day that starts at or before the record (none before the first day).
        let day = days.partition_point(|&d| d <= at).checked_sub(1);
        let cell = (
            r.account_id,
            r.key_id,
            shape,
            at.div_euclid(HOUR_MS) * HOUR_MS,
            day.map(|day| days[day]),
        );
        let counts = [
            1,
            r.tokens.prompt as i64,
            r.tokens.cached as i64,
            r.tokens.completion as i64,
            r.units.images as i64,
            r.units.tasks as i64,
            r.units.compute_ms as i64,
            r.units.uploads as i64,
            r.tokens.cache_write as i64,
            r.tokens.reasoning as i64,
        ];
        let (_, sum) = cells.entry(cell).or_insert((r, [0; 10]));
        for (s, c) in sum.iter_mut().zip(counts) {
            *s += c;
        }
    }
    let mut hourly: HashMap<Group<'r>, [i64; 10]> = HashMap::new();
    let mut daily: HashMap<Group<'r>, [i64; 10]> = HashMap::new();
    for ((account, key, _, hour, day), (r, counts)) in cells {
        let group = |bucket| -> Group<'r> {
            (
                account,
                bucket,
                key,
                r.model.as_str(),
                r.chip.as_str(),
                r.deployment.as_deref().unwrap_or(""),
                &*r.endpoint,
                r.status.as_str(),
                r.price_version_id,
            )
        };
        let add = |sums: &mut HashMap<Group<'r>, [i64; 10]>, bucket| {
            let sum = sums.entry(group(bucket)).or_default();
            for (s, c) in sum.iter_mut().zip(counts) {
                *s += c;
            }
        };
        add(&mut hourly, hour);
        if let Some(day) = day {
            add(&mut daily, day);
        }
    }
    let mut lineage_of =
        conn.prepare_cached("SELECT coalesce(lineage_id, id) FROM api_keys WHERE id = ?1")?;
    let mut lineages: HashMap<i64, i64> = HashMap::new();
    for (table, column, sums) in [
        ("usage_hourly", "hour", hourly),
        ("usage_daily", "day", daily),
    ] {
        let mut upsert = conn.prepare_cached(&format!(
            "INSERT INTO {table} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                                         ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
             ON CONFLICT (account_id, {column}, lineage_id, model, chip, deployment,
                          endpoint, status, price_version_id)
             DO UPDATE SET
                 requests = requests + excluded.requests,
                 prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                 cached_tokens = cached_tokens + excluded.cached_tokens,
                 completion_tokens = completion_tokens + excluded.completion_tokens,
                 images = images + excluded.images,
                 tasks = tasks + excluded.tasks,
                 compute_ms = compute_ms + excluded.compute_ms,
                 uploads = uploads + excluded.uploads,
                 cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
                 reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens"
        ))?;
        for (group, counts) in sums {
            let (account, bucket, key, model, chip, deployment, endpoint, status, price) = group;
            let lineage = match lineages.get(&key) {
                Some(&lineage) => lineage,
                None => {
                    let lineage: i64 = lineage_of.query_row([key], |row| row.get(0))?;
                    *lineages.entry(key).or_insert(lineage)
                }
            };
            upsert.execute(rusqlite::params![
                account, bucket, lineage, model, chip, deployment, endpoint, status, price,
                counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6],
                counts[7], counts[8], counts[9]
            ])?;
        }
    }
    Ok(())
}
