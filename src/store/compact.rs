//! How SQLite stores a usage record (`migrations/sqlite/0014_compact_usage_records.sql`):
//! a row of `usage_rows` naming its shape (model, chip, deployment, endpoint, stream,
//! status, HTTP status, usage source, blocked, price version: a few dozen combinations,
//! each stored once in `usage_shapes`), with the gateway's request ids as their 16 bytes
//! and the cost as an integer where it fits; units, error, moderation, backends passed
//! over and counts as reported, which most records lack, in `usage_details`. Every read
//! goes through the `usage_records` view, which gives the columns back as they were.

use foldhash::{HashMap, HashMapExt};

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::{json_text, to_ms};
use crate::billing::record::UsageRecord;

/// A request id as `usage_rows.request_key` holds it: `req_` and 32 lowercase hex digits
/// (the gateway's own ids, a UUIDv7) as those 16 bytes, any other id as its text. Either
/// way the view turns it back into the same text. Ordered as SQLite orders the column:
/// text before bytes, each byte by byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKey<'a> {
    Text(&'a str),
    Uuid([u8; 16]),
}

impl<'a> RequestKey<'a> {
    pub fn of(request_id: &'a str) -> RequestKey<'a> {
        let hex = request_id
            .strip_prefix("req_")
            .unwrap_or_default()
            .as_bytes();
        if hex.len() != 32 {
            return RequestKey::Text(request_id);
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            match (lower_hex(pair[0]), lower_hex(pair[1])) {
                (Some(high), Some(low)) => *byte = high << 4 | low,
                _ => return RequestKey::Text(request_id),
            }
        }
        RequestKey::Uuid(bytes)
    }

    /// Binds it to `query`, for reads through sqlx.
    pub fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>
    where
        'a: 'q,
    {
        match self {
            RequestKey::Uuid(bytes) => query.bind(bytes.to_vec()),
            RequestKey::Text(text) => query.bind(text),
        }
    }
}

/// The value of a lowercase hex digit.
fn lower_hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

impl rusqlite::ToSql for RequestKey<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            RequestKey::Uuid(bytes) => ValueRef::Blob(bytes),
            RequestKey::Text(text) => ValueRef::Text(text.as_bytes()),
        }))
    }
}

/// A record's shape: the columns of `usage_shapes` but its id.
type Shape<'r> = (
    &'r str,
    &'r str,
    &'r str,
    &'r str,
    bool,
    &'static str,
    u16,
    &'static str,
    bool,
    i64,
);

fn shape_of(r: &UsageRecord) -> Shape<'_> {
    (
        &r.model,
        &r.chip,
        r.deployment.as_deref().unwrap_or_default(),
        &*r.endpoint,
        r.stream,
        r.status.as_str(),
        r.http_status,
        r.usage_source.as_str(),
        r.blocked,
        r.price_version_id,
    )
}

/// The shape id of each of `records`, in order: found in `usage_shapes`, or added to it
/// (in the writer's transaction, so a batch that fails adds none).
pub fn shape_ids(
    conn: &rusqlite::Connection,
    records: &[&UsageRecord],
) -> rusqlite::Result<Vec<i64>> {
    let mut find = conn.prepare_cached(
        "SELECT id FROM usage_shapes WHERE model = ?1 AND chip = ?2 AND deployment = ?3
         AND endpoint = ?4 AND stream = ?5 AND status = ?6 AND http_status = ?7
         AND usage_source = ?8 AND blocked = ?9 AND price_version_id = ?10",
    )?;
    let mut add = conn.prepare_cached(
        "INSERT INTO usage_shapes (model, chip, deployment, endpoint, stream, status,
                                   http_status, usage_source, blocked, price_version_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
    )?;
    let mut known: HashMap<Shape<'_>, i64> = HashMap::new();
    records
        .iter()
        .map(|record| {
            let shape = shape_of(record);
            if let Some(&id) = known.get(&shape) {
                return Ok(id);
            }
            let params = rusqlite::params![
                shape.0, shape.1, shape.2, shape.3, shape.4, shape.5, shape.6, shape.7, shape.8,
                shape.9
            ];
            let id = match find.query_row(params, |row| row.get(0)) {
                Err(rusqlite::Error::QueryReturnedNoRows) => {
                    add.query_row(params, |row| row.get(0))?
                }
                found => found?,
            };
            known.insert(shape, id);
            Ok(id)
        })
        .collect()
}

