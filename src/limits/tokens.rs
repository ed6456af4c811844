//! Tokens per minute per key, by reservation and settlement: admission takes the worst case
//! (estimated prompt + `max_tokens`) from the key's bucket, and the end of the request gives
//! back what was not used (or takes what was used beyond it). The bucket refills
//! continuously at `tpm` per minute, in integer nano-tokens.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};

const NANO: i128 = 1_000_000_000;

struct Bucket<I> {
    tpm: u64,
    /// Available nano-tokens; negative after a request used more than it reserved.
    level: i128,
    at: I,
}

impl<I: Reference> Bucket<I> {
    fn full(&self) -> i128 {
        i128::from(self.tpm) * NANO
    }

    fn refill(&mut self, now: I) {
        let elapsed = Duration::from(now.duration_since(self.at)).as_nanos() as i128;
        self.level = (self.level + elapsed * i128::from(self.tpm) / 60).min(self.full());
        self.at = now;
    }

    /// Nanoseconds until the level reaches `target` nano-tokens.
    fn time_to(&self, target: i128) -> Duration {
        let missing = (target - self.level).max(0);
        let nanos = missing * 60 / i128::from(self.tpm.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn quota(&self, retry_after: Option<Duration>) -> TokenQuota {
        TokenQuota {
            limit: self.tpm,
            remaining: (self.level.max(0) / NANO) as u64,
            reset: self.time_to(self.full()),
            retry_after,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenQuota {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
    pub retry_after: Option<Duration>,
}

pub struct TokenLimits<C: Clock = DefaultClock> {
    clock: C,
    /// Key id → bucket. Held only for arithmetic, never across I/O.
    buckets: Mutex<HashMap<i64, Bucket<C::Instant>>>,
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
        TokenLimits {
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn with_bucket<T>(
        &self,
        key_id: i64,
        tpm: u64,
        f: impl FnOnce(&mut Bucket<C::Instant>) -> T,
    ) -> T {
        let now = self.clock.now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(key_id).or_insert_with(|| Bucket {
            tpm,
            level: i128::from(tpm) * NANO,
            at: now,
        });
        if bucket.tpm != tpm {
            // New limit: keep what was used, against the new capacity.
            let used = bucket.full() - bucket.level;
            bucket.tpm = tpm;
            bucket.level = bucket.full() - used;
        }
        bucket.refill(now);
        f(bucket)
    }

    /// Reserves `tokens`; refused (with the wait) if the bucket does not hold them. A request
    /// larger than the whole minute's allowance passes only when the bucket is full.
    pub fn reserve(&self, key_id: i64, tpm: u64, tokens: u64) -> TokenQuota {
        self.with_bucket(key_id, tpm, |b| {
            let need = i128::from(tokens) * NANO;
            if b.level >= need || b.level == b.full() {
                b.level -= need;
                b.quota(None)
            } else {
                let wait = b.time_to(need.min(b.full()));
                b.quota(Some(wait.max(Duration::from_millis(1))))
            }
        })
    }

    /// Settles a reservation with the tokens actually used.
    pub fn settle(&self, key_id: i64, tpm: u64, reserved: u64, used: u64) {
        self.with_bucket(key_id, tpm, |b| {
            b.level = (b.level + (i128::from(reserved) - i128::from(used)) * NANO).min(b.full());
        });
    }

    pub fn peek(&self, key_id: i64, tpm: u64) -> TokenQuota {
        self.with_bucket(key_id, tpm, |b| b.quota(None))
    }

    /// Drops full buckets: a fresh one is the same.
    pub fn sweep(&self) {
        let now = self.clock.now();
        self.buckets.lock().retain(|_, b| {
            b.refill(now);
            b.level < b.full()
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
