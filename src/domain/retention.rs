//! Retention: the records that started before a day are archived (by the caller's
//! `archive`, e.g. `tollgate usage export`'s JSON lines) and then retired from the ledger
//! (`store::retire`: in bounded batches, and on PostgreSQL whole months at once by
//! `store::partitions`), while the rollups, balances and invoices that sum
//! them stay. The day is recorded first, so no record of the period comes in between the
//! archive and the deletion.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::billing::period::day_start;
use crate::domain::usage_export::{self, Format};
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
        // PostgreSQL drops the months that ended before the day whole.
        deleted: store::partitions::drop_retired_months(db).await?,
    };
    loop {
        let deleted = store::retire::batch(db, BATCH).await?;
        retired.deleted += deleted;
        if deleted == 0 {
            return Ok(retired);
        }
    }
}

/// Retires, as `retention.keep_days` asks, the records that started before the day
/// `keep_days` whole days before `now`'s (in `zone`), archived first to a new
/// gzip-compressed JSON-lines file in `archive_dir` (written aside, synced, then renamed
/// `usage-before-DAY.jsonl.gz`). Nothing to do (no such record, and the day already
/// retired): `None`.
pub async fn keep_days(
    db: &Db,
    zone: Tz,
    keep_days: u32,
    archive_dir: &Path,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Retired>> {
    let today = now.with_timezone(&zone).date_naive();
    let first_kept = today - Duration::days(i64::from(keep_days));
    let before = day_start(first_kept, zone);
    let retired = store::retire::retired_before(db).await?;
    let older = store::usage::oldest_first(db, (i64::MIN, store::to_ms(before)), None, 1).await?;
    if older.is_empty() {
        if retired.is_some_and(|r| r >= store::to_ms(before)) {
            return Ok(None);
        }
        // Nothing to archive: the day is recorded, so that the period takes no record.
        store::retire::mark(db, store::to_ms(before)).await?;
        return Ok(Some(Retired::default()));
    }
    std::fs::create_dir_all(archive_dir)?;
    let name = format!("usage-before-{first_kept}.jsonl.gz");
    let partial = archive_dir.join(format!("{name}.partial"));
    let retired = retire(db, before, async |period| {
        let file = std::fs::File::create(&partial)?;
        let mut zipped = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(&file),
            flate2::Compression::default(),
        );
        let written = usage_export::export(db, period, Format::Jsonl, &mut zipped).await?;
        zipped.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        // A second retirement of the same day keeps the first archive beside it.
        let mut target = archive_dir.join(&name);
        if target.exists() {
            target = archive_dir.join(format!(
                "usage-before-{first_kept}-{}.jsonl.gz",
                now.timestamp_millis()
            ));
        }
        std::fs::rename(&partial, &target)?;
        Ok(written)
    })
    .await?;
    Ok(Some(retired))
}