/// The columns of `usage_rows` a record fills, in the order `bind` binds them.
pub const COLUMNS: &[&str] = &[
    "request_key",
    "account_id",
    "key_id",
    "shape_id",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
    "started_at",
    "ended_after_ms",
    "latency_ms",
    "ttft_ms",
    "cache_write_tokens",
    "reasoning_tokens",
];

/// Binds `r`, stored as `key` (`RequestKey::of` its id) with shape `shape_id`, to the
/// `COLUMNS.len()` parameters after the first `offset`.
pub fn bind(
    insert: &mut rusqlite::CachedStatement,
    offset: usize,
    r: &UsageRecord,
    key: &RequestKey,
    shape_id: i64,
) -> rusqlite::Result<()> {
    let started_at = to_ms(r.started_at);
    // How long after its start it ended, unless that is its latency (mostly).
    let ended_after = Some(to_ms(r.ended_at) - started_at).filter(|&ms| ms != r.latency_ms);
    let values: [&dyn rusqlite::ToSql; 14] = [
        key,
        &r.account_id,
        &r.key_id,
        &shape_id,
        &(r.tokens.prompt as i64),
        &(r.tokens.completion as i64),
        &(r.tokens.cached as i64),
        &StoredCost(r.cost),
        &started_at,
        &ended_after,
        &r.latency_ms,
        &r.ttft_ms,
        &(r.tokens.cache_write as i64),
        &(r.tokens.reasoning as i64),
    ];
    for (i, value) in values.into_iter().enumerate() {
        insert.raw_bind_parameter(offset + i + 1, value)?;
    }
    Ok(())
}

/// Stores what `r` has beyond most records (units, error, moderation, backends passed
/// over, counts as reported) in `usage_details`, under the id of its row (just inserted);
/// nothing when it has none.
pub fn add_details(conn: &rusqlite::Connection, r: &UsageRecord) -> rusqlite::Result<()> {
    if r.units.is_zero()
        && r.error.is_none()
        && r.moderation.is_none()
        && r.attempts.is_empty()
        && r.reported.is_none()
    {
        return Ok(());
    }
    let mut add = conn.prepare_cached(
        "INSERT INTO usage_details (id, images, tasks, compute_ms, uploads, error, moderation,
                                    attempts, reported)
         SELECT id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 FROM usage_rows WHERE request_key = ?1",
    )?;
    let added = add.execute(rusqlite::params![
        RequestKey::of(&r.request_id),
        r.units.images as i64,
        r.units.tasks as i64,
        r.units.compute_ms as i64,
        r.units.uploads as i64,
        r.error,
        r.moderation,
        json_text(&r.attempts),
        json_text(&r.reported),
    ])?;
    if added != 1 {
        return Err(rusqlite::Error::StatementChangedRows(added));
    }
    Ok(())
}

/// A cost as `usage_rows.cost` holds it: its digits times 32 plus its scale, as an
/// integer, when the digits are not negative and fit; otherwise its exact decimal text.
/// The view turns either back into the decimal's text, scale and all.
struct StoredCost(rust_decimal::Decimal);

impl rusqlite::ToSql for StoredCost {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let digits = self.0.mantissa();
        Ok(match i64::try_from(digits) {
            Ok(digits) if (0..1 << 58).contains(&digits) => {
                ToSqlOutput::from(digits << 5 | i64::from(self.0.scale()))
            }
            _ => ToSqlOutput::from(self.0.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_ids_are_their_bytes() {
        let id = "req_0192f1a2b3c47d8e9fa0b1c2d3e4f506";
        let RequestKey::Uuid(bytes) = RequestKey::of(id) else {
            panic!("a gateway id is stored as bytes")
        };
        assert_eq!(
            bytes,
            [
                0x01, 0x92, 0xf1, 0xa2, 0xb3, 0xc4, 0x7d, 0x8e, 0x9f, 0xa0, 0xb1, 0xc2, 0xd3, 0xe4,
                0xf5, 0x06
            ]
        );
    }

    #[test]
    fn any_other_id_is_its_text() {
        for id in [
            "bench-0000000001",
            "req_0192F1A2B3C47D8E9FA0B1C2D3E4F506",
            "req_0192f1a2b3c47d8e9fa0b1c2d3e4f50",
            "req_0192f1a2b3c47d8e9fa0b1c2d3e4f5067",
            "req_0192f1a2b3c47d8e9fa0b1c2d3e4f5g6",
            "req_0192f1a2b3c47d8e9fa0b1c2d3e4f5é",
            "0192f1a2b3c47d8e9fa0b1c2d3e4f50600ab",
            "",
        ] {
            assert_eq!(RequestKey::of(id), RequestKey::Text(id), "{id}");
        }
    }
}
