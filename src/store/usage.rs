//! Usage records: written in batches by the ledger writer, read by audits and tests.

use std::collections::HashMap;

use foldhash::HashSetExt;
use rusqlite::OptionalExtension;
use rust_decimal::Decimal;

use super::compact::{self, RequestKey};
use super::{Db, Read, Result, json_text, on, to_ms};
use crate::billing::record::{Attempt, Reported, UsageRecord};

/// Records per multi-row `INSERT`, largest first: one statement execution opens the table
/// and its four indexes, and copies each page it first changes to its statement journal,
/// once for all of them. A batch is inserted in as many of the largest as it fills, then
/// of the next; the last is 1, so every record goes in.
const ROWS_PER_INSERT: [usize; 4] = [256, 16, 4, 1];

/// Inserts `records` on the ledger writer's connection, all or none, in one transaction
/// with the charge of their accounts' running totals (`funds::charge`), the burn of their
/// grants (`grants::burn_sqlite`) and their rollups
/// (`sqlite::roll_up`), in statements of `ROWS_PER_INSERT` rows of `usage_rows`
/// (`compact`). A request id already present is skipped and charges nothing, so a batch
/// retried after an unclear failure never writes or charges a record twice. A batch with
/// a record of a retired period (`store::retire`) is refused whole. Whether token grants
/// paid for any of them (balances moved that admission does not see).
pub fn insert<'a, I>(conn: &rusqlite::Connection, records: I) -> rusqlite::Result<bool>
where
    I: IntoIterator<Item = &'a UsageRecord>,
    I::IntoIter: ExactSizeIterator,
{
    let records: Vec<&UsageRecord> = records.into_iter().collect();
    let keys: Vec<RequestKey> = records
        .iter()
        .map(|r| RequestKey::of(&r.request_id))
        .collect();
    // Immediate: the write lock is taken (waiting out other writers) before the first
    // read, so no other writer's commit in between can make the upgrade fail at once.
    let transaction =
        rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    refuse_retired(conn, &records)?;
    let shapes = compact::shape_ids(conn, &records)?;
    // SQLite gives a new row the id above the largest, so the rows above this one are the
    // ones these statements take.
    let last_before: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM usage_rows")?
        .query_row([], |row| row.get(0))?;
    let columns = compact::COLUMNS.len();
    let mut rows: Vec<(&UsageRecord, &RequestKey, i64)> = (records.iter().copied())
        .zip(&keys)
        .zip(shapes)
        .map(|((record, key), shape)| (record, key, shape))
        .collect();
    // Records come in the order their requests ended. Inserted in the order they started
    // (a gateway's request id begins with its start's millisecond), each index of
    // `usage_rows` but the account's and key's takes them at its end, where SQLite puts an
    // entry without searching for its place. A stable sort: of one id twice, the first
    // stays first.
    rows.sort_by(|a, b| (to_ms(a.0.started_at), a.1).cmp(&(to_ms(b.0.started_at), b.1)));
    // The largest statements first, then smaller ones for what is left.
    let mut taken = 0;
    let mut rest = &rows[..];
    for size in ROWS_PER_INSERT {
        let (whole, left) = rest.split_at(rest.len() / size * size);
        rest = left;
        if whole.is_empty() {
            continue;
        }
        let mut insert = conn.prepare_cached(&insert_sql(size))?;
        for chunk in whole.chunks_exact(size) {
            for (row, (record, key, shape)) in chunk.iter().enumerate() {
                compact::bind(&mut insert, row * columns, record, key, *shape)?;
            }
            taken += insert.raw_execute()?;
            make_way();
        }
    }
    // Each record the inserts took (not skipped), with its shape id.
    let inserted: Vec<(&UsageRecord, i64)> = if taken == records.len() {
        rows.iter()
            .map(|&(record, _, shape)| (record, shape))
            .collect()
    } else {
        replays_set_apart(conn, &rows, last_before, taken)?
    };
    // Account → what the records really inserted cost.
    let mut charged: HashMap<i64, Decimal> = HashMap::new();
    for &(record, _) in &inserted {
        compact::add_details(conn, record)?;
        let sum = charged.entry(record.account_id).or_default();
        *sum = sum
            .checked_add(record.cost)
            .ok_or_else(|| failed("the records' costs overflow"))?;
    }
    super::funds::charge(conn, &charged)?;
    let inserted_records: Vec<&UsageRecord> = inserted.iter().map(|&(r, _)| r).collect();
    let tokens_granted = super::grants::burn_sqlite(conn, &inserted_records)?;
    super::sqlite::roll_up(conn, &inserted)?;
    transaction.commit()?;
    Ok(tokens_granted)
}

