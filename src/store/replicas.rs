//! Which replicas share the ledger: heartbeats in PostgreSQL (`replicas`). A SQLite ledger
//! has one gateway.

use std::sync::atomic::{AtomicU32, Ordering};

use chrono::Utc;

use super::{Db, Result, to_ms};

/// How often a replica writes its heartbeat (the maintenance loop's).
pub const BEAT_EVERY_MS: i64 = 5_000;

/// A replica not heard from for this long is gone.
pub const ALIVE_MS: i64 = 3 * BEAT_EVERY_MS;

/// A new gateway's name among the replicas: host, process id, and its number in the
/// process (tests run several in one).
pub fn new_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}/{}/{n}", host.trim(), std::process::id())
}

/// Records that `name` is alive, forgets replicas long gone, and returns how many are
/// alive now (this one included).
pub async fn beat(db: &Db, name: &str) -> Result<u32> {
    let Db::Postgres(pool) = db else {
        return Ok(1);
    };
    let now = to_ms(Utc::now());
    sqlx::query(
        "INSERT INTO replicas (name, seen_at) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET seen_at = EXCLUDED.seen_at",
    )
    .bind(name)
    .bind(now)
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM replicas WHERE seen_at < $1")
        .bind(now - 100 * ALIVE_MS)
        .execute(pool)
        .await?;
    let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM replicas WHERE seen_at >= $1")
        .bind(now - ALIVE_MS)
        .fetch_one(pool)
        .await?;
    Ok(u32::try_from(alive).unwrap_or(u32::MAX).max(1))
}

/// Says goodbye at shutdown, so the others count without it at once.
pub async fn leave(db: &Db, name: &str) -> Result<()> {
    if let Db::Postgres(pool) = db {
        sqlx::query("DELETE FROM replicas WHERE name = $1")
            .bind(name)
            .execute(pool)
            .await?;
    }
    Ok(())
}
