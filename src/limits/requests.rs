//! Requests per minute per key, counted in this process: the state of each key's GCRA
//! (`gcra`) kept in memory, on the clock of this process. Keys whose allowance is full
//! again are swept, so memory stays bounded however many keys there are.

use foldhash::{HashMap, HashMapExt};
use std::time::Duration;

use parking_lot::Mutex;

use governor::clock::{Clock, DefaultClock, Reference};

use super::gcra::{self, Gcra};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestQuota {
    pub limit: u32,
    pub remaining: u32,
    /// Until the allowance is full again.
    pub reset: Duration,
    /// `Some` when the request is refused: how long until one would pass.
    pub retry_after: Option<Duration>,
}

impl RequestQuota {
    /// The quota `taken` (a verdict of `gcra::admit`) says for `rpm`.
    pub fn of(rpm: u32, taken: gcra::Taken) -> RequestQuota {
        let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
        RequestQuota {
            limit: rpm.max(1),
            remaining: taken.remaining,
            reset: micros(taken.reset_us),
            retry_after: (taken.taken == 0).then(|| micros(taken.retry_us)),
        }
    }
}

pub struct RequestLimits<C: Clock = DefaultClock> {
    clock: C,
    start: C::Instant,
    /// Key id → its state. A plain mutex: held only for arithmetic, never across I/O.
    states: Mutex<HashMap<i64, Gcra>>,
}

impl RequestLimits<DefaultClock> {
    pub fn new() -> Self {
        RequestLimits::with_clock(DefaultClock::default())
    }
}

impl Default for RequestLimits<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> RequestLimits<C> {
    pub fn with_clock(clock: C) -> Self {
        let start = clock.now();
        RequestLimits {
            clock,
            start,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// µs since this store began, on its clock.
    fn now(&self) -> i64 {
        let elapsed = Duration::from(self.clock.now().duration_since(self.start));
        i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
    }

    /// Counts one request of `key_id` against `rpm` per minute.
    pub fn check(&self, key_id: i64, rpm: u32) -> RequestQuota {
        self.count(key_id, rpm, false)
    }

    /// What `check` would report, without counting a request.
    pub fn peek(&self, key_id: i64, rpm: u32) -> RequestQuota {
        self.count(key_id, rpm, true)
    }

    fn count(&self, key_id: i64, rpm: u32, look: bool) -> RequestQuota {
        let now = self.now();
        let mut states = self.states.lock();
        let (taken, kept) = gcra::admit(states.get(&key_id).copied(), now, rpm, 1, look);
        if let Some(kept) = kept {
            states.insert(key_id, kept);
        }
        RequestQuota::of(rpm, taken)
    }

    /// Forgets keys whose allowance is full again: a key without state is the same.
    pub fn sweep(&self) {
        let now = self.now() as f64;
        self.states.lock().retain(|_, state| state.tat > now);
    }

    pub fn tracked_keys(&self) -> usize {
        self.states.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn exactly_the_quota_passes_per_window_and_retry_after_is_exact() {
        let clock = FakeRelativeClock::default();
        let limits = RequestLimits::with_clock(clock.clone());
        for minute in 0..3 {
            let passed = (0..25)
                .filter(|_| limits.check(1, 10).retry_after.is_none())
                .count();
            assert_eq!(passed, 10, "minute {minute}");
            let refused = limits.check(1, 10);
            assert_eq!(
                refused.retry_after,
                Some(Duration::from_secs(6)),
                "one request every 6 s"
            );
            clock.advance(MINUTE);
        }
    }

    #[test]
    fn remaining_counts_down_and_peek_does_not_consume() {
        let clock = FakeRelativeClock::default();
        let limits = RequestLimits::with_clock(clock.clone());
        assert_eq!(limits.check(1, 10).remaining, 9);
        assert_eq!(limits.check(1, 10).remaining, 8);
        assert_eq!(limits.peek(1, 10).remaining, 8);
        clock.advance(Duration::from_secs(6));
        assert_eq!(limits.peek(1, 10).remaining, 9);
        assert_eq!(limits.check(1, 10).remaining, 8);
    }

    #[test]
    fn a_changed_quota_applies_at_once() {
        let limits = RequestLimits::with_clock(FakeRelativeClock::default());
        for _ in 0..2 {
            limits.check(1, 2);
        }
        assert!(limits.check(1, 2).retry_after.is_some());
        assert!(limits.check(1, 100).retry_after.is_none());
    }

    #[test]
    fn keys_whose_allowance_is_full_again_are_swept() {
        let clock = FakeRelativeClock::default();
        let limits = RequestLimits::with_clock(clock.clone());
        for key in 0..10_000 {
            limits.check(key, 10);
        }
        assert_eq!(limits.tracked_keys(), 10_000);
        clock.advance(MINUTE);
        limits.sweep();
        assert_eq!(limits.tracked_keys(), 0);
    }
}
