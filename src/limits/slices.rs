//! A replica's slices of keys' request allowances in Redis. Instead of one Redis round trip
//! per request, a replica takes several requests of a key's rpm at once (as many as the
//! key's GCRA holds, up to the slice size) and admits from that lease in memory. Every
//! request admitted was counted in Redis first, so a key never passes its limit; a lease
//! not used up within `LEASE_FOR` is dropped, and what it held stays counted (the key loses
//! at most one slice per replica, which the allowance earns back in under a second). A
//! refusal is remembered until its `retry_after` (the allowance cannot come back sooner),
//! so hammering a limited key costs no round trip. Keys with a token limit do not take
//! slices: their reservations are counted per request.

use foldhash::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::RequestQuota;
use super::redis::{RedisCounts, Unavailable};

/// The longest a replica keeps what it took.
const LEASE_FOR: Duration = Duration::from_secs(1);

/// The requests one slice may take: a sixtieth of the key's rpm shared among the live
/// replicas (what each would admit in a second at the full rate), from 1 (a key with a
/// small limit is counted exactly, request by request) to `most`.
pub fn slice_size(rpm: u32, replicas: u32, most: u32) -> u32 {
    (rpm / replicas.max(1) / 60).clamp(1, most.max(1))
}

#[derive(Default)]
pub struct Slices {
    /// Key lineage → its lease. The outer lock is held for a map lookup only; the lease's
    /// own lock is held across the round trip that refills it, so a key's requests on this
    /// replica wait for one refill instead of each making its own.
    leases: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<Lease>>>>,
}

#[derive(Default)]
struct Lease {
    rpm: u32,
    /// Requests taken and not yet admitted.
    left: u32,
    /// Redis's view when they were taken: remaining after the slice, and until full.
    remaining: u32,
    reset: Duration,
    taken_at: Option<Instant>,
    /// Refused by Redis: nothing passes before then.
    refused_until: Option<Instant>,
}

impl Lease {
    fn quota(&self, now: Instant) -> RequestQuota {
        let since = self.taken_at.map_or(Duration::ZERO, |t| now - t);
        RequestQuota {
            limit: self.rpm,
            remaining: self.remaining.saturating_add(self.left),
            reset: self.reset.saturating_sub(since),
            retry_after: None,
        }
    }

    fn live(&self, rpm: u32, now: Instant) -> bool {
        self.rpm == rpm && self.taken_at.is_some_and(|t| now - t < LEASE_FOR)
    }
}

impl Slices {
    /// Admits one request of key `id` against `rpm`: from this replica's lease, else from a
    /// new slice of up to `size` requests taken in Redis.
    pub async fn admit(
        &self,
        redis: &RedisCounts,
        id: i64,
        rpm: u32,
        size: u32,
    ) -> Result<RequestQuota, Unavailable> {
        let rpm = rpm.max(1);
        let lease = self.leases.lock().entry(id).or_default().clone();
        let mut lease = lease.lock().await;
        let now = Instant::now();
        if lease.rpm == rpm
            && let Some(until) = lease.refused_until.filter(|u| *u > now)
        {
            return Ok(RequestQuota {
                limit: rpm,
                remaining: 0,
                reset: lease.reset,
                retry_after: Some(until - now),
            });
        }
        if lease.left > 0 && lease.live(rpm, now) {
            lease.left -= 1;
            return Ok(lease.quota(now));
        }
        let (taken, quota) = redis.take(id, rpm, size).await?;
        let now = Instant::now();
        *lease = Lease {
            rpm,
            left: taken.saturating_sub(1),
            remaining: quota.remaining,
            reset: quota.reset,
            taken_at: Some(now),
            refused_until: quota.retry_after.map(|wait| now + wait),
        };
        Ok(match quota.retry_after {
            Some(_) => quota,
            None => lease.quota(now),
        })
    }

    /// Forgets leases that ended and refusals that passed (none is in use).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.leases.lock().retain(|_, lease| {
            Arc::strong_count(lease) > 1
                || lease.try_lock().map_or(true, |l| {
                    l.live(l.rpm, now) || l.refused_until.is_some_and(|u| u > now)
                })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_is_a_second_of_the_key_s_share_and_one_for_small_limits() {
        assert_eq!(slice_size(10, 3, 100), 1);
        assert_eq!(slice_size(600, 3, 100), 3);
        assert_eq!(slice_size(6_000, 2, 100), 50);
        assert_eq!(slice_size(1_000_000_000, 2, 100), 100);
        assert_eq!(slice_size(1_000_000_000, 2, 1), 1);
        assert_eq!(slice_size(1_000_000_000, 0, 0), 1);
    }
}
