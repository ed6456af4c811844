//! Tokens per minute as pure functions: a bucket of a minute's tokens that refills
//! continuously, reserved at admission (the request's worst case) and corrected at its end
//! (what was not used comes back; what was used beyond the reservation is taken). State,
//! the time and the quota in; the verdict and the state to keep out. Levels are in
//! thousandths of a token, in doubles, as `redis::ADMIT` and `redis::SETTLE` keep them in
//! Lua; a differential test runs both on the same random sequences.

/// A key's bucket: its level (thousandths of a token), when it was last set (µs on the
/// store's clock) and the tpm it was kept with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub level: f64,
    pub at: f64,
    pub tpm: f64,
}

/// The verdict: whether the reservation passed, tokens left, µs until the bucket is full
/// again, and (when refused) µs until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub passed: bool,
    pub remaining: i64,
    pub reset_us: i64,
    pub retry_us: i64,
}

const MINUTE_US: f64 = 60_000_000.0;

/// Reserves `tokens` at `now` (µs) against `tpm` per minute (or, with `look`, only says
/// what is left). A reservation larger than the whole minute passes only when the bucket
/// is full. The state to keep is `Some` when it changed.
pub fn reserve(
    state: Option<Bucket>,
    now: i64,
    tpm: u64,
    tokens: u64,
    look: bool,
) -> (Reserved, Option<Bucket>) {
    let now = now as f64;
    let tpm = tpm as f64;
    let full = tpm * 1000.0;
    let mut level = state.map_or(full, |b| b.level);
    let at = state.map_or(now, |b| b.at);
    let was = state.map_or(tpm, |b| b.tpm);
    if was != tpm {
        // A changed limit: what was used stays used, against the new capacity.
        level = full - (was * 1000.0 - level);
    }
    level = full.min(level + (now - at) * tpm * 1000.0 / MINUTE_US);
    let need = tokens as f64 * 1000.0;
    let mut passed = true;
    let mut retry = 0.0;
    let mut kept = None;
    if !look {
        if level >= need || level >= full {
            level -= need;
            kept = Some(Bucket {
                level,
                at: now,
                tpm,
            });
        } else {
            passed = false;
            retry = 1000f64.max((need.min(full) - level) * MINUTE_US / (tpm * 1000.0));
        }
    }
    let verdict = Reserved {
        passed,
        remaining: (level.max(0.0) / 1000.0).floor() as i64,
        reset_us: ((full - level) * MINUTE_US / (tpm * 1000.0)).floor() as i64,
        retry_us: retry.floor() as i64,
    };
    (verdict, kept)
}

/// The request reserved `reserved` tokens and used `used`: the difference goes back into
/// the bucket (or is taken from it) at `now`.
pub fn settle(state: Option<Bucket>, now: i64, tpm: u64, reserved: u64, used: u64) -> Bucket {
    let now = now as f64;
    let tpm = tpm as f64;
    let full = tpm * 1000.0;
    let level = state.map_or(full, |b| b.level);
    let at = state.map_or(now, |b| b.at);
    let back = (reserved as f64 - used as f64) * 1000.0;
    let level = full.min(level + (now - at) * tpm * 1000.0 / MINUTE_US + back);
    Bucket {
        level,
        at: now,
        tpm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_waits_for_the_refill_and_settling_gives_back_the_unused() {
        let (first, state) = reserve(None, 0, 600, 500, false);
        assert!(first.passed);
        assert_eq!(first.remaining, 100);
        let (second, unchanged) = reserve(state, 0, 600, 200, false);
        assert!(!second.passed && unchanged.is_none());
        // 100 tokens missing at 10 per second.
        assert_eq!(second.retry_us, 10_000_000);
        // The first used 100 of its 500: 400 come back.
        let state = settle(state, 0, 600, 500, 100);
        let (third, _) = reserve(Some(state), 0, 600, 200, false);
        assert!(third.passed);
        assert_eq!(third.remaining, 300);
    }

    #[test]
    fn more_than_a_minute_passes_only_from_a_full_bucket() {
        let (big, state) = reserve(None, 0, 100, 1000, false);
        assert!(big.passed);
        let (again, _) = reserve(state, 30_000_000, 100, 1000, false);
        assert!(!again.passed);
    }
}
