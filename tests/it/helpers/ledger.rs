//! Which ledger the suite runs against: a SQLite file (the default), or PostgreSQL when
//! `TOLLGATE_TEST_LEDGER=postgres` (`scripts/test` runs the suite both ways). On
//! PostgreSQL one server serves the whole test process, started on first use and stopped
//! at its exit, and every ledger is a fresh database on it; rate limits are then counted
//! in one Redis server, likewise, under a fresh key prefix per gateway.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tollgate::config::{DatabaseConfig, Synchronous};
use tollgate::store::Db;

use super::postgres::Postgres;
use super::redis::Redis;

/// Whether this run's ledgers are PostgreSQL databases.
pub fn is_postgres() -> bool {
    std::env::var("TOLLGATE_TEST_LEDGER").is_ok_and(|v| v == "postgres")
}

/// The test process's PostgreSQL server.
fn server() -> &'static Postgres {
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    SERVER.get_or_init(|| {
        extern "C" fn stop() {
            if let Some(server) = SERVER.get() {
                server.remove();
            }
        }
        let server = Postgres::start();
        // SAFETY: registers a plain function, run once at process exit.
        unsafe { libc::atexit(stop) };
        server
    })
}

/// The test process's Redis server (with PostgreSQL ledgers).
fn redis() -> &'static Redis {
    static SERVER: OnceLock<Redis> = OnceLock::new();
    SERVER.get_or_init(|| {
        extern "C" fn stop() {
            if let Some(server) = SERVER.get() {
                server.stop();
            }
        }
        let server = Redis::start();
        // SAFETY: registers a plain function, run once at process exit.
        unsafe { libc::atexit(stop) };
        server
    })
}

/// Where `config` counts rate limits: in this process, or (with PostgreSQL ledgers) in the
/// shared Redis under a prefix of its own.
pub fn limits(config: &mut tollgate::Config) {
    if is_postgres() {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        config.limits.store = tollgate::config::LimitStoreKind::Redis;
        config.redis.url = Some(redis().url.clone());
        config.redis.prefix = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        // A loaded machine must not push the tests into the fallback.
        config.redis.timeout_ms = 2000;
    }
}

/// A new, empty ledger whose files (the SQLite file, or the replica's spool) go in `dir`.
pub fn fresh(dir: &Path, synchronous: Synchronous) -> DatabaseConfig {
    let mut database = DatabaseConfig {
        synchronous,
        spool: dir.join("spool"),
        ..DatabaseConfig::default()
    };
    database.url = if is_postgres() {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("ledger_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        server().create_database(&name)
    } else {
        format!("sqlite://{}", dir.join("ledger.db").display())
    };
    database
}

/// The `[database]` section of a config file for `database`.
pub fn toml(database: &DatabaseConfig) -> String {
    format!(
        "[database]\nurl = \"{}\"\nsynchronous = \"{}\"\nspool = \"{}\"\n",
        database.url,
        database.synchronous.as_str(),
        database.spool.display()
    )
}

/// Runs `sql` (with `$1`.. bound to `values`) on either backend, as a test that tampers
/// with the ledger does; returns the rows changed.
pub async fn execute(db: &Db, sql: &str, values: &[i64]) -> Result<u64, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Db::Sqlite(pool) => {
            let mut query = sqlx::query(sql);
            for v in values {
                query = query.bind(*v);
            }
            Ok(query.execute(pool).await?.rows_affected())
        }
        Db::Postgres(pool) => {
            let mut query = sqlx::query(sql);
            for v in values {
                query = query.bind(*v);
            }
            Ok(query.execute(pool).await?.rows_affected())
        }
    }
}

/// Runs `sql` with `$1` bound to `text` on either backend; panics if it fails.
pub async fn execute_text(db: &Db, sql: &str, text: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Db::Sqlite(pool) => sqlx::query(sql).bind(text).execute(pool).await.map(|_| ()),
        Db::Postgres(pool) => sqlx::query(sql).bind(text).execute(pool).await.map(|_| ()),
    }
    .unwrap();
}

/// Sums every record into the (empty) hourly rollups.
pub const HOURLY_FROM_RECORDS: &str = "INSERT INTO usage_hourly
    SELECT r.account_id, r.started_at / 3600000 * 3600000, coalesce(k.lineage_id, k.id),
           r.model, r.chip, coalesce(r.deployment, ''), r.endpoint, r.status,
           r.price_version_id, count(*), sum(r.prompt_tokens), sum(r.cached_tokens),
           sum(r.completion_tokens), sum(r.images), sum(r.tasks), sum(r.compute_ms),
           sum(r.uploads), sum(r.cache_write_tokens), sum(r.reasoning_tokens)
    FROM usage_records r JOIN api_keys k ON k.id = r.key_id
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9";

