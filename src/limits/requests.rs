//! Requests per minute per key: one GCRA limiter (`governor`) per key, built with the key's
//! own quota and rebuilt when the quota changes. Idle limiters are swept so memory stays
//! bounded however many keys there are.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

const MINUTE: Duration = Duration::from_secs(60);

struct Entry<C: Clock> {
    rpm: u32,
    limiter: Arc<Limiter<C>>,
    /// Last admission result, to answer "how many are left" without consuming one.
    remaining: u32,
    at: C::Instant,
}

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

pub struct RequestLimits<C: Clock = DefaultClock> {
    clock: C,
    /// Key id → its limiter. A plain mutex: held only for a map lookup, never across I/O.
    limiters: Mutex<HashMap<i64, Entry<C>>>,
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

impl<C: Clock + Clone> RequestLimits<C> {
    pub fn with_clock(clock: C) -> Self {
        RequestLimits {
            clock,
            limiters: Mutex::new(HashMap::new()),
        }
    }

    fn period(rpm: u32) -> Duration {
        MINUTE / rpm
    }

    /// Counts one request of `key_id` against `rpm` per minute.
    pub fn check(&self, key_id: i64, rpm: u32) -> RequestQuota {
        let rpm = rpm.max(1);
        let limiter = {
            let mut limiters = self.limiters.lock();
            let entry = limiters.entry(key_id).or_insert_with(|| self.entry(rpm));
            if entry.rpm != rpm {
                // The limit changed: the new one applies from this request on, and what was
                // used in the window so far stays used.
                let used = entry.rpm - self.remaining_now(entry);
                *entry = self.entry(rpm);
                if let Some(used) = NonZeroU32::new(used.min(rpm)) {
                    let _ = entry.limiter.check_n(used);
                    entry.remaining = rpm - used.get();
                }
            }
            entry.limiter.clone()
        };
        let now = self.clock.now();
        let quota = match limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RequestQuota {
                    limit: rpm,
                    remaining,
                    reset: Self::period(rpm) * (rpm - remaining),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(now);
                RequestQuota {
                    limit: rpm,
                    remaining: 0,
                    reset: wait + Self::period(rpm) * (rpm - 1),
                    retry_after: Some(wait),
                }
            }
        };
        if let Some(entry) = self.limiters.lock().get_mut(&key_id) {
            entry.remaining = quota.remaining;
            entry.at = now;
        }
        quota
    }

    /// What `check` would report, without consuming a request.
    pub fn peek(&self, key_id: i64, rpm: u32) -> RequestQuota {
        let rpm = rpm.max(1);
        let limiters = self.limiters.lock();
        let remaining = match limiters.get(&key_id) {
            Some(entry) if entry.rpm == rpm => self.remaining_now(entry),
            _ => rpm,
        };
        RequestQuota {
            limit: rpm,
            remaining,
            reset: Self::period(rpm) * (rpm - remaining),
            retry_after: None,
        }
    }

    /// Forgets limiters idle for a minute: by then they are full again, so nothing is lost.
    pub fn sweep(&self) {
        let now = self.clock.now();
        self.limiters
            .lock()
            .retain(|_, e| Duration::from(now.duration_since(e.at)) < MINUTE);
    }

    pub fn tracked_keys(&self) -> usize {
        self.limiters.lock().len()
    }

    /// Requests left in the window now: what the last check left, plus what came back since.
    fn remaining_now(&self, entry: &Entry<C>) -> u32 {
        let elapsed = Duration::from(self.clock.now().duration_since(entry.at));
        let regained = elapsed.as_nanos() / Self::period(entry.rpm).as_nanos();
        let regained = u32::try_from(regained).unwrap_or(u32::MAX);
        entry.remaining.saturating_add(regained).min(entry.rpm)
    }

    fn entry(&self, rpm: u32) -> Entry<C> {
        let per_minute = NonZeroU32::new(rpm).expect("rpm is at least 1");
        let limiter =
            RateLimiter::direct_with_clock(Quota::per_minute(per_minute), self.clock.clone())
                .with_middleware::<StateInformationMiddleware>();
        Entry {
            rpm,
            limiter: Arc::new(limiter),
            remaining: rpm,
            at: self.clock.now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn a_changed_limit_keeps_what_was_used() {
        let clock = FakeRelativeClock::default();
        let limits = RequestLimits::with_clock(clock.clone());
        let passed = |rpm: u32, tries: usize| {
            (0..tries)
                .filter(|_| limits.check(1, rpm).retry_after.is_none())
                .count()
        };
        assert_eq!(passed(5, 5), 5);
        // 5 used of a new 6: one more, not six.
        assert_eq!(passed(6, 10), 1);
        // Lowered below what was used: nothing until the window moves on.
        assert_eq!(passed(3, 5), 0);
        clock.advance(MINUTE);
        assert_eq!(passed(3, 5), 3);
    }

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
    fn idle_limiters_are_swept() {
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
