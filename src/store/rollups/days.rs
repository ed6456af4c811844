//! The daily rollups' time zone: the days of the billing zone, rebuilt once (under a lock)
//! when the zone changes, from the hourly rollups or, for zones whose days do not start on
//! a UTC hour, from the records.

use chrono_tz::Tz;
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::{HOUR_MS, SUMMED};
use crate::billing::period;
use crate::store::{Db, Result, on};

/// Makes the daily rollups sum the days of `zone`: if the ledger keeps them in another
/// zone (or none yet), writes `zone`'s days and sums them again, in one transaction that
/// holds off new records meanwhile: from the hourly rollups when every day of `zone` starts
/// on a UTC hour, else from the records. A ledger already in `zone` is left as it is.
pub async fn keep_days_in(db: &Db, zone: Tz) -> Result<()> {
    let kept: Option<String> = on!(db, |pool| {
        sqlx::query_scalar("SELECT zone FROM rollup_zone")
            .fetch_optional(pool)
            .await?
    });
    if kept.as_deref() == Some(zone.name()) {
        return Ok(());
    }
    let days = period::rollup_days(zone);
    let on_the_hour = days.iter().all(|d| d % HOUR_MS == 0);
    let sums: String = SUMMED
        .iter()
        .map(|c| match (*c, on_the_hour) {
            ("requests", false) => ", count(*)".to_string(),
            (c, _) => format!(", sum(r.{c})"),
        })
        .collect();
    let day_of = |time: &str| {
        format!("(SELECT start FROM rollup_days WHERE start <= {time} ORDER BY start DESC LIMIT 1)")
    };
    let rebuild = match on_the_hour {
        true => format!(
            "INSERT INTO usage_daily
             SELECT r.account_id, r.day, r.lineage_id, r.model, r.chip, r.deployment,
                    r.endpoint, r.status, r.price_version_id{sums}
             FROM (SELECT r.*, {day} AS day FROM usage_hourly r WHERE r.hour >= $1) r
             GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
            day = day_of("r.hour"),
        ),
        false => format!(
            "INSERT INTO usage_daily
             SELECT r.account_id, r.day, coalesce(k.lineage_id, k.id), r.model, r.chip,
                    coalesce(r.deployment, ''), r.endpoint, r.status, r.price_version_id{sums}
             FROM (SELECT r.*, {day} AS day FROM usage_records r WHERE r.started_at >= $1) r
             JOIN api_keys k ON k.id = r.key_id
             GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
            day = day_of("r.started_at"),
        ),
    };
    let started = std::time::Instant::now();
    let (begin, hold_off) = match db {
        Db::Sqlite(_) => ("BEGIN IMMEDIATE", None),
        Db::Postgres(_) => (
            "BEGIN",
            Some("LOCK TABLE rollup_zone, usage_records IN SHARE ROW EXCLUSIVE MODE"),
        ),
    };
    on!(db, |pool| {
        let mut conn = pool.acquire().await?;
        sqlx::query(begin).execute(&mut *conn).await?;
        let done = async {
            if let Some(lock) = hold_off {
                sqlx::query(lock).execute(&mut *conn).await?;
            }
            // Another process may have done it meanwhile (replicas starting together).
            let now: Option<String> = sqlx::query_scalar("SELECT zone FROM rollup_zone")
                .fetch_optional(&mut *conn)
                .await?;
            if now.as_deref() == Some(zone.name()) {
                return Ok(false);
            }
            for sql in [
                "DELETE FROM rollup_days",
                "DELETE FROM usage_daily",
                "DELETE FROM rollup_zone",
            ] {
                sqlx::query(sql).execute(&mut *conn).await?;
            }
            for chunk in days.chunks(1000) {
                let mut insert = QueryBuilder::new("INSERT INTO rollup_days (start) ");
                insert.push_values(chunk, |mut row, day| {
                    row.push_bind(*day);
                });
                insert.build().execute(&mut *conn).await?;
            }
            sqlx::query(AssertSqlSafe(rebuild.as_str()))
                .bind(days[0])
                .execute(&mut *conn)
                .await?;
            sqlx::query("INSERT INTO rollup_zone (id, zone) VALUES (1, $1)")
                .bind(zone.name())
                .execute(&mut *conn)
                .await?;
            Ok::<_, sqlx::Error>(true)
        }
        .await;
        let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end).execute(&mut *conn).await?;
        if !done? {
            return Ok(());
        }
    });
    tracing::info!(
        zone = zone.name(),
        took_ms = started.elapsed().as_millis() as u64,
        "daily usage rollups summed for the billing time zone"
    );
    Ok(())
}
