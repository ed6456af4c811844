//! Sign-in throttling: after `failures` wrong passwords for one email, or from one address,
//! within a sliding window, sign-in under that email (or from that address) is refused,
//! whatever the password, until enough of them are older than the window. The failures
//! are kept in the ledger (`store::people`), so every replica counts the same ones: a
//! guesser spread over replicas gets one allowance, not one each.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::error::Error;
use crate::store::{self, Db};

/// How many wrong passwords, within how long, close sign-in.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    failures: u32,
    window: TimeDelta,
}

impl Throttle {
    pub fn new(failures: u32, window: Duration) -> Throttle {
        Throttle {
            failures: failures.max(1),
            window: TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX),
        }
    }

    /// `Some(wait)` when any of `subjects` has used its failures in the window ending at
    /// `now`.
    pub async fn closed(
        &self,
        db: &Db,
        subjects: &[&str],
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>, Error> {
        let mut wait = None;
        for subject in subjects {
            let times = store::people::failures_since(db, subject, now - self.window).await?;
            wait = wait.max(self.wait(&times, store::to_ms(now)));
        }
        Ok(wait)
    }

    /// Counts a wrong password at `now` against each of `subjects`.
    pub async fn failed(
        &self,
        db: &Db,
        subjects: &[&str],
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        Ok(store::people::add_failure(db, subjects, now).await?)
    }

    /// Forgets the failures of `subject` (an email whose password was just given right).
    pub async fn forget(&self, db: &Db, subject: &str) -> Result<(), Error> {
        Ok(store::people::forget_failures(db, subject).await?)
    }

    /// Removes the failures older than the window (the hourly upkeep's).
    pub async fn sweep(&self, db: &Db, now: DateTime<Utc>) -> Result<u64, Error> {
        Ok(store::people::sweep_failures(db, now - self.window).await?)
    }

    /// How long one subject stays closed, given the times (ms, oldest first) of its
    /// failures within the window: until all but `failures - 1` of them are older than
    /// it, i.e. until the oldest of the newest `failures` leaves it.
    fn wait(&self, times: &[i64], now_ms: i64) -> Option<Duration> {
        let limit = self.failures as usize;
        let oldest_counted = *times.get(times.len().checked_sub(limit)?)?;
        let opens = oldest_counted.saturating_add(self.window.num_milliseconds());
        u64::try_from(opens - now_ms)
            .ok()
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenth_failure_in_the_window_closes_it_until_the_first_leaves() {
        let throttle = Throttle::new(10, Duration::from_secs(900));
        let t0 = 1_000_000_000_i64;
        let times: Vec<i64> = (0..10).map(|i| t0 + i * 1000).collect();
        for n in 0..10 {
            assert_eq!(
                throttle.wait(&times[..n], t0 + 10_000),
                None,
                "{n} failures"
            );
        }
        assert_eq!(
            throttle.wait(&times, t0 + 10_000),
            Some(Duration::from_secs(890))
        );
        // The first failure leaves the window: open, with nine counted.
        assert_eq!(throttle.wait(&times, t0 + 900_000), None);
        // More than ten (replicas racing): closed until all but nine have left.
        let eleven: Vec<i64> = (0..11).map(|i| t0 + i * 1000).collect();
        assert_eq!(
            throttle.wait(&eleven, t0 + 900_000),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn one_failure_allowed_closes_at_the_first() {
        let throttle = Throttle::new(0, Duration::from_secs(60));
        assert_eq!(
            throttle.wait(&[5_000], 5_000),
            Some(Duration::from_secs(60))
        );
        assert_eq!(throttle.wait(&[], 5_000), None);
    }
}
