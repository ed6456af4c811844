//! Sign-in throttling: after `failures` wrong passwords for one email, or from one address,
//! within a window, sign-in under that email (or from that address) is refused until the
//! window ends, whatever the password. Counted in this process (a password guesser spread
//! over several replicas gets each one's allowance).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The failures counted per email and per address.
pub struct Throttle {
    failures: u32,
    window: Duration,
    seen: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Entries kept before windows that ended are swept.
const SWEEP_AT: usize = 10_000;

impl Throttle {
    pub fn new(failures: u32, window: Duration) -> Throttle {
        Throttle {
            failures: failures.max(1),
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` when any of `keys` has used its failures in the current window.
    pub fn check(&self, keys: &[&str], now: Instant) -> Result<(), Duration> {
        let seen = self.seen.lock();
        let wait = keys
            .iter()
            .filter_map(|k| seen.get(*k))
            .filter(|w| w.failures >= self.failures)
            .filter_map(|w| (w.started + self.window).checked_duration_since(now))
            .filter(|wait| !wait.is_zero())
            .max();
        wait.map_or(Ok(()), Err)
    }

    /// Counts a wrong password against each of `keys`.
    pub fn failed(&self, keys: &[&str], now: Instant) {
        let mut seen = self.seen.lock();
        if seen.len() >= SWEEP_AT {
            seen.retain(|_, w| now.duration_since(w.started) < self.window);
        }
        for key in keys {
            let window = seen.entry((*key).to_owned()).or_insert(Window {
                started: now,
                failures: 0,
            });
            if now.duration_since(window.started) >= self.window {
                *window = Window {
                    started: now,
                    failures: 0,
                };
            }
            window.failures += 1;
        }
    }

    /// Forgets the failures of `key` (an email whose password was just given right).
    pub fn forget(&self, key: &str) {
        self.seen.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenth_failure_closes_the_window_for_the_email_and_the_address() {
        let throttle = Throttle::new(10, Duration::from_secs(900));
        let t0 = Instant::now();
        for i in 0..9 {
            throttle.failed(&["email:a@x", "addr:10.0.0.1"], t0 + Duration::from_secs(i));
            assert!(throttle.check(&["email:a@x"], t0).is_ok());
        }
        throttle.failed(&["email:a@x", "addr:10.0.0.1"], t0 + Duration::from_secs(9));
        let wait = throttle
            .check(&["email:a@x"], t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(890));
        // The address is closed for another email too; another address and email are not.
        assert!(throttle.check(&["email:b@x", "addr:10.0.0.1"], t0).is_err());
        assert!(throttle.check(&["email:b@x", "addr:10.0.0.2"], t0).is_ok());
        // The window ends: open again, and counting starts over.
        let later = t0 + Duration::from_secs(900);
        assert!(throttle.check(&["email:a@x"], later).is_ok());
        throttle.failed(&["email:a@x"], later);
        assert!(throttle.check(&["email:a@x"], later).is_ok());
    }

    #[test]
    fn a_right_password_forgets_the_emails_failures() {
        let throttle = Throttle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        throttle.failed(&["email:a@x"], now);
        throttle.failed(&["email:a@x"], now);
        throttle.forget("email:a@x");
        throttle.failed(&["email:a@x"], now);
        throttle.failed(&["email:a@x"], now);
        assert!(throttle.check(&["email:a@x"], now).is_ok());
    }
}
