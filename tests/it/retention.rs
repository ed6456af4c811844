//! History that can be retired: records exported (JSON lines that `usage import` takes
//! back, CSV), then the records before a day archived and deleted, on the ledger under
//! test, while invoices, reports, balances and the audit stay exactly as they were; the
//! retired period takes no new record and refuses sums that would need its records.

use crate::helpers;

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use tollgate::billing::PriceBook;
use tollgate::billing::invoice::InvoiceStatus;
use tollgate::billing::period::Month;
use tollgate::domain::invoices::Ledger;
use tollgate::domain::usage_export::{self, Format};
use tollgate::store::{self, rollups};

const ZONE: chrono_tz::Tz = chrono_tz::Asia::Shanghai;

/// Every figure that must not move: the accounts' November invoices and balances, and a
/// day-by-day report of the month.
async fn figures(db: &store::Db, accounts: &[i64]) -> Vec<String> {
    let book = PriceBook::new(store::prices::all(db).await.unwrap());
    let ledger = Ledger {
        db,
        prices: &book,
        zone: ZONE,
        finalize_grace: Duration::zero(),
    };
    let november = Month::parse("2026-11").unwrap();
    let mut figures = Vec::new();
    for &id in accounts {
        let account = store::accounts::get(db, id).await.unwrap().unwrap();
        let invoice = ledger
            .draft(&account, november, InvoiceStatus::Draft)
            .await
            .unwrap();
        figures.push(format!("{}: {}", account.name, invoice.total_exact));
        let funds = store::funds::of(db, id).await.unwrap();
        figures.push(format!(
            "{}: balance {}",
            account.name,
            funds.balance().unwrap()
        ));
    }
    let (start, end) = november.bounds(ZONE);
    let edges = tollgate::billing::report::slot_edges(ZONE, (start, end), false);
    let by = rollups::By {
        account: true,
        key: true,
        slots: Some(&edges),
        zone: Some(ZONE),
    };
    let (from, to) = (start.timestamp_millis(), end.timestamp_millis());
    let mut totals = rollups::totals(db, rollups::Scope::All, from, to, by)
        .await
        .unwrap();
    totals.sort_by_key(|t| (t.account_id, t.lineage_id, t.slot_ms));
    figures.extend(totals.iter().map(|t| format!("{t:?}")));
    figures
}

