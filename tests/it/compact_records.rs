//! SQLite stores usage records compactly (`store::compact`, migration 0014): each shape
//! once, the gateway's request ids as 16 bytes. A ledger written before comes through
//! the migration with every record reading back exactly as it was, and the writer goes on
//! with it: a replay still adds nothing, every id is found again.

use crate::helpers;

use chrono::{Duration, TimeZone, Utc};
use tollgate::store::{self, Db, listing::UsageFilter};

const GATEWAY_ID: &str = "req_0192f1a2b3c47d8e9fa0b1c2d3e4f506";

/// The records of `db`, oldest first.
async fn all(db: &Db) -> Vec<store::usage::StoredRecord> {
    store::usage::oldest_first(db, (i64::MIN, i64::MAX), None, 1000)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sqlite_ledger_of_records_comes_through_compaction_unchanged() {
    if helpers::ledger::is_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = helpers::ledger::fresh(dir.path(), tollgate::config::Synchronous::Normal);
    let before = helpers::ledger::migrations_before(dir.path(), "0014");
    let options = format!("{}?mode=rwc", database.url);
    let pool = sqlx::SqlitePool::connect(&options).await.unwrap();
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let old = Db::Sqlite(pool.clone());
    // The schema of 0013 (accounts had no display name then): inserted as it was.
    let account_id: i64 = sqlx::query_scalar(
        "INSERT INTO accounts (name, created_at) VALUES ('acme', 0) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let key_id = helpers::insert_key(&old, account_id).await;
    let version = helpers::ledger::old_simple_price(&old).await;
    let at = Utc.with_ymd_and_hms(2026, 10, 20, 0, 0, 0).unwrap();
    // The gateway's own id, ids that only look like one (upper case, too short), an
    // imported id, an id that is all digits; with and without a deployment, streamed,
    // failed, flagged, with units.
    let rows = [
        (GATEWAY_ID, None, 1, "ok", 200, None, None, Some(120), 0),
        (
            "req_0192F1A2B3C47D8E9FA0B1C2D3E4F506",
            None,
            1,
            "ok",
            200,
            None,
            None,
            None,
            0,
        ),
        (
            "req_0192f1a2b3c47d8e9fa0b1c2d3e4f5",
            Some("mif-1"),
            0,
            "ok",
            200,
            None,
            None,
            None,
            2,
        ),
        (
            "other-7",
            None,
            1,
            "upstream_error",
            502,
            Some("bad gateway"),
            None,
            Some(9),
            0,
        ),
        (
            "12345",
            Some("mif-1"),
            0,
            "ok",
            200,
            None,
            Some("flagged"),
            None,
            0,
        ),
    ];
    for (i, (id, deployment, stream, status, http, error, moderation, ttft, images)) in
        rows.into_iter().enumerate()
    {
        let started = at.timestamp_millis() + i as i64 * 61_000;
        sqlx::query(
            "INSERT INTO usage_records (request_id, account_id, key_id, model, chip,
                 deployment, endpoint, stream, status, http_status, error, prompt_tokens,
                 completion_tokens, cached_tokens, usage_source, price_version_id, cost,
                 blocked, moderation, started_at, ended_at, latency_ms, ttft_ms, images)
             VALUES ($1, $2, $3, 'm', 'c', $4, 'chat', $5, $6, $7, $8, 10, 20, 4, 'reported',
                     $9, '0.0000500', $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(id)
        .bind(account_id)
        .bind(key_id)
        .bind(deployment)
        .bind(stream)
        .bind(status)
        .bind(http)
        .bind(error)
        .bind(version)
        .bind(moderation.is_some())
        .bind(moderation)
        .bind(started)
        .bind(started + 1_500 + i as i64)
        .bind(1_499)
        .bind(ttft)
        .bind(images)
        .execute(&pool)
        .await
        .unwrap();
    }
    // Their rollups, as the writer of then kept them (without the cache writes a later
    // migration adds).
    let hourly = helpers::ledger::HOURLY_FROM_RECORDS
        .replace(", sum(r.cache_write_tokens), sum(r.reasoning_tokens)", "");
    sqlx::query(sqlx::AssertSqlSafe(hourly))
        .execute(&pool)
        .await
        .unwrap();
    // Today's reader reads the columns later migrations add (0 or NULL for these
    // records); the compaction copies the columns it knows and drops the old table with
    // them.
    for column in [
        "cache_write_tokens INTEGER NOT NULL DEFAULT 0",
        "attempts TEXT",
        "reported TEXT",
        "reasoning_tokens INTEGER NOT NULL DEFAULT 0",
    ] {
        let add = format!("ALTER TABLE usage_records ADD COLUMN {column}");
        sqlx::query(sqlx::AssertSqlSafe(add))
            .execute(&pool)
            .await
            .unwrap();
    }
    // Connections opened before the change would read rows with the columns of before.
    pool.close().await;
    let pool = sqlx::SqlitePool::connect(&options).await.unwrap();
    let old = Db::Sqlite(pool.clone());
    let written = all(&old).await;
    assert_eq!(written.len(), 5);
    pool.close().await;

    let db = store::connect(&database).await.unwrap();
    let Db::Sqlite(sqlite) = &db else {
        unreachable!()
    };
    assert_eq!(all(&db).await, written, "every record reads back as it was");
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT typeof(request_key), shape_id FROM usage_rows ORDER BY id")
            .fetch_all(sqlite)
            .await
            .unwrap();
    let kinds: Vec<&str> = stored.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["blob", "text", "text", "text", "text"]);
    let shapes: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_shapes")
        .fetch_one(sqlite)
        .await
        .unwrap();
    assert_eq!(shapes, 4, "the first two records have one shape");
    for record in &written {
        let found = store::usage::by_request_id(&db, &record.request_id)
            .await
            .unwrap();
        assert_eq!(found.as_ref(), Some(record));
    }
    assert_eq!(
        store::usage::by_request_id(&db, "req_0192f1a2b3c47d8e9fa0b1c2d3e4f507")
            .await
            .unwrap(),
        None
    );
    // Filters on the shape's columns and on none.
    let flagged = store::listing::list(
        &db,
        &UsageFilter {
            deployment: Some("mif-1".into()),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    let ids: Vec<&str> = flagged.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, ["12345", "req_0192f1a2b3c47d8e9fa0b1c2d3e4f5"]);
    let immutable = sqlx::query("UPDATE usage_rows SET cost = '0'")
        .execute(sqlite)
        .await;
    assert!(immutable.is_err(), "records stay immutable");

    // The writer goes on: replays of both kinds of id add nothing, a new record is
    // stored compactly and read back as written.
    let funds = store::funds::of(&db, account_id).await.unwrap();
    let sink = store::Sink::open(&database).await.unwrap();
    let record = |id: &str, started| {
        helpers::simple_record(id.into(), (account_id, key_id), version, started)
    };
    let replays = [
        record(GATEWAY_ID, store::from_ms(written[0].started_at)),
        record("12345", store::from_ms(written[4].started_at)),
    ];
    let new_id = "req_0192f1a2b3c47d8e9fa0b1c2d3e4f5ff";
    let new = record(new_id, at + Duration::hours(2));
    sink.insert(&[&replays[0], &replays[1], &new])
        .await
        .unwrap();
    assert_eq!(
        store::funds::of(&db, account_id).await.unwrap().spent,
        funds.spent + new.cost,
        "only the new record is charged"
    );
    let stored = store::usage::by_request_id(&db, new_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.request_id, new_id);
    assert_eq!(stored.started_at, store::to_ms(new.started_at));
    assert_eq!(stored.ended_at, store::to_ms(new.ended_at));
    assert_eq!(stored.cost, new.cost);
    assert_eq!(all(&db).await.len(), 6);
    // A replay that started at another time is no replay: the batch is refused.
    let other = record(GATEWAY_ID, at + Duration::hours(3));
    assert!(sink.insert(&[&other]).await.is_err());
}

/// Costs stored as digits and scale come back through the view as the same decimal,
/// scale and all; those that do not fit are stored as text and come back too. Units,
/// errors and moderation verdicts (kept apart) and ends (kept as nothing when they are
/// the latency) come back with their records.
#[tokio::test]
async fn every_cost_and_detail_reads_back_as_written() {
    use rand::{Rng, SeedableRng};
    use rust_decimal::Decimal;
    if helpers::ledger::is_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    let version = helpers::simple_price(&b.db).await;
    let sink = store::Sink::open(&b.database).await.unwrap();
    let at = Utc.with_ymd_and_hms(2026, 10, 20, 0, 0, 0).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(14);
    let mut costs = vec![
        Decimal::ZERO,
        Decimal::new(0, 7),
        Decimal::new(50712, 7),
        Decimal::new(125, 1),
        Decimal::new(7, 0),
        Decimal::new(1, 28),
        Decimal::new((1 << 58) - 1, 9),
        Decimal::new(1 << 58, 9),
        Decimal::new(i64::MAX, 0),
        Decimal::new(-5, 3),
    ];
    for _ in 0..200 {
        let shift = rng.random_range(0..63);
        let digits = rng.random_range(0..i64::MAX >> shift);
        costs.push(Decimal::new(digits, rng.random_range(0..=28)));
    }
    let records: Vec<_> = costs
        .iter()
        .enumerate()
        .map(|(i, &cost)| {
            let mut r = helpers::simple_record(
                format!("req_{:032x}", i),
                (b.account.id, b.key_id),
                version.id,
                at + Duration::milliseconds(i as i64),
            );
            r.cost = cost;
            // Ends stored as nothing (at its latency) and as an offset.
            r.latency_ms = 250;
            r.ended_at = r.started_at + Duration::milliseconds(250 + (i % 2) as i64);
            if i % 3 == 0 {
                r.units.images = i as u64;
                r.error = Some(format!("error {i}"));
            }
            if i % 5 == 0 {
                r.moderation = Some("flagged".into());
            }
            r
        })
        .collect();
    sink.insert(&records.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let stored = all(&b.db).await;
    assert_eq!(stored.len(), records.len());
    for (record, stored) in records.iter().zip(&stored) {
        assert_eq!(stored.request_id, record.request_id);
        assert_eq!(stored.cost.to_string(), record.cost.to_string());
        assert_eq!(stored.images, record.units.images as i64);
        assert_eq!(stored.ended_at, store::to_ms(record.ended_at));
        assert_eq!(stored.latency_ms, record.latency_ms);
        assert_eq!(stored.error, record.error);
        assert_eq!(stored.moderation, record.moderation);
    }
    let Db::Sqlite(sqlite) = &b.db else {
        unreachable!()
    };
    let details: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_details")
        .fetch_one(sqlite)
        .await
        .unwrap();
    let with_details = records
        .iter()
        .filter(|r| r.error.is_some() || r.moderation.is_some())
        .count();
    assert_eq!(
        details as usize, with_details,
        "only records with details have a row"
    );
    let verified = tollgate::domain::audit::verify(&b.db).await.unwrap();
    assert_eq!(verified.found(), 0, "{verified:?}");
}
