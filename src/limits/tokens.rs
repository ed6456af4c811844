//! Tokens per minute per key, counted in this process: each key's bucket (`bucket`) kept
//! in memory, on the clock of this process. Admission reserves the worst case (estimated
//! prompt + `max_tokens`); the end of the request gives back what was not used (or takes
//! what was used beyond it). Full buckets are swept: a key without one is the same.

use foldhash::{HashMap, HashMapExt};
use std::time::Duration;

use parking_lot::Mutex;

use governor::clock::{Clock, DefaultClock, Reference};

use super::bucket::{self, Bucket};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenQuota {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
    pub retry_after: Option<Duration>,
}

impl TokenQuota {
    /// The quota `reserved` (a verdict of `bucket::reserve`) says for `tpm`.
    pub fn of(tpm: u64, reserved: bucket::Reserved) -> TokenQuota {
        let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
        TokenQuota {
            limit: tpm,
            remaining: reserved.remaining.max(0) as u64,
            reset: micros(reserved.reset_us),
            retry_after: (!reserved.passed).then(|| micros(reserved.retry_us)),
        }
    }
}

pub struct TokenLimits<C: Clock = DefaultClock> {
    clock: C,
    start: C::Instant,
    /// Key id → bucket. Held only for arithmetic, never across I/O.
    buckets: Mutex<HashMap<i64, Bucket>>,
}

impl TokenLimits<DefaultClock> {
    pub fn new() -> Self {
        TokenLimits::with_clock(DefaultClock::default())
    }
}

impl Default for TokenLimits<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> TokenLimits<C> {
    pub fn with_clock(clock: C) -> Self {
        let start = clock.now();
        TokenLimits {
            clock,
            start,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// µs since this store began, on its clock.
    fn now(&self) -> i64 {
        let elapsed = Duration::from(self.clock.now().duration_since(self.start));
        i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
    }

    /// Reserves `tokens`; refused (with the wait) if the bucket does not hold them. A request
    /// larger than the whole minute's allowance passes only when the bucket is full.
    pub fn reserve(&self, key_id: i64, tpm: u64, tokens: u64) -> TokenQuota {
        self.count(key_id, tpm, tokens, false)
    }

    /// Settles a reservation with the tokens actually used.
    pub fn settle(&self, key_id: i64, tpm: u64, reserved: u64, used: u64) {
        let now = self.now();
        let mut buckets = self.buckets.lock();
        let kept = bucket::settle(buckets.get(&key_id).copied(), now, tpm, reserved, used);
        buckets.insert(key_id, kept);
    }

    pub fn peek(&self, key_id: i64, tpm: u64) -> TokenQuota {
        self.count(key_id, tpm, 0, true)
    }

    fn count(&self, key_id: i64, tpm: u64, tokens: u64, look: bool) -> TokenQuota {
        let now = self.now();
        let mut buckets = self.buckets.lock();
        let (reserved, kept) =
            bucket::reserve(buckets.get(&key_id).copied(), now, tpm, tokens, look);
        if let Some(kept) = kept {
            buckets.insert(key_id, kept);
        }
        TokenQuota::of(tpm, reserved)
    }

    /// Drops full buckets: a fresh one is the same.
    pub fn sweep(&self) {
        let now = self.now();
        self.buckets.lock().retain(|_, b| {
            let (quota, _) = bucket::reserve(Some(*b), now, b.tpm as u64, 0, true);
            quota.reset_us > 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn reservations_are_refused_beyond_the_allowance_and_settled_back() {
        let clock = FakeRelativeClock::default();
        let limits = TokenLimits::with_clock(clock.clone());
        assert_eq!(limits.reserve(1, 1000, 600).remaining, 400);
        let refused = limits.reserve(1, 1000, 600);
        // 200 more tokens needed at 1000/min: 12 s.
        assert_eq!(refused.retry_after, Some(Duration::from_secs(12)));
        limits.settle(1, 1000, 600, 100); // used only 100: 500 come back
        assert_eq!(limits.peek(1, 1000).remaining, 900);
        assert!(limits.reserve(1, 1000, 600).retry_after.is_none());
        clock.advance(Duration::from_secs(60));
        assert_eq!(limits.peek(1, 1000).remaining, 1000);
        limits.sweep();
        assert!(limits.buckets.lock().is_empty(), "a full bucket is swept");
    }

    #[test]
    fn usage_beyond_the_reservation_is_charged() {
        let limits = TokenLimits::with_clock(FakeRelativeClock::default());
        limits.reserve(1, 1000, 100);
        limits.settle(1, 1000, 100, 1500);
        assert_eq!(limits.peek(1, 1000).remaining, 0);
        assert!(limits.reserve(1, 1000, 1).retry_after.is_some());
    }
}