#[tokio::test]
async fn retired_records_are_archived_and_every_figure_stays() {
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    rollups::keep_days_in(&b.db, ZONE).await.unwrap();
    let beta = store::accounts::create(&b.db, "beta").await.unwrap();
    let beta_key = helpers::insert_key(&b.db, beta.id).await;
    let version = helpers::simple_price(&b.db).await;
    // Three days of November in Shanghai, a record every 20 minutes, two accounts.
    let first_day = ZONE.with_ymd_and_hms(2026, 11, 10, 0, 0, 0).unwrap();
    let records: Vec<_> = (0..216)
        .map(|i| {
            let owner = match i % 3 {
                0 => (beta.id, beta_key),
                _ => (b.account.id, b.key_id),
            };
            let at = (first_day + Duration::minutes(20 * i as i64 + 7)).with_timezone(&Utc);
            let mut r = helpers::simple_record(format!("req_ret_{i:03}"), owner, version.id, at);
            r.tokens.prompt = 100 + i as u64;
            r.cost =
                tollgate::billing::cost_of(&version, r.tokens, Default::default(), true).unwrap();
            r
        })
        .collect();
    let sink = store::Sink::open(&b.database).await.unwrap();
    sink.insert(&records.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let accounts = [b.account.id, beta.id];
    let before = figures(&b.db, &accounts).await;

    // Export: every record once, oldest first, as JSON lines or CSV.
    let period = (i64::MIN, i64::MAX);
    let mut jsonl = Vec::new();
    let n = usage_export::export(&b.db, period, Format::Jsonl, &mut jsonl)
        .await
        .unwrap();
    assert_eq!(n, 216);
    let lines: Vec<serde_json::Value> = String::from_utf8(jsonl.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = records.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(ids, expected, "every record, oldest first");
    assert_eq!(lines[0]["account"], "beta");
    assert_eq!(lines[0]["cost"], records[0].cost.normalize().to_string());
    let mut csv = Vec::new();
    usage_export::export(&b.db, period, Format::Csv, &mut csv)
        .await
        .unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.lines().count(), 217, "a header and a line a record");
    assert!(csv.starts_with("request_id,account,key_id,model,chip"));

    // Retire the first day.
    let second_day = first_day + Duration::days(1);
    let mut archive = Vec::new();
    let retired =
        tollgate::domain::retention::retire(&b.db, second_day.with_timezone(&Utc), async |p| {
            usage_export::export(&b.db, p, Format::Jsonl, &mut archive).await
        })
        .await
        .unwrap();
    let cut = second_day.timestamp_millis();
    let old: Vec<&str> = records
        .iter()
        .filter(|r| r.started_at.timestamp_millis() < cut)
        .map(|r| r.request_id.as_str())
        .collect();
    assert_eq!(old.len(), 72);
    assert_eq!((retired.archived, retired.deleted), (72, 72));
    let archived: Vec<String> = String::from_utf8(archive.clone())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(archived, old, "the archive holds the retired records");
    let kept = helpers::ledger::request_ids(&b.db).await;
    assert_eq!(kept.len(), 144);
    assert!(kept.iter().all(|id| !old.contains(&id.as_str())));

    // Every figure is as it was, and the audit finds nothing.
    assert_eq!(figures(&b.db, &accounts).await, before);
    let verified = tollgate::domain::audit::verify(&b.db).await.unwrap();
    assert_eq!(verified.found(), 0, "{verified:?}");

    // A sum that needs a retired record is refused, not short.
    let ragged = rollups::totals(
        &b.db,
        rollups::Scope::All,
        first_day.timestamp_millis() + 60_000,
        cut + 86_400_000,
        rollups::By::default(),
    )
    .await;
    assert!(
        matches!(ragged, Err(store::StoreError::Conflict(_))),
        "{ragged:?}"
    );

    // The retired period takes no record: neither through the writer's sink ...
    let mut late = records[0].clone();
    late.request_id = "req_ret_late".into();
    assert!(matches!(
        sink.insert(&[&late]).await,
        Err(store::InsertError::Refused(_))
    ));
    // ... nor by import (the archive itself, say), which names the line.
    let sink = Arc::new(store::Sink::open(&b.database).await.unwrap());
    let again = tollgate::domain::usage_import::import(&b.db, sink, ZONE, &archive[..]).await;
    assert!(
        matches!(&again, Err(tollgate::domain::usage_import::ImportError::Invalid { line: 1, why }) if why.contains("retired")),
        "{again:?}"
    );
    assert_eq!(figures(&b.db, &accounts).await, before);

    // The archive imports into another ledger as it is: the same records, priced alike.
    let other_dir = tempfile::tempdir().unwrap();
    let other = helpers::bare_ledger(&other_dir).await;
    let other_beta = store::accounts::create(&other.db, "beta").await.unwrap();
    assert_eq!(
        (
            other.key_id,
            helpers::insert_key(&other.db, other_beta.id).await
        ),
        (b.key_id, beta_key),
        "the same key ids"
    );
    helpers::simple_price(&other.db).await;
    let sink = Arc::new(store::Sink::open(&other.database).await.unwrap());
    let imported = tollgate::domain::usage_import::import(&other.db, sink, ZONE, &archive[..])
        .await
        .unwrap();
    assert_eq!(imported.new_records, 72);
    let spent: Decimal = records
        .iter()
        .filter(|r| r.started_at.timestamp_millis() < cut && r.account_id == b.account.id)
        .map(|r| r.cost)
        .sum();
    let funds = store::funds::of(&other.db, other.account.id).await.unwrap();
    assert_eq!(funds.spent, spent);
}

/// `retention.keep_days`: what `tollgate serve` runs each hour. The records before the day
/// that many days before today go to a new archive file, once; a later run with nothing
/// older finds nothing to do.
#[tokio::test]
async fn keep_days_archives_to_a_file_and_retires_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    rollups::keep_days_in(&b.db, ZONE).await.unwrap();
    let version = helpers::simple_price(&b.db).await;
    let first_day = ZONE.with_ymd_and_hms(2026, 11, 10, 0, 0, 0).unwrap();
    let records: Vec<_> = (0..50)
        .map(|i| {
            let at = (first_day + Duration::hours(2 * i + 1)).with_timezone(&Utc);
            helpers::simple_record(
                format!("req_keep_{i:02}"),
                (b.account.id, b.key_id),
                version.id,
                at,
            )
        })
        .collect();
    let sink = store::Sink::open(&b.database).await.unwrap();
    sink.insert(&records.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let before = figures(&b.db, &[b.account.id]).await;
    // Noon of November 14: keep two whole days, the 12th and 13th (and today).
    let now = ZONE
        .with_ymd_and_hms(2026, 11, 14, 12, 0, 0)
        .unwrap()
        .with_timezone(&Utc);
    let archives = dir.path().join("archive");
    let run = || {
        store::retire::one_at_a_time(&b.db, async || {
            tollgate::domain::retention::keep_days(&b.db, ZONE, 2, &archives, now).await
        })
    };
    let retired = run().await.unwrap().expect("no other process").unwrap();
    let cut = ZONE.with_ymd_and_hms(2026, 11, 12, 0, 0, 0).unwrap();
    let old = records.iter().filter(|r| r.started_at < cut).count() as u64;
    assert_eq!((retired.archived, retired.deleted), (old, old));
    let file = archives.join("usage-before-2026-11-12.jsonl.gz");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap()),
        &mut text,
    )
    .unwrap();
    assert_eq!(text.lines().count() as u64, old);
    assert_eq!(
        std::fs::read_dir(&archives).unwrap().count(),
        1,
        "no partial file left"
    );
    assert_eq!(figures(&b.db, &[b.account.id]).await, before);
    assert!(
        run().await.unwrap().unwrap().is_none(),
        "nothing more to do"
    );
    let verified = tollgate::domain::audit::verify(&b.db).await.unwrap();
    assert_eq!(verified.found(), 0, "{verified:?}");
}

