//! The rollups are exact: after random batches of records (replays among them) shipped
//! through the ledger writer's own sink, on the ledger under test, with the billing time
//! zone of the daily rollups changed midway, every hourly and daily rollup is what its
//! records sum to (`ledger verify` finds nothing), and the sums read for any period, cut
//! at any bucket edges, by any scope, are what the records in it sum to.

use crate::helpers;

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use tollgate::billing::record::{Status, UsageRecord};
use tollgate::store::{self, rollups};

const HOUR: i64 = 3_600_000;
const QUARTER: i64 = 900_000;
/// Zones whose days start on the hour (UTC, Shanghai, New York) or on the half hour.
const ZONES: [chrono_tz::Tz; 4] = [
    chrono_tz::UTC,
    chrono_tz::Asia::Shanghai,
    chrono_tz::America::New_York,
    chrono_tz::Asia::Kolkata,
];

/// The records span 2026-11-29T20:00Z and the 54 hours after: a few days of any zone.
fn base() -> i64 {
    Utc.with_ymd_and_hms(2026, 11, 29, 20, 0, 0)
        .unwrap()
        .timestamp_millis()
}

/// What a record varies in.
#[derive(Debug, Clone)]
struct Shape {
    owner: usize,
    model: usize,
    deployment: bool,
    embeddings: bool,
    /// Not a rollup's dimension: records apart in it alone sum into one group.
    stream: bool,
    status: usize,
    prompt: u64,
    completion: u64,
    offset_ms: i64,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        0..3usize,
        0..2usize,
        any::<bool>(),
        (any::<bool>(), any::<bool>()),
        0..3usize,
        0..5000u64,
        0..500u64,
        0..54 * HOUR,
    )
        .prop_map(
            |(
                owner,
                model,
                deployment,
                (embeddings, stream),
                status,
                prompt,
                completion,
                offset_ms,
            )| Shape {
                owner,
                model,
                deployment,
                embeddings,
                stream,
                status,
                prompt,
                completion,
                offset_ms,
            },
        )
}

/// A period to read: its bounds (any millisecond) and bucket edges (on quarter hours, as
/// every zone's are).
fn period() -> impl Strategy<Value = (i64, i64, Vec<i64>)> {
    (
        0..56 * HOUR,
        0..56 * HOUR,
        any::<bool>(),
        prop::collection::vec(0..216i64, 0..4),
    )
        .prop_map(|(a, b, on_the_hour, quarters)| {
            // Half the periods start and end on the hour, as months and days mostly do.
            let at = |x: i64| {
                let t = base() - HOUR / 2 + x;
                if on_the_hour {
                    t - t.rem_euclid(HOUR)
                } else {
                    t
                }
            };
            let end = if on_the_hour { HOUR } else { 1 };
            let (from, to) = (at(a.min(b)), at(a.max(b)) + end);
            let edges = quarters.iter().map(|q| base() + q * QUARTER).collect();
            (from, to, edges)
        })
}

/// Sums per (account, lineage, model, bucket index): requests, ok requests, prompt and
/// completion tokens.
type Sums = BTreeMap<(i64, i64, String, usize), [i64; 4]>;

fn bucket_of(at: i64, edges: &[i64]) -> usize {
    edges.iter().filter(|&&e| e <= at).count()
}

