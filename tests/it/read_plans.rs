//! Reads that must not grow with history: the query plans SQLite chooses for them use an
//! index to find and order their rows, never a full scan of `usage_records` or a sort of
//! an account's whole history (`EXPLAIN QUERY PLAN`); sums read only their period's rows. And keyset pages of records that
//! started in the same millisecond neither skip nor repeat one.

use crate::helpers;

use chrono::{TimeZone, Utc};
use tollgate::store::{self, usage::UsageFilter};

fn full_scan_or_sort(plan: &[String]) -> bool {
    plan.iter().any(|line| {
        line.contains("TEMP B-TREE")
            || (line.starts_with("SCAN usage_records") && !line.contains("INDEX"))
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
        let plan = store::usage::plan_of_list(&b.db, filter, 100)
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
        let plan = store::usage::plan_of_list(&b.db, &filter, 100)
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
        let plan = store::rollups::plan_of_totals(&b.db, scope, by)
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
        // Part hours: the records, through an index on the period.
        assert!(
            plan.iter()
                .any(|l| l.starts_with("SEARCH r USING") && l.contains("started_at>?")),
            "{scope:?}: {plan:?}"
        );
        // Grouping the period's rows needs a B-tree of its groups; scanning a table does
        // not happen.
        assert!(!plan.iter().any(|l| l.starts_with("SCAN")), "{plan:?}");
    }
}