/// Retiring while a prepaid account's requests are admitted, held and charged at the
/// same time keeps the money invariant (retired costs included) on the ledger under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_under_prepaid_traffic_keeps_the_money_invariant() {
    use crate::spending::{modest_request, set_billing, top_up};
    let app = helpers::TestApp::spawn().await;
    set_billing(&app, serde_json::json!({"billing_mode": "prepaid"})).await;
    let (status, _) = top_up(&app, "t-1", serde_json::json!("5")).await;
    assert_eq!(status, 201);
    let send = || {
        app.client
            .post(app.url("/maas/megrez-7b-instruct/nvidia/chat/completions"))
            .bearer_auth(&app.key)
            .json(&modest_request())
            .send()
    };
    // October's history: 30 requests, aged into October once shipped.
    for _ in 0..30 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    app.wait_until_shipped(std::time::Duration::from_secs(30))
        .await;
    let zone = app.state.config().billing.zone();
    let october = ZONE.with_ymd_and_hms(2026, 10, 10, 12, 0, 0).unwrap();
    helpers::ledger::move_all_records(app.state.db(), october.timestamp_millis(), zone).await;
    let before = helpers::money::assert_invariant(&app, 1).await;

    // November begins the kept history; 60 requests come in meanwhile.
    let november = tollgate::billing::period::day_start(
        chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        zone,
    );
    let db = app.state.db().clone();
    let retiring = tokio::spawn(async move {
        let mut archive = Vec::new();
        tollgate::domain::retention::retire(&db, november, async |p| {
            usage_export::export(&db, p, Format::Jsonl, &mut archive).await
        })
        .await
        .unwrap()
    });
    let traffic = futures_util::future::join_all((0..60).map(|_| send())).await;
    let admitted = traffic
        .iter()
        .filter(|r| r.as_ref().unwrap().status() == 200)
        .count();
    let retired = retiring.await.unwrap();
    assert_eq!((retired.archived, retired.deleted), (30, 30));
    let after = helpers::money::assert_invariant(&app, 1).await;
    assert_eq!(
        after.records, admitted,
        "only the new records are in the ledger"
    );
    assert!(after.charged > before.charged);
    assert_eq!(after.held, Decimal::ZERO);
    let verified = tollgate::domain::audit::verify(app.state.db())
        .await
        .unwrap();
    assert_eq!(verified.found(), 0, "{verified:?}");
}
