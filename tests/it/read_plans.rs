//! Reads that must not grow with history: the query plans SQLite chooses for them use an
//! index to find and order their rows, never a full scan of the records (`usage_rows`, behind
//! SQLite's `usage_records` view) or a sort of
//! an account's whole history (`EXPLAIN QUERY PLAN`); sums read only their period's rows. And keyset pages of records that
//! started in the same millisecond neither skip nor repeat one.

use crate::helpers;

use chrono::{TimeZone, Utc};
use tollgate::store::{self, listing::UsageFilter};

fn full_scan_or_sort(plan: &[String]) -> bool {
    plan.iter().any(|line| {
        line.contains("TEMP B-TREE")
            || (line.starts_with("SCAN usage_rows") && !line.contains("INDEX"))
    })
}

#[tokio::test]
async fn record_listings_walk_an_index_and_never_sort_the_history() {
    if helpers::ledger::is_postgres() {
        println!("SQLite's plans; PostgreSQL's depend on its statistics");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    let listings = [
        UsageFilter::default(),
        UsageFilter {
            account_id: Some(b.account.id),
            ..Default::default()
        },
        UsageFilter {
            key_id: Some(b.key_id),
            ..Default::default()
        },
        UsageFilter {
            account_id: Some(b.account.id),
            model: Some("m".into()),
            status: Some("ok".into()),
            ..Default::default()
        },
        UsageFilter {
            account_id: Some(b.account.id),
            from_ms: Some(0),
            to_ms: Some(i64::MAX),
            ..Default::default()
        },
        UsageFilter {
            before: Some((1_796_000_000_000, 42)),
            ..Default::default()
        },
        UsageFilter {
            from_ms: Some(0),
            to_ms: Some(1),
            ..Default::default()
        },
    ];
    for filter in &listings {
        let plan = store::listing::plan_of_list(&b.db, filter, 100)
            .await
            .unwrap();
        assert!(!plan.is_empty());
        assert!(!full_scan_or_sort(&plan), "{filter:?}: {plan:?}");
    }
    // A later page seeks to its cursor: it does not walk the pages before it again.
    for scope in [
        UsageFilter {
            account_id: Some(b.account.id),
            ..Default::default()
        },
        UsageFilter::default(),
    ] {
        let filter = UsageFilter {
            before: Some((1_796_000_000_000, 42)),
            ..scope
        };
        let plan = store::listing::plan_of_list(&b.db, &filter, 100)
            .await
            .unwrap();
        assert!(plan.iter().any(|l| l.contains("started_at<?")), "{plan:?}");
    }
}

#[tokio::test]
async fn keyset_pages_of_records_in_the_same_millisecond_skip_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    let at = Utc.with_ymd_and_hms(2026, 11, 5, 8, 0, 0).unwrap();
    // 25 records, in 3 distinct milliseconds, through the writer's own insert.
    let started = |n: usize| at + chrono::Duration::milliseconds((n % 3) as i64);
    let records = helpers::synthetic_records(&b, 25, started).await;
    let mut seen = Vec::new();
    let mut filter = UsageFilter {
        account_id: Some(b.account.id),
        ..Default::default()
    };
    loop {
        let (page, next) = tollgate::domain::usage::page(&b.db, &filter, 4)
            .await
            .unwrap();
        seen.extend(page.iter().map(|r| r.request_id.clone()));
        let Some(next) = next else { break };
        filter.before = Some(tollgate::domain::usage::parse_cursor(&next).unwrap());
    }
    let mut expected: Vec<String> = records.iter().map(|r| r.request_id.clone()).collect();
    let mut sorted = seen.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "every record once");
}

