//! For any usage of several accounts and keys: each account's records = its invoice's exact
//! total, to the last decimal (and nobody else's records count), the accounts' invoices add
//! up to the all-accounts report, and an invoice total = the sum of its lines rounded
//! half-up to the fen. Prices carry up to 8 decimals and change mid-period; records sit on
//! both sides of local midnight; records bill images, tasks and compute time besides
//! tokens. Money inputs near every bound give clean errors, never a panic.

use crate::helpers;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tollgate::billing::invoice::{InvoiceStatus, to_fen};
use tollgate::billing::period::Month;
use tollgate::billing::record::{Status, UsageRecord, UsageSource};
use tollgate::billing::report::{self, Dimension, Names};
use tollgate::billing::{PriceBook, PriceEntry, TokenCounts, Units, cost_of};
use tollgate::domain::invoices::Ledger;
use tollgate::store;

const ZONE: chrono_tz::Tz = chrono_tz::Asia::Shanghai;

#[derive(Debug, Clone)]
struct Usage {
    /// Which (account, key): see `TENANTS`.
    tenant: usize,
    version: usize,
    prompt: u64,
    cached: u64,
    completion: u64,
    units: Units,
    ok: bool,
    /// Index into the boundary instants.
    when: usize,
}

/// (account index, key index) of each tenant: account 0 has two keys.
const TENANTS: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 2), (2, 3)];

