//! The ledger on its own: concurrent commits share an `fdatasync` (with `full`) and each
//! record is written exactly once, while imports swap the journals under them; a record
//! the database refuses is set aside without holding up the others; shutdown imports what
//! was committed and refuses the rest; records left in either journal file are imported
//! by the next process, once, and a reused journal ends where its cycle does.

use crate::helpers;

use std::sync::Arc;

use chrono::Utc;
use rust_decimal::Decimal;
use tollgate::billing::record::UsageRecord;
use tollgate::config::{DatabaseConfig, LedgerConfig};
use tollgate::metering::{Ledger, LedgerError, LedgerWriter};
use tollgate::metrics::Metrics;
use tollgate::store::journal::{self, Journal, Line};
use tollgate::store::{self, Db};

struct Fixture {
    _dir: tempfile::TempDir,
    database: DatabaseConfig,
    db: Db,
    ledger: Ledger,
    writer: LedgerWriter,
    metrics: Arc<Metrics>,
    /// A record with valid references; tests change its request id.
    template: UsageRecord,
}

async fn fixture() -> Fixture {
    fixture_with("normal").await
}

/// A ledger with `synchronous` set as given.
async fn fixture_with(synchronous: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let helpers::BareLedger {
        mut database,
        db,
        account,
        key_id,
    } = helpers::bare_ledger(&dir).await;
    database.synchronous = match synchronous {
        "normal" => tollgate::config::Synchronous::Normal,
        _ => tollgate::config::Synchronous::Full,
    };
    let version = helpers::simple_price(&db).await;
    let metrics = Arc::new(Metrics::new());
    let config = LedgerConfig {
        // Small, so that the tests below import many times while commits go on.
        import_max: 64,
        ..LedgerConfig::default()
    };
    let (ledger, writer) = Ledger::spawn(&database, &config, metrics.clone())
        .await
        .unwrap();
    let template =
        helpers::simple_record(String::new(), (account.id, key_id), version.id, Utc::now());
    Fixture {
        _dir: dir,
        database,
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

fn append(journal: &mut Journal, record: &UsageRecord) {
    journal.append(&mut Line::encode(record).unwrap()).unwrap();
}

async fn stored_ids(db: &Db) -> Vec<String> {
    helpers::ledger::request_ids(db).await
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
async fn concurrent_commits_share_an_fdatasync_and_each_record_is_written_once() {
    let f = fixture_with("full").await;
    let mut expected: Vec<String> = (0..300).map(|n| format!("req_{n:03}")).collect();
    let records = expected.iter().map(|id| record(&f.template, id.clone()));
    let outcomes = commit_all(&f.ledger, records.collect()).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    // The same request id again (a retried commit, say) is accepted and not written twice.
    let again = record(&f.template, "req_000".into());
    f.ledger.commit(again).await.unwrap();
    f.ledger.flush().await.unwrap();

    expected.sort();
    assert_eq!(stored_ids(&f.db).await, expected);
    // Every record was covered by an fdatasync, and they were shared.
    let syncs = f.metrics.ledger_batch_size.get_sample_count();
    assert_eq!(f.metrics.ledger_batch_size.get_sample_sum(), 301.0);
    assert!(
        syncs < 300,
        "300 concurrent commits took {syncs} fdatasyncs"
    );
    f.writer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_go_on_while_imports_swap_the_journals() {
    for synchronous in ["normal", "full"] {
        let f = fixture_with(synchronous).await;
        // Eight clients commit one record after another while a reader keeps asking for
        // everything so far to be imported, and `import_max` (64) starts imports as well.
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let ledger = f.ledger.clone();
                let template = f.template.clone();
                tokio::spawn(async move {
                    for n in 0..250 {
                        let r = record(&template, format!("req_{client}_{n:03}"));
                        ledger.commit(r).await.unwrap();
                        // Spread over some 50 ms, so that imports happen while commits go
                        // on even when other tests keep the writer thread waiting for a core.
                        if n % 10 == 9 {
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        }
                    }
                })
            })
            .collect();
        let reader = {
            let ledger = f.ledger.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    ledger.flush().await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            })
        };
        for client in clients {
            client.await.unwrap();
        }
        reader.await.unwrap();
        f.ledger.flush().await.unwrap();

        let mut expected: Vec<String> = (0..8)
            .flat_map(|c| (0..250).map(move |n| format!("req_{c}_{n:03}")))
            .collect();
        expected.sort();
        assert_eq!(stored_ids(&f.db).await, expected, "{synchronous}");
        let imports = f.metrics.ledger_import_size.get_sample_count();
        assert_eq!(f.metrics.ledger_import_size.get_sample_sum(), 2000.0);
        assert!(imports > 2, "{synchronous}: {imports} imports");
        let sqlite = store::journal_base(&f.database).unwrap();
        assert!(journal::is_empty(&sqlite).unwrap());
        f.writer.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_refuses_is_set_aside_and_the_others_are_imported() {
    let f = fixture().await;
    // Enough for multi-row statements (16 rows) and single rows in one import.
    let mut records: Vec<UsageRecord> = (0..40)
        .map(|n| record(&f.template, format!("req_{n:02}")))
        .collect();
    // No such key: the foreign key refuses them, whichever statement they land in.
    records[7].key_id = 9_999;
    records[37].key_id = 9_999;
    let outcomes = commit_all(&f.ledger, records.clone()).await;
    // Every record is committed (journaled); the refusal comes at the import.
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    f.ledger.flush().await.unwrap();
    let ids = stored_ids(&f.db).await;
    assert_eq!(ids.len(), 38);
    assert!(!ids.contains(&"req_07".to_string()) && !ids.contains(&"req_37".to_string()));
    // The refused records are kept whole, beside the journal, and nowhere else.
    let sqlite = store::journal_base(&f.database).unwrap();
    let text = std::fs::read_to_string(journal::refused_path(&sqlite)).unwrap();
    let mut kept: Vec<UsageRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    kept.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    assert_eq!(kept, vec![records[7].clone(), records[37].clone()]);
    assert!(journal::is_empty(&sqlite).unwrap());
    // Imports go on after it.
    f.ledger
        .commit(record(&f.template, "req_40".into()))
        .await
        .unwrap();
    f.ledger.flush().await.unwrap();
    assert_eq!(stored_ids(&f.db).await.len(), 39);
    f.writer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_what_was_queued_and_refuses_the_rest() {
    let f = fixture().await;
    // Acknowledged before the shutdown began: these must be stored.
    let mut acknowledged = Vec::new();
    for n in 0..50 {
        let r = record(&f.template, format!("req_a{n:02}"));
        f.ledger.commit(r).await.unwrap();
        acknowledged.push(format!("req_a{n:02}"));
    }
    // Racing the shutdown: each is stored if and only if it was acknowledged.
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let ledger = f.ledger.clone();
            let r = record(&f.template, format!("req_{n:03}"));
            tokio::spawn(async move { (r.request_id.clone(), ledger.commit(r).await) })
        })
        .collect();
    f.writer.shutdown().await.unwrap();
    let mut committed = acknowledged.clone();
    for task in tasks {
        match task.await.unwrap() {
            (id, Ok(())) => committed.push(id),
            (_, Err(e)) => assert!(matches!(e, LedgerError::Stopped), "{e:?}"),
        }
    }
    committed.sort();
    // Every record acknowledged is stored, and nothing that was refused.
    let stored = stored_ids(&f.db).await;
    assert_eq!(stored, committed);
    assert!(acknowledged.iter().all(|id| stored.contains(id)));
    let late = record(&f.template, "late".into());
    assert!(matches!(
        f.ledger.commit(late).await,
        Err(LedgerError::Stopped)
    ));
    assert!(!f.ledger.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_left_in_the_journal_are_imported_once_at_the_next_start() {
    let f = fixture().await;
    // One record is in SQLite already, as after a crash between an import and emptying
    // the journal.
    f.ledger
        .commit(record(&f.template, "req_a".into()))
        .await
        .unwrap();
    f.writer.shutdown().await.unwrap();
    let sqlite = store::journal_base(&f.database).unwrap();
    // A crash left records in both files: the one being imported and the active one.
    let [mut first, mut second] = journal::open(&f.database).unwrap();
    for id in ["req_a", "req_b"] {
        append(&mut first, &record(&f.template, id.into()));
    }
    append(&mut second, &record(&f.template, "req_c".into()));
    let end = second.len();
    drop((first, second));
    // And a line a crash cut short, right after the cycle's: never acknowledged, so
    // dropped.
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&journal::paths(&sqlite)[1])
        .unwrap();
    // Its cycle is the journal's (the first line's), its record half written.
    let mut torn = vec![0; "0123456789abcdef ".len()];
    file.read_exact_at(&mut torn, 0).unwrap();
    torn.extend(serde_json::to_vec(&record(&f.template, "req_torn".into())).unwrap());
    torn.truncate(torn.len() / 2);
    file.write_all_at(&torn, end).unwrap();

    let metrics = Arc::new(Metrics::new());
    let (ledger, writer) = Ledger::spawn(&f.database, &LedgerConfig::default(), metrics)
        .await
        .unwrap();
    assert_eq!(stored_ids(&f.db).await, ["req_a", "req_b", "req_c"]);
    assert!(journal::is_empty(&sqlite).unwrap());
    // The journal is this writer's: a second one on the same ledger is refused.
    let second = Ledger::spawn(
        &f.database,
        &LedgerConfig::default(),
        Arc::new(Metrics::new()),
    )
    .await;
    let error = second
        .err()
        .expect("a second writer is refused")
        .to_string();
    assert!(error.contains("another tollgate"), "{error}");
    drop(ledger);
    writer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_ledger_imports_a_journal_only_when_no_gateway_holds_it() {
    let f = fixture().await;
    f.writer.shutdown().await.unwrap();
    let mut journals = journal::open(&f.database).unwrap();
    append(&mut journals[1], &record(&f.template, "req_x".into()));
    // A gateway holds it: another process (the CLI) leaves it to the gateway.
    store::connect(&f.database).await.unwrap();
    assert!(stored_ids(&f.db).await.is_empty());
    drop(journals);
    // The gateway is gone: the next process to open the ledger imports the record.
    store::connect(&f.database).await.unwrap();
    assert_eq!(stored_ids(&f.db).await, ["req_x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_reused_and_ends_where_its_cycle_does() {
    let f = fixture().await;
    f.writer.shutdown().await.unwrap();
    let sqlite = store::journal_base(&f.database).unwrap();
    let path = journal::paths(&sqlite)[0].clone();
    let [mut journal, second] = journal::open(&f.database).unwrap();
    // A cycle of two long records, imported (by hand here) and cleared...
    let mut long = record(&f.template, "req_old_1".into());
    long.error = Some("x".repeat(500));
    let old = [
        long.clone(),
        UsageRecord {
            request_id: "req_old_2".into(),
            ..long
        },
    ];
    for r in &old {
        append(&mut journal, r);
    }
    let used = std::fs::metadata(&path).unwrap().len();
    journal.clear().unwrap();
    assert!(journal::is_empty(&sqlite).unwrap());
    // ...then a short one, written over the start of the file, which keeps its size.
    append(&mut journal, &record(&f.template, "req_new".into()));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), used);
    // An append cut short by a crash between its two copies: the line is there but for
    // its cycle, which is copied last (`journal::mapped`).
    let mut torn = serde_json::to_vec(&record(&f.template, "req_torn".into())).unwrap();
    torn.push(b'\n');
    let cycle = "0123456789abcdef ".len() as u64;
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
        &torn,
        journal.len() + cycle,
    )
    .unwrap();
    drop((journal, second));
    // Only the new cycle is the journal: the old lines after it, and the torn one, are
    // not read.
    let (_ledger, writer) = Ledger::spawn(
        &f.database,
        &LedgerConfig::default(),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    assert_eq!(stored_ids(&f.db).await, ["req_new"]);
    writer.shutdown().await.unwrap();
}

/// Takes SQLite's write lock from another connection, as another process would, until
/// the returned sender is dropped or sent to.
fn lock_database(database: &DatabaseConfig) -> std::sync::mpsc::Sender<()> {
    let path = store::sqlite::path(database).unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked.send(()).unwrap();
        let _ = released.recv();
        conn.execute_batch("ROLLBACK").unwrap();
    });
    is_locked.recv().unwrap();
    release
}

/// Waits (without asking the writer to import) until the ledger holds `n` records.
async fn until_stored(db: &Db, n: usize, within: std::time::Duration) -> Vec<String> {
    let started = std::time::Instant::now();
    loop {
        let ids = stored_ids(db).await;
        if ids.len() >= n || started.elapsed() > within {
            return ids;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_import_every_record_ships_without_a_reader_asking() {
    if helpers::ledger::is_postgres() {
        // Another process's SQLite write lock; PostgreSQL's outage is `ledger_outage`'s.
        println!("SQLite only: run in the SQLite pass");
        return;
    }
    let f = fixture().await;
    let lock = lock_database(&f.database);
    // The first record's import fails on the lock; others come while it is retried.
    f.ledger
        .commit(record(&f.template, "req_00".into()))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while f.metrics.ledger_import_failures.get() == 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for n in 1..10 {
        let r = record(&f.template, format!("req_{n:02}"));
        f.ledger.commit(r).await.unwrap();
    }
    assert_eq!(f.ledger.queue_depth(), 10);
    assert!(f.ledger.spool_age() > std::time::Duration::ZERO);
    drop(lock);
    // Nobody reads usage: the writer ships them all by itself.
    let ids = until_stored(&f.db, 10, std::time::Duration::from_secs(15)).await;
    assert_eq!(
        ids.len(),
        10,
        "shipping stalled after a failed import: {ids:?}"
    );
    let started = std::time::Instant::now();
    while f.ledger.queue_depth() > 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(f.ledger.spool_age(), std::time::Duration::ZERO);
    f.writer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_do_not_wait_for_an_import_blocked_by_another_process() {
    if helpers::ledger::is_postgres() {
        // Another process's SQLite write lock; PostgreSQL's outage is `ledger_outage`'s.
        println!("SQLite only: run in the SQLite pass");
        return;
    }
    let f = fixture_with("full").await;
    let lock = lock_database(&f.database);
    // For some 5 s each import waits on the lock for the writer's busy timeout (2 s);
    // commits (each waiting for an fdatasync of the journal) go on meanwhile.
    let mut slowest = std::time::Duration::ZERO;
    for n in 0..50 {
        let started = std::time::Instant::now();
        let r = record(&f.template, format!("req_{n:02}"));
        f.ledger.commit(r).await.unwrap();
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(lock);
    assert!(f.metrics.ledger_import_failures.get() > 0);
    assert!(
        slowest < std::time::Duration::from_secs(1),
        "a commit waited {slowest:?} behind an import"
    );
    assert_eq!(
        until_stored(&f.db, 50, std::time::Duration::from_secs(15))
            .await
            .len(),
        50
    );
    f.writer.shutdown().await.unwrap();
}

/// The account's running totals and the sums they stand for.
async fn totals_and_sums(db: &Db, account: i64) -> (store::funds::Funds, store::funds::Funds) {
    let funds = store::funds::of(db, account).await.unwrap();
    let filter = store::listing::UsageFilter {
        account_id: Some(account),
        ..Default::default()
    };
    let records = store::listing::list(db, &filter, 1_000_000).await.unwrap();
    let sums = store::funds::Funds {
        topped_up: store::accounts::topped_up(db, account).await.unwrap(),
        spent: records.iter().map(|r| r.cost).sum(),
        ..funds
    };
    (funds, sums)
}

/// A promotional grant of an amount, or of tokens of a model, in force from an hour
/// before `at`.
async fn promotional_grant(
    db: &Db,
    account: i64,
    (amount, tokens, model): (Option<Decimal>, Option<u64>, Option<&str>),
    at: chrono::DateTime<Utc>,
) -> store::grants::Grant {
    let key = format!("{amount:?}-{tokens:?}");
    let asked = tollgate::domain::grants::GrantRequest {
        amount,
        tokens,
        model,
        kind: "promotional",
        priority: None,
        effective_at: Some(at - chrono::Duration::hours(1)),
        expires_at: None,
        reason: "test",
        actor: "test",
        idempotency_key: &key,
    };
    let (grant, _) = tollgate::domain::grants::issue(db, None, account, &asked)
        .await
        .unwrap();
    grant
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_totals_move_with_imports_and_top_ups_and_replays_add_nothing() {
    let f = fixture().await;
    let account = f.template.account_id;
    let mut cost = Decimal::ZERO;
    for n in 0..200 {
        let mut r = record(&f.template, format!("req_{n:03}"));
        r.cost = Decimal::new(n + 1, 7); // 0.0000001 .. 0.00002: exact, never floats
        cost += r.cost;
        f.ledger.commit(r).await.unwrap();
    }
    for key in ["t-1", "t-1", "t-2"] {
        store::accounts::top_up(&f.db, account, Decimal::new(125, 2), key, "")
            .await
            .unwrap();
    }
    // Replays of records already imported (a retried batch, a journal imported again).
    f.ledger.flush().await.unwrap();
    for n in [0, 7, 199] {
        f.ledger
            .commit(record(&f.template, format!("req_{n:03}")))
            .await
            .unwrap();
    }
    f.ledger.flush().await.unwrap();
    let (funds, sums) = totals_and_sums(&f.db, account).await;
    assert_eq!(funds, sums);
    assert_eq!((funds.topped_up, funds.spent), (Decimal::new(250, 2), cost));
    assert_eq!(
        tollgate::limits::spending::balance(&f.db, account)
            .await
            .unwrap(),
        (Decimal::new(250, 2) - cost).normalize()
    );
    f.writer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_from_before_running_totals_gets_them_computed_exactly_once_opened() {
    if helpers::ledger::is_postgres() {
        // PostgreSQL's running totals date from its first migrations.
        println!("SQLite only: run in the SQLite pass");
        return;
    }
    let f = fixture().await;
    let account = f.template.account_id;
    for n in 0..50 {
        let mut r = record(&f.template, format!("req_{n:02}"));
        // Costs as fine as prices make them (8 decimals per 1,000 tokens: 11 decimals).
        r.cost = Decimal::new(12_345_678_901 + n, 11);
        f.ledger.commit(r).await.unwrap();
    }
    store::accounts::top_up(&f.db, account, Decimal::new(3, 0), "t-1", "")
        .await
        .unwrap();
    f.writer.shutdown().await.unwrap();
    // As a ledger of an older version leaves them: not computed.
    helpers::ledger::execute(
        &f.db,
        "UPDATE account_funds SET topped_up = NULL, spent = NULL",
        &[],
    )
    .await
    .unwrap();
    assert!(store::funds::of(&f.db, account).await.is_err());
    let db = store::connect(&f.database).await.unwrap();
    let (funds, sums) = totals_and_sums(&db, account).await;
    assert_eq!(funds, sums, "summed exactly, digit for digit");
    assert_eq!(funds.spent, Decimal::new(50 * 12_345_678_901 + 1225, 11));
    assert_eq!(funds.topped_up, Decimal::new(3, 0));
}

/// A batch that holds one request id twice (an import file with a line repeated, say)
/// stores, charges and burns grants for the first of them once, beside a replay of a
/// record stored before; the details of a record inserted next to skipped ones go with it.
/// An import that holds one id with two starts is refused whole: one request, one start.
#[tokio::test]
async fn a_request_id_twice_in_a_batch_is_stored_and_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    let version = helpers::simple_price(&b.db).await;
    let sink = Arc::new(store::Sink::open(&b.database).await.unwrap());
    let at = Utc::now() - chrono::Duration::minutes(5);
    let record = |id: &str, cost: &str, started| {
        let mut r =
            helpers::simple_record(id.into(), (b.account.id, b.key_id), version.id, started);
        r.cost = cost.parse().unwrap();
        r
    };
    let stored_before = record("req_0192f1a2b3c47d8e9fa0b1c2d3e4f501", "0.5", at);
    sink.insert(&[&stored_before]).await.unwrap();
    // Tokens of the records' model, for the grants the records burn.
    let grant = promotional_grant(&b.db, b.account.id, (None, Some(1_000), Some("m")), at).await;
    let funds = store::funds::of(&b.db, b.account.id).await.unwrap();

    let first = record("req_0192f1a2b3c47d8e9fa0b1c2d3e4f502", "0.25", at);
    let repeated = record("req_0192f1a2b3c47d8e9fa0b1c2d3e4f502", "0.75", at);
    let mut failed = record("import-7", "0.125", at);
    failed.status = tollgate::billing::record::Status::UpstreamError;
    failed.error = Some("backend said no".into());
    sink.insert(&[&stored_before, &first, &failed, &repeated])
        .await
        .unwrap();
    let stored = store::usage::by_request_id(&b.db, &first.request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.cost, first.cost, "the first of the two is stored");
    let stored = store::usage::by_request_id(&b.db, "import-7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.error.as_deref(), Some("backend said no"));
    assert_eq!(stored.cost, failed.cost);
    let (_, tokens) = store::grants::uses_of(&b.db, grant.id).await.unwrap();
    assert_eq!(
        tokens,
        2 * 30,
        "the two records inserted burn their tokens once"
    );
    let after = store::funds::of(&b.db, b.account.id).await.unwrap();
    // The first of the repeated id and the new record, once each; the grant's tokens
    // cover both, so it paid their whole cost.
    let costs = first.cost + failed.cost;
    assert_eq!(
        (after.spent, after.granted),
        (funds.spent + costs, funds.granted + costs)
    );

    // An import with one id at two starts: refused, nothing of it kept.
    let lines: String = [at, at + chrono::Duration::seconds(1)]
        .iter()
        .map(|started| {
            serde_json::json!({"request_id": "import-8", "account": "acme", "key_id": b.key_id,
                "model": "m", "chip": "c", "started_at": started.to_rfc3339(),
                "prompt_tokens": 10, "completion_tokens": 20})
            .to_string()
                + "\n"
        })
        .collect();
    let refused =
        tollgate::domain::usage_import::import(&b.db, sink, chrono_tz::UTC, lines.as_bytes()).await;
    let message = format!("{:#}", refused.unwrap_err());
    assert!(
        message.contains("import-8") && message.contains("two starts"),
        "{message}"
    );
    assert!(
        store::usage::by_request_id(&b.db, "import-8")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store::funds::of(&b.db, b.account.id).await.unwrap(), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_a_rewind_dropped_are_not_read_after_the_next_one() {
    let f = fixture().await;
    f.writer.shutdown().await.unwrap();
    let [mut journal, second] = journal::open(&f.database).unwrap();
    append(&mut journal, &record(&f.template, "req_a".into()));
    let kept = journal.len();
    append(&mut journal, &record(&f.template, "req_b".into()));
    append(&mut journal, &record(&f.template, "req_d".into()));
    // An fdatasync failed: req_b and req_d were never acknowledged.
    journal.rewind(kept);
    // The next line is as long as req_b's, so req_d's starts right after it.
    append(&mut journal, &record(&f.template, "req_c".into()));
    drop((journal, second));
    let [mut journal, _second] = journal::open(&f.database).unwrap();
    let ids: Vec<String> = (journal.records().into_iter())
        .map(|r| r.request_id)
        .collect();
    assert_eq!(ids, ["req_a", "req_c"]);
}

/// Four sinks ship overlapping batches of the same 120 records at once, as writers that
/// retry after unclear failures would, with a grant larger than their costs. On PostgreSQL a
/// batch goes in as a plain insert and falls back to skipping stored ids when a replay
/// (or another sink's uncommitted row) refuses it. Each record is stored and charged once,
/// the grant pays once, and the money invariant holds: the running totals are the sums of
/// the records, `balance = top-ups − Σ costs net of grants`, and nothing is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_shipped_at_once_by_several_sinks_are_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    let version = helpers::simple_price(&b.db).await;
    store::accounts::top_up(&b.db, b.account.id, Decimal::new(100, 0), "t-1", "")
        .await
        .unwrap();
    let at = Utc::now() - chrono::Duration::minutes(5);
    promotional_grant(
        &b.db,
        b.account.id,
        (Some(Decimal::new(10, 0)), None, None),
        at,
    )
    .await;
    let records: Vec<UsageRecord> = (0..120)
        .map(|n| {
            let id = format!("req_0192f1a2b3c47d8e9fa0b1c2d3e4{n:04x}");
            let mut r = helpers::simple_record(id, (b.account.id, b.key_id), version.id, at);
            r.cost = Decimal::new(n + 1, 3);
            r
        })
        .collect();
    let records = Arc::new(records);
    let mut shipping = Vec::new();
    for n in 0..4 {
        let (records, database) = (records.clone(), b.database.clone());
        shipping.push(tokio::spawn(async move {
            let sink = store::Sink::open(&database).await.unwrap();
            // Batches of 30 starting at a different record for each sink: every record is
            // in a batch of every sink, each time beside different neighbours.
            for round in 0..4 {
                let start = (n * 7 + round * 30) % 120;
                let batch: Vec<&UsageRecord> =
                    (0..30).map(|i| &records[(start + i) % 120]).collect();
                sink.insert(&batch).await.unwrap();
            }
        }));
    }
    for task in shipping {
        task.await.unwrap();
    }
    let ids = helpers::ledger::request_ids(&b.db).await;
    assert_eq!(ids.len(), 120, "each record stored once");
    let (funds, sums) = totals_and_sums(&b.db, b.account.id).await;
    assert_eq!(funds, sums, "running totals = Σ top-ups, Σ record costs");
    let charged: Decimal = records.iter().map(|r| r.cost).sum();
    assert_eq!(funds.spent, charged);
    let granted = store::grants::used_total(&b.db, b.account.id)
        .await
        .unwrap();
    // The grant (10) holds more than the records cost (7.26): it pays each once.
    assert_eq!(granted, charged, "the grant paid each record once");
    assert_eq!(funds.granted, granted);
    assert_eq!(
        tollgate::limits::spending::balance(&b.db, b.account.id)
            .await
            .unwrap(),
        (Decimal::new(100, 0) - (charged - granted)).normalize()
    );
    if let Db::Postgres(pool) = &b.db {
        let held = store::holds::held(pool, b.account.id).await.unwrap();
        assert_eq!(held, Decimal::ZERO);
    }
}