/// Between two statements of an import, lets the threads that woke on this one's core
/// run first. An import is a burst of work on a thread of its own: at 16,000 requests a
/// second, 1,600 records every 100 ms, in runs of up to 4 ms. Linux's scheduler lets a
/// running thread go on for its slice before a thread that wakes on its core (a lower
/// priority for the import did not change that, `bench/README.md`), so the requests that
/// woke there waited out the import, and they were the open loop's tail (p99). A yield
/// ends the slice; when nothing else wants the core it costs one system call.
fn make_way() {
    std::thread::yield_now();
}

/// Refuses the batch if a record started before the retired day: that period's records
/// are summed into the accounts' retired costs already, so it takes no new ones. Checked
/// here, once a batch and under the write lock, rather than by a trigger on every row
/// (`migrations/sqlite/0025_retired_periods_checked_by_the_writer.sql`).
fn refuse_retired(conn: &rusqlite::Connection, records: &[&UsageRecord]) -> rusqlite::Result<()> {
    let before: Option<i64> = conn
        .prepare_cached("SELECT before FROM usage_retired")?
        .query_row([], |row| row.get(0))
        .optional()?;
    match before {
        Some(before) if records.iter().any(|r| to_ms(r.started_at) < before) => Err(refused(
            "the records of this period are retired: it takes no new ones".into(),
        )),
        _ => Ok(()),
    }
}

/// The records the inserts took, when they skipped some (`taken` of them were taken): of
/// each request id, the first record of the batch if its row is new (above
/// `last_before`). A record skipped must be a replay, its id stored with the same start,
/// or the batch is refused: a request id names one request, which started once.
fn replays_set_apart<'r>(
    conn: &rusqlite::Connection,
    rows: &[(&'r UsageRecord, &RequestKey, i64)],
    last_before: i64,
    taken: usize,
) -> rusqlite::Result<Vec<(&'r UsageRecord, i64)>> {
    let mut stored =
        conn.prepare_cached("SELECT id, started_at FROM usage_rows WHERE request_key = ?")?;
    let mut seen = foldhash::HashSet::with_capacity(rows.len());
    let mut inserted = Vec::with_capacity(taken);
    for &(record, key, shape) in rows {
        let (id, started_at): (i64, i64) =
            stored.query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))?;
        if id > last_before && seen.insert(key) {
            inserted.push((record, shape));
        } else if started_at != to_ms(record.started_at) {
            return Err(refused(format!(
                "request id {} is recorded already, with another start",
                record.request_id
            )));
        }
    }
    // Every row the inserts took is one of the batch's; were it not, it would go
    // uncharged: the whole batch fails instead.
    if inserted.len() != taken {
        return Err(failed(
            "the ledger inserted a record the batch does not hold",
        ));
    }
    Ok(inserted)
}

/// A batch the writer cannot account for: it fails whole, and is tried again.
fn failed(why: &str) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(why.into())
}

/// A constraint the batch breaks: the ledger refuses it (`InsertError::Refused`).
fn refused(why: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
        Some(why),
    )
}

/// `INSERT INTO usage_rows ... VALUES (?, ...), ...` for `rows` records.
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; compact::COLUMNS.len()].join(", "));
    format!(
        "INSERT INTO usage_rows ({}) VALUES {} ON CONFLICT (request_key) DO NOTHING",
        compact::COLUMNS.join(", "),
        vec![row; rows].join(", ")
    )
}

/// Every column of `usage_records` (but its row id), written once: its name and type as
/// stored (and, after `as`, as read back into `StoredRecord`), the value a `UsageRecord` binds to it on PostgreSQL
/// (`bind_columns`, where `pg` says when it differs), and how it is read when the stored
/// type is not what both backends return (`from_row`). SQLite stores records compactly
/// (`compact`) and reads them through its `usage_records` view, column for column. The
/// tables themselves are in `migrations/`.
macro_rules! usage_columns {
    ($r:ident, $row:ident => { $($column:ident: $stored:ty $(as $field:ty)? = $bind:expr $(; read $read:expr)? $(; pg $pg:expr)?,)* }) => {
        /// The columns, in the order they are bound.
        pub const COLUMN_NAMES: &[&str] = &[$(stringify!($column)),*];

        /// A stored record, flattened for reading (audits, tests, CLI).
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        pub struct StoredRecord {
            pub id: i64,
            $(pub $column: usage_columns!(@field $stored $(, $field)?),)*
        }

        /// Binds `records` to `query` column by column, one array each, for PostgreSQL's
        /// insert, which unnests each.
        pub fn bind_columns<'q>(
            query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
            records: &[&UsageRecord],
        ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
            $(
                let column: Vec<$stored> = records
                    .iter()
                    .map(|$r| usage_columns!(@pg $bind $(, $pg)?))
                    .collect();
                let query = query.bind(column);
            )*
            query
        }

        pub(super) fn from_row($row: &impl Read) -> Result<StoredRecord> {
            Ok(StoredRecord {
                id: $row.read("id")?,
                $($column: usage_columns!(@read $row, $column, $stored $(, $read)?),)*
            })
        }
    };
    (@field $stored:ty) => { $stored };
    (@field $stored:ty, $field:ty) => { $field };
    (@pg $bind:expr) => {
        ($bind).to_owned()
    };
    (@pg $bind:expr, $pg:expr) => {
        $pg
    };
    (@read $row:ident, $column:ident, $stored:ty) => {
        $row.read::<$stored>(stringify!($column))?
    };
    (@read $row:ident, $column:ident, $stored:ty, $read:expr) => {
        $read
    };
}

