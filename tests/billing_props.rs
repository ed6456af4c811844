//! For any usage: the sum of the records = the invoice's exact total, to the last decimal,
//! and the invoice total = the sum of its lines rounded half-up to the fen. Prices carry up
//! to 8 decimals and change mid-period; records sit on both sides of local midnight.

mod helpers;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tollgate::admin::invoices::Ledger;
use tollgate::billing::invoice::{InvoiceStatus, to_fen};
use tollgate::billing::period::Month;
use tollgate::billing::report::{self, Dimension, Names};
use tollgate::billing::{PriceBook, PriceEntry, TokenCounts, cost_of};
use tollgate::metering::record::{Status, UsageRecord, UsageSource};
use tollgate::store;

const ZONE: chrono_tz::Tz = chrono_tz::Asia::Shanghai;

#[derive(Debug, Clone)]
struct Usage {
    version: usize,
    prompt: u64,
    cached: u64,
    completion: u64,
    ok: bool,
    /// Index into the boundary instants.
    when: usize,
}

fn usage() -> impl Strategy<Value = Usage> {
    (
        0usize..4,
        0u64..200_000,
        0u64..100_000,
        0u64..50_000,
        any::<bool>(),
        0usize..6,
    )
        .prop_map(|(version, prompt, cached, completion, ok, when)| Usage {
            version,
            prompt,
            cached: cached.min(prompt),
            completion,
            ok,
            when,
        })
}

/// A price with up to 8 decimals, from an integer count of 1e-8 CNY.
fn price() -> impl Strategy<Value = Decimal> {
    (0i64..5_000_000).prop_map(|units| Decimal::new(units, 8))
}

/// Local midnights around November 2026 in Shanghai, and a millisecond either side.
fn instants() -> Vec<DateTime<Utc>> {
    let local = |y, m, d| {
        ZONE.with_ymd_and_hms(y, m, d, 0, 0, 0)
            .unwrap()
            .with_timezone(&Utc)
    };
    let nov = local(2026, 11, 1);
    let dec = local(2026, 12, 1);
    let ms = Duration::milliseconds(1);
    vec![
        nov - ms,
        nov,
        nov + Duration::days(14),
        dec - ms,
        dec,
        dec + ms,
    ]
}

async fn check(prices: Vec<(Decimal, Decimal, Decimal, Decimal)>, usages: Vec<Usage>) {
    let dir = tempfile::tempdir().unwrap();
    let helpers::BareLedger {
        database,
        db,
        account,
        key_id,
    } = helpers::bare_ledger(&dir).await;
    // Two chips, each with a price change in the middle of November.
    let mid = ZONE
        .with_ymd_and_hms(2026, 11, 15, 12, 0, 0)
        .unwrap()
        .with_timezone(&Utc);
    let entries: Vec<PriceEntry> = prices
        .iter()
        .enumerate()
        .map(|(i, (input, cached, output, per_request))| PriceEntry {
            model: "m".into(),
            chip: if i % 2 == 0 { "a" } else { "b" }.into(),
            effective_from: if i < 2 {
                Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            } else {
                mid
            },
            input_per_1k: *input,
            cached_input_per_1k: Some(*cached),
            output_per_1k: *output,
            per_request: *per_request,
        })
        .collect();
    store::prices::sync(&db, &entries).await.unwrap();
    let versions = store::prices::all(&db).await.unwrap();
    let book = PriceBook::new(versions.clone());
    let instants = instants();
    let (start, end) = Month::parse("2026-11").unwrap().bounds(ZONE);
    let mut expected = Decimal::ZERO;
    let mut records = Vec::new();
    for (n, u) in usages.iter().enumerate() {
        let version = &versions[u.version];
        let tokens = TokenCounts {
            prompt: u.prompt,
            completion: u.completion,
            cached: u.cached,
        };
        let cost = cost_of(version, tokens, u.ok).unwrap();
        let started_at = instants[u.when];
        if started_at >= start && started_at < end {
            expected += cost;
        }
        records.push(UsageRecord {
            request_id: format!("req_{n}"),
            account_id: account.id,
            key_id,
            model: "m".into(),
            chip: version.entry.chip.clone(),
            deployment: None,
            endpoint: tollgate::config::Endpoint::Chat,
            stream: false,
            status: if u.ok { Status::Ok } else { Status::Partial },
            http_status: 200,
            error: None,
            tokens,
            usage_source: UsageSource::Reported,
            price_version_id: version.id,
            cost,
            blocked: false,
            moderation: None,
            started_at,
            ended_at: started_at,
            latency_ms: 1,
            ttft_ms: None,
        });
    }
    let writer = store::open_for_ledger_writer(&database).unwrap();
    store::usage::insert(&writer, &records).unwrap();
    drop(writer);

    let ledger = Ledger {
        db: &db,
        prices: &book,
        zone: ZONE,
        finalize_grace: Duration::zero(),
    };
    let invoice = ledger
        .draft(
            &account,
            Month::parse("2026-11").unwrap(),
            InvoiceStatus::Draft,
        )
        .await
        .unwrap();
    assert_eq!(
        invoice.total_exact,
        expected.normalize(),
        "records = invoice, exactly"
    );
    let rounded: Decimal = invoice.lines.iter().map(|l| to_fen(l.amount_exact)).sum();
    assert_eq!(invoice.total, rounded, "total = sum of rounded lines");
    assert!(
        invoice
            .lines
            .iter()
            .all(|l| l.amount == to_fen(l.amount_exact))
    );
    assert_eq!(invoice.total.scale().max(2), 2, "the total is in fen");

    // The cost report over the same month, grouped every way at once, agrees too.
    let totals = store::usage::totals(
        &db,
        store::usage::Scope::All,
        start.timestamp_millis(),
        end.timestamp_millis(),
        true,
    )
    .await
    .unwrap();
    let dims = Dimension::parse_list("account,key,model,chip,day").unwrap();
    let report =
        report::build(&totals, &book, &Names::default(), ZONE, (start, end), dims).unwrap();
    assert_eq!(
        report.total_exact,
        expected.normalize(),
        "records = report, exactly"
    );
    assert_eq!(
        report
            .rows
            .iter()
            .map(|r| r.cost_exact)
            .sum::<Decimal>()
            .normalize(),
        report.total_exact
    );
    assert_eq!(
        report.total,
        to_fen(invoice.total_exact),
        "report and invoice agree to the fen"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn records_invoice_and_rounding_agree(
        prices in proptest::collection::vec((price(), price(), price(), price()), 4),
        usages in proptest::collection::vec(usage(), 0..60),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(check(prices, usages));
    }
}
