//! Limits shared by replicas: counted in Redis (`redis`; keys without a token limit in
//! slices, `slices`), with this process's own counts (`local`) as the fallback while Redis
//! does not answer: each replica then counts its share of every limit, or admits
//! everything, or refuses (`redis.fallback`). Right after Redis answers again (it may have
//! come back empty) this replica's own count must admit too, for one window.

use std::sync::Arc;
use std::time::Duration;

use super::Counted;
use super::local::LocalCounts;
use super::redis::RedisCounts;
use super::slices::{Slices, slice_size};
use super::windows::{Counts, Verdict, Window};
use crate::config::{RedisConfig, RedisFallback};
use crate::error::Error;

/// How long after Redis answers again this replica's own count must admit too: one window
/// of the per-minute limits.
const RECOVERY_WINDOW: Duration = Duration::from_secs(60);

pub struct Shared {
    redis: Arc<RedisCounts>,
    /// This replica's slices of keys' allowances in Redis, and the most one may take.
    slices: Slices,
    slice_max: u32,
    fallback: RedisFallback,
}

impl Shared {
    pub fn new(config: &RedisConfig, errors: prometheus::IntCounter) -> anyhow::Result<Shared> {
        Ok(Shared {
            redis: Arc::new(RedisCounts::new(config, errors)?),
            slices: Slices::default(),
            slice_max: config.slice_max,
            fallback: config.fallback,
        })
    }

    /// Whether the fallback counts now (Redis not answering).
    pub fn in_fallback(&self) -> bool {
        !self.redis.is_up()
    }

    /// Counts a request of key lineage `id` in Redis if it answers; else in `local`, at this
    /// replica's `share` of the limits (one of that many replicas alive). Whether it was
    /// counted in Redis comes with the count.
    #[allow(clippy::too_many_arguments)]
    pub async fn count(
        &self,
        local: &LocalCounts,
        share: u32,
        id: i64,
        rpm: u32,
        tpm: Option<u64>,
        reserve: u64,
        look: bool,
    ) -> Result<(Counted, bool), Error> {
        let redis = &self.redis;
        // Redis may have come back empty: for a window after it answers again, this
        // replica's own count (which the fallback kept) must admit first, at its share
        // rounded up, so the window across the outage stays near the limit instead of
        // granting a second full one (the bound is in the README). Asked first, so that
        // what it refuses takes nothing from the other replicas in Redis.
        if !look && redis.recovering(RECOVERY_WINDOW) {
            let own = local.admit(id, rpm.div_ceil(share).max(1), None, 0);
            if own.requests.retry_after.is_some() {
                return Ok((own, false));
            }
        }
        let counted = match (tpm, look) {
            (None, false) => {
                let size = slice_size(rpm, share, self.slice_max);
                let requests = self.slices.admit(redis, id, rpm, size).await;
                requests.map(|requests| Counted {
                    requests,
                    tokens: None,
                })
            }
            _ => redis.admit(id, rpm, tpm, reserve, look).await,
        };
        if let Ok(counted) = counted {
            return Ok((counted, true));
        }
        let rpm = (rpm / share).max(1);
        let tpm = tpm.map(|t| (t / u64::from(share)).max(1));
        match (self.fallback, look) {
            (RedisFallback::Local, false) => Ok((local.admit(id, rpm, tpm, reserve), false)),
            (_, true) => Ok((local.peek(id, rpm, tpm), false)),
            (RedisFallback::Open, false) => Ok((local.peek(id, rpm, tpm), false)),
            (RedisFallback::Closed, false) => Err(Error::Unavailable(
                "rate limits cannot be checked now; retry shortly".into(),
            )),
        }
    }

    /// Counts a request to backend `name` (its own `rpm`) in Redis: `None` when Redis
    /// does not answer (the caller counts in this process).
    pub async fn admit_backend(&self, name: &str, rpm: u32) -> Option<Result<(), Duration>> {
        let quota = self.redis.admit_backend(name, rpm).await.ok()?;
        Some(quota.retry_after.map_or(Ok(()), Err))
    }

    /// Gives back (or takes) a reservation's difference in Redis, in the background (the
    /// response does not wait). Lost if Redis went away meanwhile: the reservation then
    /// stands until the bucket refills, which errs on the side of the limit.
    pub fn settle(&self, id: i64, tpm: u64, reserved: u64, used: u64) {
        let redis = self.redis.clone();
        tokio::spawn(async move { redis.settle(id, tpm, reserved, used).await });
    }

    pub fn sweep(&self) {
        self.slices.sweep();
    }

    /// What a request gets while Redis does not answer.
    pub fn fallback(&self) -> RedisFallback {
        self.fallback
    }

    pub fn quota_keys(&self, holder: &str, plan: &str, windows: &[Window]) -> Vec<String> {
        self.redis.quota_keys(holder, plan, windows)
    }

    /// Counts one request in quota windows in Redis (`RedisCounts::quotas`): `None` when
    /// Redis does not answer, `Some(None)` when a window needs its seeds.
    pub async fn quotas(
        &self,
        keys: &[String],
        windows: &[Window],
        seeds: Option<&[Counts]>,
        look: bool,
    ) -> Option<Option<(bool, Vec<Verdict>)>> {
        self.redis.quotas(keys, windows, seeds, look).await.ok()
    }

    /// Counts tokens spent in quota windows in Redis, in the background.
    pub fn spend(&self, keys: Vec<String>, windows: Vec<Window>, tokens: u64) {
        let redis = self.redis.clone();
        tokio::spawn(async move { redis.spend(&keys, &windows, tokens).await });
    }
}