/// Records `simple_price`'s price (model `m`, chip `c`) in a ledger an older tollgate
/// wrote, whose price table has fewer rates than today's; returns its version id.
pub async fn old_simple_price(db: &Db) -> i64 {
    let sql = "INSERT INTO price_versions (model, chip, effective_from, input_per_1k,
                   output_per_1k, per_request, per_image, per_task, per_second, per_upload,
                   recorded_at)
               VALUES ('m', 'c', 1767225600000, '0.001', '0.002', '0', '0', '0', '0', '0', 0)
               RETURNING id";
    match db {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

/// A directory in `dir` with this backend's migrations (`migrations/sqlite` or
/// `migrations/postgres`) numbered below `first_left_out`: a ledger as an older tollgate
/// wrote it.
pub fn migrations_before(dir: &Path, first_left_out: &str) -> std::path::PathBuf {
    let backend = if is_postgres() { "postgres" } else { "sqlite" };
    let before = dir.join(format!("migrations-before-{first_left_out}"));
    std::fs::create_dir(&before).unwrap();
    for file in std::fs::read_dir(format!("migrations/{backend}")).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < first_left_out {
            std::fs::copy(&path, before.join(name)).unwrap();
        }
    }
    before
}

/// Ages every usage record to have started (and ended) at `at_ms`, and sums the hourly
/// and daily (in `zone`) rollups again as the records now say: drops the trigger that keeps
/// records immutable.
pub async fn move_all_records(db: &Db, at_ms: i64, zone: chrono_tz::Tz) {
    // SQLite's records are the rows behind its `usage_records` view.
    let (drop, update) = match db {
        Db::Sqlite(_) => (
            "DROP TRIGGER IF EXISTS usage_rows_are_immutable",
            "UPDATE usage_rows SET started_at = $1, ended_after_ms = 0",
        ),
        Db::Postgres(_) => (
            "DROP TRIGGER IF EXISTS usage_records_are_immutable ON usage_records",
            "UPDATE usage_records SET started_at = $1, ended_at = $1",
        ),
    };
    execute(db, drop, &[]).await.unwrap();
    execute(db, update, &[at_ms]).await.unwrap();
    execute(db, "DELETE FROM usage_hourly", &[]).await.unwrap();
    execute(db, HOURLY_FROM_RECORDS, &[]).await.unwrap();
    execute(db, "DELETE FROM rollup_zone", &[]).await.unwrap();
    tollgate::store::rollups::keep_days_in(db, zone)
        .await
        .unwrap();
}

/// The request ids of every stored record, sorted.
pub async fn request_ids(db: &Db) -> Vec<String> {
    let query = "SELECT request_id FROM usage_records";
    let mut ids: Vec<String> = match db {
        Db::Sqlite(pool) => sqlx::query_scalar(query).fetch_all(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_scalar(query).fetch_all(pool).await.unwrap(),
    };
    ids.sort();
    ids
}

/// Asserts that every one of `answers` (request ids a client received in full) has a record
/// and that no request id is stored twice; returns how many records there are.
pub async fn assert_recorded_once(db: &Db, answers: &[String]) -> usize {
    let ids = request_ids(db).await;
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(ids.len(), distinct.len(), "no record twice");
    let missing = answers
        .iter()
        .filter(|id| distinct.binary_search(id).is_err())
        .count();
    assert_eq!(
        missing,
        0,
        "of {} answers, {missing} have no record",
        answers.len()
    );
    ids.len()
}

/// An account inserted as an older schema has it (before display names, 0016/0014): the
/// id of account `name`.
pub async fn old_account(db: &tollgate::store::Db, name: &str) -> i64 {
    const INSERT: &str = "INSERT INTO accounts (name, created_at) VALUES ($1, 0) RETURNING id";
    match db {
        tollgate::store::Db::Sqlite(pool) => {
            sqlx::query_scalar(INSERT).bind(name).fetch_one(pool).await
        }
        tollgate::store::Db::Postgres(pool) => {
            sqlx::query_scalar(INSERT).bind(name).fetch_one(pool).await
        }
    }
    .unwrap()
}
