//! Usage listings narrowed by model, chip, status or deployment (found through the
//! rollups, day by day and hour by hour) page through exactly the records an unnarrowed
//! listing holds that match, in the same order, keyset page after page, on the ledger
//! under test, with and without daily rollups, and stop at once when nothing matches.

use crate::helpers;

use chrono::{Duration, TimeZone, Utc};
use tollgate::store::listing::{self, UsageFilter};
use tollgate::store::usage::StoredRecord;
use tollgate::store::{self, rollups};

/// Every page of `filter`, `limit` at a time, through `next_cursor` as the API pages.
async fn pages(db: &store::Db, filter: &UsageFilter, limit: i64) -> Vec<StoredRecord> {
    let mut filter = filter.clone();
    let mut seen = Vec::new();
    loop {
        let (page, next) = tollgate::domain::usage::page(db, &filter, limit)
            .await
            .unwrap();
        seen.extend(page);
        let Some(next) = next else { return seen };
        filter.before = Some(tollgate::domain::usage::parse_cursor(&next).unwrap());
    }
}

#[tokio::test]
async fn narrowed_listings_page_through_exactly_the_matching_records() {
    for daily in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let b = helpers::bare_ledger(&dir).await;
        if daily {
            rollups::keep_days_in(&b.db, chrono_tz::Asia::Kolkata)
                .await
                .unwrap();
        }
        let version = helpers::simple_price(&b.db).await;
        let beta = store::accounts::create(&b.db, "beta").await.unwrap();
        let beta_key = helpers::insert_key(&b.db, beta.id).await;
        let start = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        let records: Vec<_> = (0..3000i64)
            .map(|i| {
                // Bursts with gaps of days, and some records in one millisecond.
                let at = start + Duration::minutes((i / 3) * 7 + (i / 500) * 2000);
                let owner = if i % 4 == 0 {
                    (beta.id, beta_key)
                } else {
                    (b.account.id, b.key_id)
                };
                let mut r =
                    helpers::simple_record(format!("req_list_{i:05}"), owner, version.id, at);
                r.model = ["m", "n", "o"][(i % 3) as usize].into();
                r.chip = if i % 5 == 0 { "d".into() } else { "c".into() };
                r.deployment = (i % 11 == 0).then(|| "mif-a".to_string());
                if i % 13 == 0 {
                    r.endpoint = "embeddings".into();
                }
                if i % 97 == 0 {
                    r.status = tollgate::billing::record::Status::UpstreamError;
                }
                r
            })
            .collect();
        let sink = store::Sink::open(&b.database).await.unwrap();
        sink.insert(&records.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        let all = listing::list(&b.db, &UsageFilter::default(), 10_000)
            .await
            .unwrap();
        assert_eq!(all.len(), 3000);
        let narrowed = [
            UsageFilter {
                model: Some("n".into()),
                ..Default::default()
            },
            UsageFilter {
                status: Some("upstream_error".into()),
                ..Default::default()
            },
            UsageFilter {
                account_id: Some(b.account.id),
                chip: Some("d".into()),
                ..Default::default()
            },
            UsageFilter {
                deployment: Some("mif-a".into()),
                ..Default::default()
            },
            UsageFilter {
                key_id: Some(beta_key),
                status: Some("upstream_error".into()),
                ..Default::default()
            },
            UsageFilter {
                model: Some("o".into()),
                from_ms: Some((start + Duration::days(3)).timestamp_millis()),
                to_ms: Some((start + Duration::days(9)).timestamp_millis() + 1234),
                ..Default::default()
            },
            UsageFilter {
                model: Some("no-such-model".into()),
                ..Default::default()
            },
            UsageFilter {
                account_id: Some(b.account.id),
                endpoint: Some("embeddings".into()),
                ..Default::default()
            },
        ];
        for filter in &narrowed {
            let expected: Vec<&str> = all
                .iter()
                .filter(|r| {
                    filter.account_id.is_none_or(|a| r.account_id == a)
                        && filter.key_id.is_none_or(|k| r.key_id == k)
                        && filter.model.as_ref().is_none_or(|m| &r.model == m)
                        && filter.chip.as_ref().is_none_or(|c| &r.chip == c)
                        && filter.status.as_ref().is_none_or(|s| &r.status == s)
                        && filter
                            .deployment
                            .as_ref()
                            .is_none_or(|d| r.deployment.as_ref() == Some(d))
                        && filter.endpoint.as_ref().is_none_or(|e| &r.endpoint == e)
                        && filter.from_ms.is_none_or(|f| r.started_at >= f)
                        && filter.to_ms.is_none_or(|t| r.started_at < t)
                })
                .map(|r| r.request_id.as_str())
                .collect();
            for limit in [1, 37, 1000] {
                let listed = pages(&b.db, filter, limit).await;
                let listed: Vec<&str> = listed.iter().map(|r| r.request_id.as_str()).collect();
                assert_eq!(
                    listed, expected,
                    "daily {daily}, {filter:?}, pages of {limit}"
                );
            }
        }
    }
}