async fn check(
    shapes: Vec<Shape>,
    batches: Vec<Vec<usize>>,
    periods: Vec<(i64, i64, Vec<i64>)>,
    zones: (usize, usize),
) {
    let dir = tempfile::tempdir().unwrap();
    let b = helpers::bare_ledger(&dir).await;
    let version = helpers::simple_price(&b.db).await;
    let beta = store::accounts::create(&b.db, "beta").await.unwrap();
    let beta_key = helpers::insert_key(&b.db, beta.id).await;
    // A successor of acme's key: its records roll up into the first key's lineage.
    let secret = tollgate::auth::ApiKey::generate();
    let successor = store::keys::rotate(
        &b.db,
        b.key_id,
        store::keys::NewKey {
            account_id: b.account.id,
            name: "rotated",
            prefix: secret.prefix(),
            secret_hash: &secret.hash(),
            expires_at: None,
            limits: Default::default(),
        },
        Utc::now(),
    )
    .await
    .unwrap();
    // (account, key, lineage) of each owner.
    let owners = [
        (b.account.id, b.key_id, b.key_id),
        (b.account.id, successor.id, b.key_id),
        (beta.id, beta_key, beta_key),
    ];
    let records: Vec<UsageRecord> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (account, key, _) = owners[s.owner];
            let at = store::from_ms(base() + s.offset_ms);
            let mut r =
                helpers::simple_record(format!("req_roll_{i}"), (account, key), version.id, at);
            r.model = ["m", "n"][s.model].into();
            r.deployment = s.deployment.then(|| "mif-a".to_string());
            r.endpoint = if s.embeddings { "embeddings" } else { "chat" }.into();
            r.stream = s.stream;
            r.status = [Status::Ok, Status::Partial, Status::UpstreamError][s.status];
            r.tokens.prompt = s.prompt;
            r.tokens.completion = s.completion;
            r
        })
        .collect();
    // Each batch is shipped as the writer ships, some records again (a replay).
    let sink = store::Sink::open(&b.database).await.unwrap();
    let mut stored = vec![false; records.len()];
    let (zone, later) = (ZONES[zones.0], ZONES[zones.1]);
    rollups::keep_days_in(&b.db, zone).await.unwrap();
    for (n, batch) in batches.iter().enumerate() {
        if n == batches.len() / 2 {
            // The operator changes the billing zone: the daily sums are made again.
            rollups::keep_days_in(&b.db, later).await.unwrap();
        }
        let mut picked: Vec<usize> = batch.iter().map(|i| i % records.len()).collect();
        picked.sort_unstable();
        picked.dedup();
        let batch: Vec<&UsageRecord> = picked.iter().map(|&i| &records[i]).collect();
        sink.insert(&batch).await.unwrap();
        for i in picked {
            stored[i] = true;
        }
    }
    let kept: Vec<(&UsageRecord, i64)> = records
        .iter()
        .zip(&shapes)
        .zip(&stored)
        .filter(|(_, stored)| **stored)
        .map(|((r, s), _)| (r, owners[s.owner].2))
        .collect();
    assert_eq!(
        store::usage::count(&b.db).await.unwrap(),
        kept.len() as i64,
        "replays stored nothing twice"
    );

    let verified = tollgate::domain::audit::verify(&b.db).await.unwrap();
    assert_eq!(verified.found(), 0, "{verified:?}");

    for (from, to, mut edges) in periods {
        edges.sort_unstable();
        edges.dedup();
        let scopes = [
            rollups::Scope::All,
            rollups::Scope::Account(b.account.id),
            rollups::Scope::Lineage(b.key_id),
            rollups::Scope::Lineage(beta_key),
        ];
        for scope in scopes {
            let mut expected = Sums::new();
            for &(r, lineage) in &kept {
                let at = r.started_at.timestamp_millis();
                let inside = match scope {
                    rollups::Scope::All => true,
                    rollups::Scope::Account(id) => r.account_id == id,
                    rollups::Scope::Lineage(id) => lineage == id,
                };
                if !inside || at < from || at >= to {
                    continue;
                }
                let group = (
                    r.account_id,
                    lineage,
                    r.model.clone(),
                    bucket_of(at, &edges),
                );
                let sums = expected.entry(group).or_default();
                sums[0] += 1;
                sums[1] += i64::from(r.status == Status::Ok);
                sums[2] += r.tokens.prompt as i64;
                sums[3] += r.tokens.completion as i64;
            }
            // Read with the days of the zone the ledger keeps, and of another (whose days
            // it does not keep: hours then).
            let mut read = Sums::new();
            let mut reads = 0;
            for zone in [later, zone] {
                let by = rollups::By {
                    account: true,
                    key: true,
                    slots: Some(&edges),
                    zone: Some(zone),
                };
                let totals = rollups::totals(&b.db, scope, from, to, by).await.unwrap();
                reads += 1;
                for t in &totals {
                    let slot = t.slot_ms.expect("grouped by slot");
                    let group = (
                        t.account_id,
                        t.lineage_id,
                        t.model.clone(),
                        bucket_of(slot, &edges),
                    );
                    let sums = read.entry(group).or_default();
                    sums[0] += t.requests;
                    sums[1] += t.ok_requests;
                    sums[2] += t.prompt_tokens;
                    sums[3] += t.completion_tokens;
                }
            }
            let expected: Sums = expected
                .into_iter()
                .map(|(group, sums)| (group, sums.map(|s| s * reads)))
                .collect();
            assert_eq!(
                read, expected,
                "{scope:?} over [{from}, {to}) cut at {edges:?}"
            );
            // Without slots or ids: the same sums in fewer rows.
            let by = rollups::By {
                zone: Some(later),
                ..Default::default()
            };
            let flat = rollups::totals(&b.db, scope, from, to, by).await.unwrap();
            let requests: i64 = flat.iter().map(|t| t.requests).sum();
            assert_eq!(
                requests * reads,
                expected.values().map(|s| s[0]).sum::<i64>()
            );
            assert!(
                flat.iter()
                    .all(|t| t.slot_ms.is_none() && t.lineage_id == 0)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rollups_are_what_their_records_sum_to_whatever_the_batches_and_periods(
        shapes in prop::collection::vec(shape(), 1..60),
        batches in prop::collection::vec(prop::collection::vec(0..60usize, 1..25), 1..6),
        periods in prop::collection::vec(period(), 1..4),
        zones in (0..ZONES.len(), 0..ZONES.len()),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check(shapes, batches, periods, zones));
    }
}