fn usage() -> impl Strategy<Value = Usage> {
    (
        0usize..TENANTS.len(),
        0usize..4,
        0u64..200_000,
        0u64..100_000,
        0u64..50_000,
        (0u64..5, 0u64..2, 0u64..90_000, 0u64..3),
        any::<bool>(),
        0usize..6,
    )
        .prop_map(
            |(
                tenant,
                version,
                prompt,
                cached,
                completion,
                (images, tasks, compute_ms, uploads),
                ok,
                when,
            )| {
                Usage {
                    tenant,
                    version,
                    prompt,
                    cached: cached.min(prompt),
                    completion,
                    units: Units {
                        images,
                        tasks,
                        compute_ms,
                        uploads,
                    },
                    ok,
                    when,
                }
            },
        )
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

/// A price version's prices: input, cached input, output, per request, per image, per
/// task, per second.
type Prices = (
    Decimal,
    Decimal,
    Decimal,
    Decimal,
    Decimal,
    Decimal,
    Decimal,
);

async fn check(prices: Vec<Prices>, usages: Vec<Usage>) {
    let dir = tempfile::tempdir().unwrap();
    let helpers::BareLedger {
        database,
        db,
        account,
        key_id,
    } = helpers::bare_ledger(&dir).await;
    let mut accounts = vec![account];
    for name in ["beta", "gamma"] {
        accounts.push(store::accounts::create(&db, name).await.unwrap());
    }
    let keys = [
        key_id,
        helpers::insert_key(&db, accounts[0].id).await,
        helpers::insert_key(&db, accounts[1].id).await,
        helpers::insert_key(&db, accounts[2].id).await,
    ];
    // Two chips, each with a price change in the middle of November.
    let mid = ZONE
        .with_ymd_and_hms(2026, 11, 15, 12, 0, 0)
        .unwrap()
        .with_timezone(&Utc);
    let entries: Vec<PriceEntry> = prices
        .iter()
        .enumerate()
        .map(
            |(i, (input, cached, output, per_request, per_image, per_task, per_second))| {
                PriceEntry {
                    model: "m".into(),
                    chip: if i % 2 == 0 { "a" } else { "b" }.into(),
                    effective_from: if i < 2 {
                        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                    } else {
                        mid
                    },
                    input_per_1k: *input,
                    cached_input_per_1k: Some(*cached),
                    // Cache writes at the output price: a rate of its own.
                    cache_write_per_1k: Some(*output),
                    output_per_1k: *output,
                    per_request: *per_request,
                    per_image: *per_image,
                    per_task: *per_task,
                    per_second: *per_second,
                    // Uploads at the per-request price: a price of its own, up to 8 decimals.
                    per_upload: *per_request,
                    ..Default::default()
                }
            },
        )
        .collect();
    store::prices::sync(&db, &entries).await.unwrap();
    let versions = store::prices::all(&db).await.unwrap();
    let book = PriceBook::new(versions.clone());
    let instants = instants();
    let (start, end) = Month::parse("2026-11").unwrap().bounds(ZONE);
    let mut expected = [Decimal::ZERO; 3];
    let mut records = Vec::new();
    for (n, u) in usages.iter().enumerate() {
        let version = &versions[u.version];
        let tokens = TokenCounts {
            prompt: u.prompt,
            completion: u.completion,
            cached: u.cached,
            // Half the prompt tokens not read from a cache were written to it.
            cache_write: (u.prompt - u.cached) / 2,
            reasoning: 0,
        };
        let units = if u.ok { u.units } else { Units::default() };
        let cost = cost_of(version, tokens, units, u.ok).unwrap();
        let started_at = instants[u.when];
        let (account, key) = TENANTS[u.tenant];
        if started_at >= start && started_at < end {
            expected[account] += cost;
        }
        records.push(UsageRecord {
            request_id: format!("req_{n}"),
            account_id: accounts[account].id,
            key_id: keys[key],
            model: "m".into(),
            chip: version.entry.chip.clone(),
            deployment: None,
            endpoint: "chat".into(),
            stream: false,
            status: if u.ok { Status::Ok } else { Status::Partial },
            http_status: 200,
            error: None,
            tokens,
            units,
            usage_source: UsageSource::Reported,
            price_version_id: version.id,
            cost,
            blocked: false,
            moderation: None,
            started_at,
            ended_at: started_at,
            latency_ms: 1,
            ttft_ms: None,
            attempts: Vec::new(),
            reported: None,
        });
    }
    // The ledger keeps daily sums in the billing zone, as `tollgate serve` has it do.
    store::rollups::keep_days_in(&db, ZONE).await.unwrap();
    let sink = store::Sink::open(&database).await.unwrap();
    let batch: Vec<&UsageRecord> = records.iter().collect();
    sink.insert(&batch).await.unwrap();

    let ledger = Ledger {
        db: &db,
        prices: &book,
        zone: ZONE,
        finalize_grace: Duration::zero(),
    };
    let mut invoices_total = Decimal::ZERO;
    for (account, expected) in accounts.iter().zip(expected) {
        let invoice = ledger
            .draft(
                account,
                Month::parse("2026-11").unwrap(),
                InvoiceStatus::Draft,
            )
            .await
            .unwrap();
        assert_eq!(
            invoice.total_exact,
            expected.normalize(),
            "{}'s records = its invoice, exactly, and nobody else's",
            account.name
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
        invoices_total += invoice.total_exact;
    }
    let per_account = expected;
    let expected: Decimal = expected.iter().sum();
    assert_eq!(invoices_total.normalize(), expected.normalize());

    // The cost report over the same month, grouped every way at once, agrees too.
    let edges = report::slot_edges(ZONE, (start, end), false);
    let totals = store::rollups::totals(
        &db,
        store::rollups::Scope::All,
        start.timestamp_millis(),
        end.timestamp_millis(),
        store::rollups::By {
            account: true,
            key: true,
            slots: Some(&edges),
            zone: Some(ZONE),
        },
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
        to_fen(invoices_total),
        "the report and the accounts' invoices agree to the fen"
    );
    // Summed only by what a model × chip report needs (no group per account or key): the
    // same total, from fewer groups.
    let lean = store::rollups::totals(
        &db,
        store::rollups::Scope::All,
        start.timestamp_millis(),
        end.timestamp_millis(),
        store::rollups::By {
            slots: Some(&edges),
            zone: Some(ZONE),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dims = Dimension::parse_list("model,chip").unwrap();
    let by_model = report::build(&lean, &book, &Names::default(), ZONE, (start, end), dims);
    assert_eq!(by_model.unwrap().total_exact, report.total_exact);
    assert!(lean.len() <= totals.len());
    // Grouped by account, each row is that account's records only.
    let dims = Dimension::parse_list("account").unwrap();
    let names = Names {
        accounts: accounts.iter().map(|a| (a.id, a.name.clone())).collect(),
        ..Names::default()
    };
    let by_account = report::build(&totals, &book, &names, ZONE, (start, end), dims).unwrap();
    for row in &by_account.rows {
        let i = accounts
            .iter()
            .position(|a| a.name == row.group[0])
            .unwrap();
        let own = per_account[i].normalize();
        assert_eq!(row.cost_exact, own, "report row of {}", row.group[0]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn records_invoice_and_rounding_agree(
        prices in proptest::collection::vec(
            (price(), price(), price(), price(), price(), price(), price()),
            4,
        ),
        usages in proptest::collection::vec(usage(), 0..60),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(check(prices, usages));
    }
}

/// Any decimal, with the extremes drawn often.
fn any_decimal() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        Just(Decimal::MAX),
        Just(Decimal::MIN),
        Just(Decimal::ZERO),
        Just(tollgate::billing::money::MAX_AMOUNT),
        Just(tollgate::billing::money::MAX_PRICE),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            0u32..=28
        )
            .prop_map(|(lo, mid, hi, negative, scale)| Decimal::from_parts(
                lo, mid, hi, negative, scale
            )),
        price(),
    ]
}

/// Any token count, with the extremes drawn often.
fn any_count() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(tollgate::config::MAX_REPORTED_TOKENS),
        any::<u64>(),
        0u64..1_000_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn money_inputs_near_every_bound_give_a_clean_error_never_a_panic(
        amount in any_decimal(),
        price in any_decimal(),
        counts in (any_count(), any_count(), any_count()),
        sums in (any::<i64>(), any::<i64>(), any::<i64>()),
    ) {
        use tollgate::billing::cost::worst_cost_of;
        use tollgate::billing::money::{MAX_AMOUNT, MAX_PRICE, MAX_SCALE, check_amount, check_price};
        use tollgate::billing::{PriceVersion, invoice};
        use tollgate::config::MAX_REPORTED_TOKENS;

        let within = |max: Decimal, v: Decimal| {
            let not_negative = !v.is_sign_negative() || v.is_zero();
            not_negative && v <= max && v.normalize().scale() <= MAX_SCALE
        };
        prop_assert_eq!(check_amount(amount, "amount").is_ok(), within(MAX_AMOUNT, amount));
        prop_assert_eq!(check_price(price, "input_per_1k").is_ok(), within(MAX_PRICE, price));

        let version = PriceVersion {
            id: 1,
            entry: PriceEntry {
                model: "m".into(),
                chip: "a".into(),
                effective_from: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                input_per_1k: price,
                cached_input_per_1k: Some(amount),
                cache_write_per_1k: Some(amount),
                output_per_1k: price,
                per_request: price,
                per_image: price,
                per_task: price,
                per_second: price,
                per_upload: price,
                ..Default::default()
            },
        };
        let tokens = TokenCounts { prompt: counts.0, completion: counts.1, cached: counts.2, cache_write: counts.1, reasoning: 0 };
        let units = Units { images: counts.0, tasks: counts.1, compute_ms: counts.2, uploads: counts.0 };
        let cost = cost_of(&version, tokens, Units::default(), true);
        let _ = cost_of(&version, tokens, units, true);
        let bounded = within(MAX_PRICE, price)
            && within(MAX_PRICE, amount)
            && tokens.prompt <= MAX_REPORTED_TOKENS
            && tokens.completion <= MAX_REPORTED_TOKENS;
        if bounded {
            prop_assert!(cost.is_ok(), "bounded inputs always have a cost");
            prop_assert!(worst_cost_of(&version, tokens, Units::default()).unwrap() >= cost.unwrap());
        }
        let capped = tokens.capped(TokenCounts { prompt: 10, completion: 10, cached: 0, cache_write: 0, reasoning: 0 });
        prop_assert!(capped.prompt <= 10 && capped.completion <= 10 && capped.cached + capped.cache_write <= capped.prompt);

        // Sums near i64::MAX, as a broken aggregate could hand them over.
        let book = PriceBook::new(vec![version]);
        let totals = vec![
            tollgate::billing::Totals {
                account_id: 1,
                lineage_id: 1,
                model: "m".into(),
                chip: "a".into(),
                deployment: String::new(),
                price_version_id: 1,
                slot_ms: Some(0),
                requests: sums.0,
                ok_requests: sums.0,
                prompt_tokens: sums.1,
                cached_tokens: sums.2,
                cache_write_tokens: sums.2,
                completion_tokens: sums.1,
                reasoning_tokens: sums.2,
                images: sums.0,
                tasks: sums.2,
                compute_ms: sums.1,
                uploads: sums.2,
            };
            3
        ];
        let _ = invoice::cost_of_sums(&totals, &book);
        let _ = invoice::lines(&totals, &book);
        let dims = Dimension::parse_list("account,day").unwrap();
        let now = Utc::now();
        let _ = report::build(&totals, &book, &Names::default(), ZONE, (now, now), dims);
    }
}
