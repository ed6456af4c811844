//! Requests per minute as one pure function: the generic cell rate algorithm, with a
//! burst of the whole minute. State, the time and the quota in; the verdict and the state
//! to keep out. The memory store (`requests`) keeps the state per key in this process; the
//! Redis store keeps it in Redis, where `redis::ADMIT` does the same arithmetic in Lua (in
//! the same order, in doubles, as Lua's numbers are): a differential test runs both on the
//! same random sequences and compares every verdict.

/// A key's state: its theoretical arrival time (µs on the store's clock) and the rpm it
/// was counted with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gcra {
    pub tat: f64,
    pub rpm: f64,
}

/// The verdict: requests taken (0: refused), requests left, µs until the allowance is
/// full again, and (when refused) µs until one would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub taken: u32,
    pub remaining: u32,
    pub reset_us: i64,
    pub retry_us: i64,
}

const MINUTE_US: f64 = 60_000_000.0;

/// Takes up to `take` requests at `now` (µs) against `rpm` per minute (or, with `look`,
/// only says what is left). The state to keep is `Some` when it changed.
pub fn admit(
    state: Option<Gcra>,
    now: i64,
    rpm: u32,
    take: u32,
    look: bool,
) -> (Taken, Option<Gcra>) {
    let now = now as f64;
    let rpm = f64::from(rpm.max(1));
    let take = f64::from(take.max(1));
    let period = MINUTE_US / rpm;
    let mut tat = state.map_or(now, |s| s.tat);
    let old = state.map_or(rpm, |s| s.rpm);
    if tat < now {
        tat = now;
    }
    if old != rpm {
        // A changed limit: what was used stays used, up to the new limit's whole minute.
        let used = ((tat - now) / (MINUTE_US / old) - 1e-9).ceil().min(rpm);
        tat = now + used * period;
    }
    // Requests the allowance holds now: each moves tat on by one period, up to a minute ahead.
    let n = take.min(((now - tat) / period + rpm + 1e-9).floor());
    if look {
        let remaining = (rpm - ((tat - now) / period - 1e-9).ceil()).max(0.0);
        let verdict = Taken {
            taken: 1,
            remaining: remaining as u32,
            reset_us: (tat - now).floor() as i64,
            retry_us: 0,
        };
        return (verdict, None);
    }
    if n < 1.0 {
        let verdict = Taken {
            taken: 0,
            remaining: 0,
            reset_us: (tat - now).floor() as i64,
            retry_us: (tat + period - rpm * period - now).floor() as i64,
        };
        return (verdict, None);
    }
    let next = tat + n * period;
    let remaining = (rpm - ((next - now) / period - 1e-9).ceil()).max(0.0);
    let verdict = Taken {
        taken: n as u32,
        remaining: remaining as u32,
        reset_us: (next - now).floor() as i64,
        retry_us: 0,
    };
    (verdict, Some(Gcra { tat: next, rpm }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `tries` single requests at `now`, keeping the state; how many passed.
    fn passed(state: &mut Option<Gcra>, now: i64, rpm: u32, tries: usize) -> usize {
        (0..tries)
            .filter(|_| {
                let (taken, next) = admit(*state, now, rpm, 1, false);
                if next.is_some() {
                    *state = next;
                }
                taken.taken == 1
            })
            .count()
    }

    #[test]
    fn exactly_the_quota_passes_per_minute_and_retry_after_is_exact() {
        let mut state = None;
        for minute in 0..3 {
            let now = minute * 60_000_000;
            assert_eq!(passed(&mut state, now, 10, 25), 10, "minute {minute}");
            let (refused, _) = admit(state, now, 10, 1, false);
            assert_eq!((refused.taken, refused.retry_us), (0, 6_000_000));
        }
    }

    #[test]
    fn a_changed_limit_keeps_what_was_used_up_to_a_minute() {
        let mut state = None;
        assert_eq!(passed(&mut state, 0, 5, 5), 5);
        // 5 used of a new 6: one more, not six.
        assert_eq!(passed(&mut state, 0, 6, 10), 1);
        // Lowered below what was used: nothing until the minute moves on ...
        assert_eq!(passed(&mut state, 0, 3, 5), 0);
        // ... then the new limit in full.
        assert_eq!(passed(&mut state, 60_000_000, 3, 5), 3);
    }

    #[test]
    fn remaining_counts_down_and_a_look_takes_nothing() {
        let mut state = None;
        let (first, next) = admit(state, 0, 10, 1, false);
        state = next;
        assert_eq!(first.remaining, 9);
        let (look, unchanged) = admit(state, 0, 10, 1, true);
        assert_eq!((look.remaining, unchanged), (9, None));
        let (later, _) = admit(state, 6_000_000, 10, 1, true);
        assert_eq!(later.remaining, 10);
    }

    #[test]
    fn a_slice_takes_what_the_allowance_holds() {
        let (taken, state) = admit(None, 0, 10, 4, false);
        assert_eq!((taken.taken, taken.remaining), (4, 6));
        let (taken, _) = admit(state, 0, 10, 8, false);
        assert_eq!((taken.taken, taken.remaining), (6, 0));
    }
}