#[tokio::test]
async fn sums_for_reports_invoices_and_a_keys_month_read_rollups_and_only_their_period() {
    if helpers::ledger::is_postgres() {
        println!("SQLite's plans; PostgreSQL's depend on its statistics");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    use store::rollups::{By, Scope};
    let edges = [];
    let reports = By {
        slots: Some(&edges),
        ..Default::default()
    };
    for (scope, by) in [
        (Scope::All, reports),
        (
            Scope::All,
            By {
                account: true,
                key: true,
                slots: Some(&edges),
                zone: None,
            },
        ),
        (Scope::Account(b.account.id), By::default()),
        (Scope::Lineage(b.key_id), By::default()),
    ] {
        let plan = store::rollups::plan_of_totals(&b.db, scope, by, (0, 1))
            .await
            .unwrap();
        // Whole days and hours: the rollups, through an index on the period.
        assert!(
            plan.iter()
                .any(|l| l.starts_with("SEARCH r USING") && l.contains("day>?")),
            "{scope:?}: {plan:?}"
        );
        assert!(
            plan.iter()
                .any(|l| l.starts_with("SEARCH r USING") && l.contains("hour>?")),
            "{scope:?}: {plan:?}"
        );
        // Part hours: the records (the rows behind SQLite's view), through an index on
        // the period.
        assert!(
            plan.iter()
                .any(|l| l.starts_with("SEARCH usage_rows USING") && l.contains("started_at>?")),
            "{scope:?}: {plan:?}"
        );
        // Grouping the period's rows needs a B-tree of its groups; scanning a table does
        // not happen.
        assert!(!plan.iter().any(|l| l.starts_with("SCAN")), "{plan:?}");
    }
}

/// Every read query the code issues, as the ledger under test would run it on a ledger
/// with realistic statistics (`ANALYZE` after 20,000 records of three accounts over 30
/// days): listings walk an index in their order (no full scan of `usage_records`, no sort),
/// and the sums read records only through an index on their (part-hour) period.
#[tokio::test]
async fn every_read_walks_an_index_with_realistic_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    let version = helpers::simple_price(&b.db).await;
    let mut owners = vec![(b.account.id, b.key_id)];
    for name in ["beta", "gamma"] {
        let account = store::accounts::create(&b.db, name).await.unwrap();
        owners.push((account.id, helpers::insert_key(&b.db, account.id).await));
    }
    let start = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
    let records: Vec<_> = (0..20_000)
        .map(|i| {
            let at = start + chrono::Duration::seconds(i * 130);
            let owner = owners[(i % 7 % 3) as usize];
            let mut r = helpers::simple_record(format!("req_plan_{i:06}"), owner, version.id, at);
            r.model = ["m", "n", "o"][(i % 3) as usize].into();
            if i % 50 == 0 {
                r.status = tollgate::billing::record::Status::UpstreamError;
            }
            r
        })
        .collect();
    let sink = store::Sink::open(&b.database).await.unwrap();
    for chunk in records.chunks(5000) {
        sink.insert(&chunk.iter().collect::<Vec<_>>())
            .await
            .unwrap();
    }
    // PostgreSQL: the records went to the default partition (their month had none yet),
    // and move to their month's partition as the hourly upkeep creates it.
    store::partitions::keep_ahead(&b.db, Utc::now())
        .await
        .unwrap();
    helpers::ledger::execute(&b.db, "ANALYZE", &[])
        .await
        .unwrap();
    let postgres = helpers::ledger::is_postgres();
    let scans_records = |plan: &[String]| {
        plan.iter().any(|line| match postgres {
            // (A month's partition that holds nothing yet costs nothing to scan.)
            true => {
                line.contains("Seq Scan on usage_records") && !line.contains("(cost=0.00..0.00 ")
            }
            false => line.starts_with("SCAN usage_rows") && !line.contains("INDEX"),
        })
    };
    let sorts = |plan: &[String]| {
        plan.iter().any(|line| match postgres {
            // A sort node, not the order a Merge Append of the months keeps ("Sort Key").
            true => line.contains("Sort") && !line.trim_start().starts_with("Sort Key"),
            false => line.contains("TEMP B-TREE"),
        })
    };
    let mid = Utc
        .with_ymd_and_hms(2026, 10, 15, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    let listings = [
        UsageFilter::default(),
        UsageFilter {
            account_id: Some(b.account.id),
            ..Default::default()
        },
        UsageFilter {
            key_id: Some(b.key_id),
            ..Default::default()
        },
        UsageFilter {
            model: Some("n".into()),
            ..Default::default()
        },
        UsageFilter {
            account_id: Some(b.account.id),
            status: Some("upstream_error".into()),
            ..Default::default()
        },
        UsageFilter {
            account_id: Some(b.account.id),
            before: Some((mid, 42)),
            ..Default::default()
        },
        UsageFilter {
            from_ms: Some(mid),
            to_ms: Some(mid + 86_400_000),
            ..Default::default()
        },
    ];
    for filter in &listings {
        let plan = store::listing::plan_of_list(&b.db, filter, 100)
            .await
            .unwrap();
        assert!(!plan.is_empty());
        // A listing narrowed by a value no index holds walks one hour at a time (the
        // newest its rollups say holds such records): the planner may sort that hour's
        // few records, never more than the hour's.
        let narrowed = filter.model.is_some() || filter.status.is_some();
        let within_an_hour = |plan: &[String]| {
            plan.iter().any(|line| match postgres {
                true => line.contains("Index Cond") && line.contains("started_at >= "),
                false => line.contains("started_at>? AND started_at<?"),
            })
        };
        assert!(
            !scans_records(&plan) && (!sorts(&plan) || narrowed && within_an_hour(&plan)),
            "{filter:?}: {plan:#?}"
        );
    }
    // An import's batch asks whether its request ids are stored with another start.
    let batch: Vec<(&str, i64)> = records
        .iter()
        .take(10_000)
        .map(|r| (r.request_id.as_str(), r.started_at.timestamp_millis() + 1))
        .collect();
    let plan = store::partitions::plan_of_stored_at_other_times(&b.db, &batch)
        .await
        .unwrap();
    assert!(!scans_records(&plan), "{plan:#?}");
    let clashes = store::partitions::stored_at_other_times(&b.db, &batch[..3])
        .await
        .unwrap();
    if postgres {
        assert_eq!(clashes.len(), 3, "{clashes:?}");
    }
    use store::rollups::{By, Scope};
    let edges = [];
    for scope in [
        Scope::All,
        Scope::Account(b.account.id),
        Scope::Lineage(b.key_id),
    ] {
        for by in [
            By::default(),
            By {
                account: true,
                key: true,
                slots: Some(&edges),
                zone: None,
            },
        ] {
            // The records of a part hour, as a period's ragged end is read.
            let part_hour = (mid + 60_000, mid + 3_600_000);
            let plan = store::rollups::plan_of_totals(&b.db, scope, by, part_hour)
                .await
                .unwrap();
            assert!(!scans_records(&plan), "{scope:?}: {plan:#?}");
        }
    }
}
