//! Months of usage records, on the ledger under test: PostgreSQL keeps one partition per
//! UTC month (records of a month without one wait in the default partition and move when
//! it is made) and retires whole months by dropping them; SQLite deletes the same records
//! in batches. Either way every figure stays and the money adds up. A request id names one
//! request: an import refuses an id stored with another start.

use crate::helpers;

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use tollgate::domain::usage_export::{self, Format};
use tollgate::store::{self, Db};

const ZONE: chrono_tz::Tz = chrono_tz::Asia::Shanghai;

/// The partitions of `usage_records` (PostgreSQL), by name.
async fn partitions(db: &Db) -> Vec<String> {
    let Db::Postgres(pool) = db else {
        return Vec::new();
    };
    sqlx::query_scalar(
        "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'usage_records'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Records in the default partition (PostgreSQL).
async fn waiting(db: &Db) -> i64 {
    let Db::Postgres(pool) = db else { return 0 };
    sqlx::query_scalar("SELECT count(*) FROM usage_records_default")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn whole_months_retire_at_once_and_the_money_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    store::rollups::keep_days_in(&b.db, ZONE).await.unwrap();
    let beta = store::accounts::create(&b.db, "beta").await.unwrap();
    let beta_key = helpers::insert_key(&b.db, beta.id).await;
    store::accounts::top_up(&b.db, beta.id, helpers::dec("10"), "seed", "")
        .await
        .unwrap();
    let version = helpers::simple_price(&b.db).await;
    // August to November 2026, a record every 7 hours, two accounts.
    let first = Utc.with_ymd_and_hms(2026, 8, 1, 3, 0, 0).unwrap();
    let records: Vec<_> = (0..400)
        .map(|i| {
            let owner = match i % 3 {
                0 => (beta.id, beta_key),
                _ => (b.account.id, b.key_id),
            };
            let at = first + Duration::hours(7 * i as i64);
            let mut r = helpers::simple_record(format!("req_month_{i:03}"), owner, version.id, at);
            r.tokens.prompt = 100 + i as u64;
            r.cost =
                tollgate::billing::cost_of(&version, r.tokens, Default::default(), true).unwrap();
            r
        })
        .collect();
    assert!(
        records.last().unwrap().started_at < Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
    );
    let sink = store::Sink::open(&b.database).await.unwrap();
    sink.insert(&records.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let postgres = helpers::ledger::is_postgres();
    if postgres {
        // Their months had no partition: the records wait in the default one, counted.
        assert_eq!(waiting(&b.db).await, 400);
    }
    // The hourly upkeep makes the months and moves them; nothing is charged twice.
    let created = store::partitions::keep_ahead(&b.db, Utc::now())
        .await
        .unwrap();
    assert_eq!(waiting(&b.db).await, 0);
    if postgres {
        assert!(created >= 4, "{created}");
        let months = partitions(&b.db).await;
        for month in ["y2026m08", "y2026m09", "y2026m10", "y2026m11"] {
            assert!(
                months.contains(&format!("usage_records_{month}")),
                "{months:?}"
            );
        }
    }
    assert_eq!(helpers::ledger::request_ids(&b.db).await.len(), 400);
    let spent = |account: i64, before: Option<i64>| -> Decimal {
        records
            .iter()
            .filter(|r| r.account_id == account)
            .filter(|r| before.is_none_or(|t| r.started_at.timestamp_millis() < t))
            .map(|r| r.cost)
            .sum()
    };
    for account in [b.account.id, beta.id] {
        let funds = store::funds::of(&b.db, account).await.unwrap();
        assert_eq!(funds.spent, spent(account, None));
    }
    let beta_balance = store::funds::of(&b.db, beta.id)
        .await
        .unwrap()
        .balance()
        .unwrap();
    assert_eq!(beta_balance, helpers::dec("10") - spent(beta.id, None));

    // Retire what started before 15 October in Shanghai: August and September whole, the
    // first half of October record by record.
    let before = ZONE
        .with_ymd_and_hms(2026, 10, 15, 0, 0, 0)
        .unwrap()
        .with_timezone(&Utc);
    let cut = before.timestamp_millis();
    let old: Vec<&str> = records
        .iter()
        .filter(|r| r.started_at < before)
        .map(|r| r.request_id.as_str())
        .collect();
    let mut archive = Vec::new();
    let retired = tollgate::domain::retention::retire(&b.db, before, async |p| {
        usage_export::export(&b.db, p, Format::Jsonl, &mut archive).await
    })
    .await
    .unwrap();
    assert_eq!(
        (retired.archived, retired.deleted),
        (old.len() as u64, old.len() as u64)
    );
    if postgres {
        let months = partitions(&b.db).await;
        assert!(
            !months
                .iter()
                .any(|m| m.ends_with("y2026m08") || m.ends_with("y2026m09")),
            "{months:?}"
        );
        assert!(
            months.contains(&"usage_records_y2026m10".to_string()),
            "{months:?}"
        );
    }
    let kept = helpers::ledger::request_ids(&b.db).await;
    assert_eq!(kept.len(), 400 - old.len());
    assert!(kept.iter().all(|id| !old.contains(&id.as_str())));
    // The retired costs are kept per account; balances and running totals stay.
    for account in [b.account.id, beta.id] {
        let gone = store::retire::spent(&b.db, account).await.unwrap();
        assert_eq!(gone, spent(account, Some(cut)), "account {account}");
        let funds = store::funds::of(&b.db, account).await.unwrap();
        assert_eq!(funds.spent, spent(account, None));
    }
    assert_eq!(
        store::funds::of(&b.db, beta.id)
            .await
            .unwrap()
            .balance()
            .unwrap(),
        beta_balance
    );
    let verified = tollgate::domain::audit::verify(&b.db).await.unwrap();
    assert_eq!(verified.found(), 0, "{verified:?}");

    // The retired months take no record, whether or not they have a partition.
    let mut late = records[0].clone();
    late.request_id = "req_month_late".into();
    assert!(matches!(
        sink.insert(&[&late]).await,
        Err(store::InsertError::Refused(_))
    ));
    assert_eq!(
        store::retire::spent(&b.db, beta.id).await.unwrap(),
        spent(beta.id, Some(cut))
    );
}

#[tokio::test]
async fn an_import_refuses_a_request_id_stored_with_another_start() {
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    let version = helpers::simple_price(&b.db).await;
    let at = Utc.with_ymd_and_hms(2026, 9, 3, 4, 5, 6).unwrap();
    let record =
        helpers::simple_record("req_once".into(), (b.account.id, b.key_id), version.id, at);
    let sink = Arc::new(store::Sink::open(&b.database).await.unwrap());
    sink.insert(&[&record]).await.unwrap();
    let mut line = Vec::new();
    usage_export::export(&b.db, (i64::MIN, i64::MAX), Format::Jsonl, &mut line)
        .await
        .unwrap();
    // The same record again is a replay: nothing is added.
    let again = tollgate::domain::usage_import::import(&b.db, sink.clone(), ZONE, &line[..])
        .await
        .unwrap();
    assert_eq!(again.new_records, 0);
    // The same id an hour later is another record: refused, the ledger as it was.
    let later = String::from_utf8(line)
        .unwrap()
        .replace("2026-09-03T04:05:06", "2026-09-03T05:05:06");
    assert!(later.contains("05:05:06"), "{later}");
    let refused =
        tollgate::domain::usage_import::import(&b.db, sink.clone(), ZONE, later.as_bytes()).await;
    let message = format!("{:#}", refused.unwrap_err());
    assert!(
        message.contains("req_once") && message.contains("another start"),
        "{message}"
    );
    assert_eq!(helpers::ledger::request_ids(&b.db).await, ["req_once"]);
    let funds = store::funds::of(&b.db, b.account.id).await.unwrap();
    assert_eq!(funds.spent, record.cost);
    let verified = tollgate::domain::audit::verify(&b.db).await.unwrap();
    assert_eq!(verified.found(), 0, "{verified:?}");
}

/// A PostgreSQL ledger written before the months (migrations up to 0011) is moved into
/// them by the next start: every record in its month's partition, none charged twice,
/// ids going on from the last one, and a replay of an old record still adds nothing.
#[tokio::test]
async fn a_postgres_ledger_of_records_moves_into_months() {
    if !helpers::ledger::is_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = helpers::ledger::fresh(dir.path(), tollgate::config::Synchronous::Normal);
    let before_months = helpers::ledger::migrations_before(dir.path(), "0012");
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::migrate::Migrator::new(before_months.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let old = Db::Postgres(pool.clone());
    let account_id = helpers::ledger::old_account(&old, "acme").await;
    let key_id = helpers::insert_key(&old, account_id).await;
    let version = helpers::ledger::old_simple_price(&old).await;
    let first = Utc.with_ymd_and_hms(2026, 7, 20, 0, 0, 0).unwrap();
    sqlx::query(
        "INSERT INTO usage_records (request_id, account_id, key_id, model, chip, endpoint,
             stream, status, http_status, prompt_tokens, completion_tokens, cached_tokens,
             usage_source, price_version_id, cost, blocked, started_at, ended_at, latency_ms)
         SELECT 'req_old_' || g, $1, $2, 'm', 'c', 'chat', false, 'ok', 200, 10, 20, 0,
                'reported', $3, 0.00005, false, $4 + g * 25200000::BIGINT, $4 + g * 25200000::BIGINT, 1
         FROM generate_series(0, 299) g",
    )
    .bind(account_id)
    .bind(key_id)
    .bind(version)
    .bind(first.timestamp_millis())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let db = store::connect(&database).await.unwrap();
    assert_eq!(helpers::ledger::request_ids(&db).await.len(), 300);
    assert_eq!(waiting(&db).await, 0);
    let months = partitions(&db).await;
    for month in ["y2026m07", "y2026m08", "y2026m09", "y2026m10"] {
        assert!(
            months.contains(&format!("usage_records_{month}")),
            "{months:?}"
        );
    }
    let funds = store::funds::of(&db, account_id).await.unwrap();
    assert_eq!(
        funds.spent,
        helpers::dec("0.015"),
        "300 records at 0.00005, once"
    );
    let verified = tollgate::domain::audit::verify(&db).await.unwrap();
    assert_eq!(verified.found(), 0, "{verified:?}");

    // The writer goes on: a replayed old record adds nothing, a new one takes the next id.
    let sink = store::Sink::open(&database).await.unwrap();
    let mut replay =
        helpers::simple_record("req_old_7".into(), (account_id, key_id), version, first);
    replay.started_at = first + Duration::hours(49);
    replay.ended_at = replay.started_at;
    let new = helpers::simple_record(
        "req_new".into(),
        (account_id, key_id),
        version,
        first + Duration::days(40),
    );
    sink.insert(&[&replay, &new]).await.unwrap();
    let ids = helpers::ledger::request_ids(&db).await;
    assert_eq!(ids.len(), 301, "{:?}", &ids[ids.len() - 5..]);
    let stored = store::usage::by_request_id(&db, "req_new")
        .await
        .unwrap()
        .unwrap();
    // (A skipped replay may take an id of the sequence too.)
    assert!(stored.id > 300, "{}", stored.id);
    let funds = store::funds::of(&db, account_id).await.unwrap();
    assert_eq!(funds.spent, helpers::dec("0.01505"));
}

/// The hourly upkeep moves a month out of the default partition (detaching it a moment)
/// while the writer keeps inserting: every record is stored once, in its month, and
/// charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn making_a_month_while_records_arrive_loses_and_doubles_nothing() {
    if !helpers::ledger::is_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    let version = helpers::simple_price(&b.db).await;
    let owner = (b.account.id, b.key_id);
    let sink = std::sync::Arc::new(store::Sink::open(&b.database).await.unwrap());
    // A month that has no partition yet: its records wait in the default one.
    let july = Utc.with_ymd_and_hms(2026, 7, 3, 0, 0, 0).unwrap();
    let waiting_records: Vec<_> = (0..500)
        .map(|i| {
            let at = july + Duration::minutes(i);
            helpers::simple_record(format!("req_july_{i:03}"), owner, version.id, at)
        })
        .collect();
    sink.insert(&waiting_records.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(waiting(&b.db).await, 500);
    // Records of now keep arriving while the month is made.
    let writer = {
        let sink = sink.clone();
        tokio::spawn(async move {
            let mut written = 0;
            for batch in 0..80 {
                let records: Vec<_> = (0..50)
                    .map(|i| {
                        let id = format!("req_now_{batch:02}_{i:02}");
                        helpers::simple_record(id, owner, version.id, Utc::now())
                    })
                    .collect();
                sink.insert(&records.iter().collect::<Vec<_>>())
                    .await
                    .unwrap();
                written += records.len();
            }
            written
        })
    };
    let created = store::partitions::keep_ahead(&b.db, Utc::now())
        .await
        .unwrap();
    let written = writer.await.unwrap();
    assert!(created >= 1, "{created}");
    assert_eq!(waiting(&b.db).await, 0);
    assert!(
        partitions(&b.db)
            .await
            .contains(&"usage_records_y2026m07".to_string())
    );
    let total = 500 + written;
    assert_eq!(
        helpers::ledger::assert_recorded_once(&b.db, &[]).await,
        total,
        "every record once"
    );
    let funds = store::funds::of(&b.db, b.account.id).await.unwrap();
    assert_eq!(funds.spent, helpers::dec("0.00005") * Decimal::from(total));
    let verified = tollgate::domain::audit::verify(&b.db).await.unwrap();
    assert_eq!(verified.found(), 0, "{verified:?}");
}
