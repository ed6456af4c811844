//! Retention: the records that started before a day are archived (by the caller's
//! `archive`, e.g. `tollgate usage export`'s JSON lines) and then retired from the ledger
//! in bounded batches (`store::retire`), while the rollups, balances and invoices that sum
//! them stay. The day is recorded first, so no record of the period comes in between the
//! archive and the deletion.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::{self, Db};

/// Records deleted per transaction.
const BATCH: i64 = 10_000;

/// What a retirement did.
#[derive(Debug, Default, Serialize)]
pub struct Retired {
    /// Records written to the archive.
    pub archived: u64,
    /// Records deleted from the ledger.
    pub deleted: u64,
}

/// Retires the records of `db` that started before `before`: `archive` is given the
/// period to write (every record before `before` still in the ledger) and must have
/// written it durably before it returns; only then are they deleted.
pub async fn retire(
    db: &Db,
    before: DateTime<Utc>,
    archive: impl AsyncFnOnce((i64, i64)) -> anyhow::Result<u64>,
) -> anyhow::Result<Retired> {
    store::retire::mark(db, store::to_ms(before)).await?;
    // An earlier retirement may have gone further (and stopped before its end).
    let before = store::retire::retired_before(db)
        .await?
        .unwrap_or(store::to_ms(before));
    let mut retired = Retired {
        archived: archive((i64::MIN, before)).await?,
        ..Retired::default()
    };
    loop {
        let deleted = store::retire::batch(db, BATCH).await?;
        retired.deleted += deleted;
        if deleted == 0 {
            return Ok(retired);
        }
    }
}
