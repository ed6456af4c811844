//! The ledger writer on its own: concurrent commits share batches and each record is
//! written exactly once; a record the database refuses fails alone; shutdown commits what
//! was queued and refuses the rest.

mod helpers;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use tollgate::billing::{PriceEntry, TokenCounts};
use tollgate::metering::record::{Status, UsageRecord, UsageSource};
use tollgate::metering::{Ledger, LedgerError, LedgerWriter};
use tollgate::metrics::Metrics;
use tollgate::store::{self, Db};

struct Fixture {
    _dir: tempfile::TempDir,
    db: Db,
    ledger: Ledger,
    writer: LedgerWriter,
    metrics: Arc<Metrics>,
    /// A record with valid references; tests change its request id.
    template: UsageRecord,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let helpers::BareLedger {
        database,
        db,
        account,
        key_id,
    } = helpers::bare_ledger(&dir).await;
    let price = PriceEntry {
        model: "m".into(),
        chip: "c".into(),
        effective_from: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        input_per_1k: Decimal::new(1, 3),
        cached_input_per_1k: None,
        output_per_1k: Decimal::new(2, 3),
        per_request: Decimal::ZERO,
    };
    store::prices::sync(&db, &[price]).await.unwrap();
    let version = store::prices::all(&db).await.unwrap().remove(0);
    let metrics = Arc::new(Metrics::new());
    let (ledger, writer) = Ledger::spawn(&database, 64, 1024, metrics.clone()).unwrap();
    let now = Utc::now();
    let template = UsageRecord {
        request_id: String::new(),
        account_id: account.id,
        key_id,
        model: "m".into(),
        chip: "c".into(),
        deployment: None,
        endpoint: "chat",
        stream: false,
        status: Status::Ok,
        http_status: 200,
        error: None,
        tokens: TokenCounts {
            prompt: 10,
            completion: 20,
            cached: 0,
        },
        usage_source: UsageSource::Reported,
        price_version_id: version.id,
        cost: Decimal::new(5, 5),
        blocked: false,
        moderation: None,
        started_at: now,
        ended_at: now,
        latency_ms: 1,
        ttft_ms: None,
    };
    Fixture {
        _dir: dir,
        db,
        ledger,
        writer,
        metrics,
        template,
    }
}

fn record(template: &UsageRecord, request_id: String) -> UsageRecord {
    UsageRecord {
        request_id,
        ..template.clone()
    }
}

async fn stored_ids(db: &Db) -> Vec<String> {
    let mut ids: Vec<String> = sqlx::query_scalar("SELECT request_id FROM usage_records")
        .fetch_all(db)
        .await
        .unwrap();
    ids.sort();
    ids
}

/// Commits every record at once, each from its own task, and returns the outcomes in order.
async fn commit_all(ledger: &Ledger, records: Vec<UsageRecord>) -> Vec<Result<(), LedgerError>> {
    let tasks: Vec<_> = records
        .into_iter()
        .map(|r| {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.commit(r).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_batches_and_each_record_is_written_once() {
    let f = fixture().await;
    let mut expected: Vec<String> = (0..300).map(|n| format!("req_{n:03}")).collect();
    let records = expected.iter().map(|id| record(&f.template, id.clone()));
    let outcomes = commit_all(&f.ledger, records.collect()).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    // The same request id again (a retried batch, say) is accepted and not written twice.
    let again = record(&f.template, "req_000".into());
    f.ledger.commit(again).await.unwrap();

    expected.sort();
    assert_eq!(stored_ids(&f.db).await, expected);
    let batches = f.metrics.ledger_batch_size.get_sample_count();
    assert_eq!(f.metrics.ledger_batch_size.get_sample_sum(), 301.0);
    assert!(
        batches < 300,
        "300 concurrent commits took {batches} batches"
    );
    f.writer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_refuses_fails_alone() {
    let f = fixture().await;
    let mut records: Vec<UsageRecord> = (0..20)
        .map(|n| record(&f.template, format!("req_{n:02}")))
        .collect();
    // No such key: the foreign key refuses it, whichever batch it lands in.
    records[7].key_id = 9_999;
    let outcomes = commit_all(&f.ledger, records).await;
    for (n, outcome) in outcomes.iter().enumerate() {
        match n {
            7 => assert!(matches!(outcome, Err(LedgerError::Write(_))), "{outcome:?}"),
            _ => assert!(outcome.is_ok(), "record {n}: {outcome:?}"),
        }
    }
    let ids = stored_ids(&f.db).await;
    assert_eq!(ids.len(), 19);
    assert!(!ids.contains(&"req_07".to_string()));
    f.writer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_what_was_queued_and_refuses_the_rest() {
    let f = fixture().await;
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let ledger = f.ledger.clone();
            let r = record(&f.template, format!("req_{n:03}"));
            tokio::spawn(async move { (r.request_id.clone(), ledger.commit(r).await) })
        })
        .collect();
    f.writer.shutdown().await.unwrap();
    let mut committed = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (id, Ok(())) => committed.push(id),
            (_, Err(e)) => assert!(matches!(e, LedgerError::Stopped), "{e:?}"),
        }
    }
    committed.sort();
    // Every record acknowledged is stored, and nothing that was refused.
    assert_eq!(stored_ids(&f.db).await, committed);
    let late = record(&f.template, "late".into());
    assert!(matches!(
        f.ledger.commit(late).await,
        Err(LedgerError::Stopped)
    ));
    assert!(!f.ledger.is_running());
}