usage_columns!(r, row => {
    request_id: String = r.request_id,
    account_id: i64 = r.account_id,
    key_id: i64 = r.key_id,
    model: String = r.model,
    chip: String = r.chip,
    deployment: Option<String> = r.deployment,
    endpoint: String = &*r.endpoint,
    stream: bool = r.stream,
    status: String = r.status.as_str(),
    http_status: i64 = r.http_status; pg i64::from(r.http_status),
    error: Option<String> = r.error,
    prompt_tokens: i64 = (r.tokens.prompt as i64),
    completion_tokens: i64 = (r.tokens.completion as i64),
    cached_tokens: i64 = (r.tokens.cached as i64),
    cache_write_tokens: i64 = (r.tokens.cache_write as i64),
    reasoning_tokens: i64 = (r.tokens.reasoning as i64),
    images: i64 = (r.units.images as i64),
    tasks: i64 = (r.units.tasks as i64),
    compute_ms: i64 = (r.units.compute_ms as i64),
    uploads: i64 = (r.units.uploads as i64),
    usage_source: String = r.usage_source.as_str(),
    price_version_id: i64 = r.price_version_id,
    cost: Decimal = r.cost.to_string(); read row.money("cost")?; pg r.cost,
    blocked: bool = r.blocked,
    moderation: Option<String> = r.moderation,
    started_at: i64 = to_ms(r.started_at),
    ended_at: i64 = to_ms(r.ended_at),
    latency_ms: i64 = r.latency_ms,
    ttft_ms: Option<i64> = r.ttft_ms,
    attempts: Option<String> as Vec<Attempt> = json_text(&r.attempts); read row.json("attempts")?,
    reported: Option<String> as Option<Reported> = json_text(&r.reported); read row.json("reported")?,
});

pub async fn by_request_id(db: &Db, request_id: &str) -> Result<Option<StoredRecord>> {
    let row = match db {
        // The view's request id is computed: the lookup is by the stored key.
        Db::Sqlite(pool) => {
            let query = sqlx::query(
                "SELECT * FROM usage_records
                 WHERE id = (SELECT id FROM usage_rows WHERE request_key = $1)",
            );
            let row = RequestKey::of(request_id).bind(query).fetch_optional(pool);
            row.await?.as_ref().map(from_row).transpose()?
        }
        Db::Postgres(pool) => {
            let query = sqlx::query("SELECT * FROM usage_records WHERE request_id = $1");
            let row = query.bind(request_id).fetch_optional(pool).await?;
            row.as_ref().map(from_row).transpose()?
        }
    };
    Ok(row)
}

/// The most recent records of an account, newest first.
pub async fn recent(db: &Db, account_id: i64, limit: i64) -> Result<Vec<StoredRecord>> {
    on!(db, |pool| {
        let rows = sqlx::query(
            "SELECT * FROM usage_records WHERE account_id = $1
             ORDER BY started_at DESC, id DESC LIMIT $2",
        )
        .bind(account_id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter().map(from_row).collect()
    })
}

pub async fn count(db: &Db) -> Result<i64> {
    Ok(on!(db, |pool| {
        sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(pool)
            .await?
    }))
}

/// The records that started in `[from_ms, to_ms)` after `after` (started at, id), oldest
/// first, at most `limit`: a walk of the time index (on SQLite it ends with the id), for
/// exports of any size one page at a time.
pub async fn oldest_first(
    db: &Db,
    (from_ms, to_ms): (i64, i64),
    after: Option<(i64, i64)>,
    limit: i64,
) -> Result<Vec<StoredRecord>> {
    let (at, id) = after.unwrap_or((from_ms, i64::MIN));
    on!(db, |pool| {
        let rows = sqlx::query(
            "SELECT * FROM usage_records
             WHERE started_at >= $1 AND started_at < $2 AND (started_at > $1 OR id > $3)
             ORDER BY started_at, id LIMIT $4",
        )
        .bind(at.max(from_ms))
        .bind(to_ms)
        .bind(id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter().map(from_row).collect()
    })
}
