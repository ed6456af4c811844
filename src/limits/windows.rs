//! Quotas over rolling windows ("1,000 requests per 5 hours, 7,000 per 7 days") as pure
//! functions: counts, the time and the quotas in; the verdict out. A window keeps its
//! counts in 60 slots of a 60th of it each (and the current one), so a request is never
//! forgotten before its whole window has passed: at most `limit` requests are admitted in
//! any span of the window's length, and one leaves the count at most a 60th late. A
//! request is admitted only if every window has room, and then counted in all of them at
//! once; tokens are counted when the request's usage is known (`spend`), so a token quota
//! refuses once it is used up (the last request admitted may cross it by its own tokens).
//! The memory store (`plans`) keeps the counts per holder in this process; Redis keeps
//! them for every replica, where `redis::QUOTAS` does the same arithmetic in Lua (doubles,
//! as here): a differential test compares the two on random sequences.

/// The slots a window's count is kept in (besides the current one).
pub const SLOTS: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Tokens,
}

/// One quota: `limit` requests (or tokens) in any `span_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub unit: Unit,
    pub limit: u64,
    pub span_us: i64,
}

impl Window {
    /// A slot's length in µs.
    pub fn width(&self) -> i64 {
        (self.span_us / SLOTS).max(1)
    }

    /// The slot holding instant `at_us` (in doubles, as Lua divides).
    pub fn slot(&self, at_us: i64) -> i64 {
        (at_us as f64 / self.width() as f64).floor() as i64
    }

    /// The window as a person reads it: "5 hours", "7 days", "30 minutes".
    pub fn label(&self) -> String {
        let secs = self.span_us / 1_000_000;
        let (n, unit) = match secs {
            s if s % 86_400 == 0 => (s / 86_400, "day"),
            s if s % 3600 == 0 => (s / 3600, "hour"),
            s => (s / 60, "minute"),
        };
        match n {
            1 => format!("1 {unit}"),
            n => format!("{n} {unit}s"),
        }
    }
}

/// A window's counts: (slot, count), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub Vec<(i64, u64)>);

impl Counts {
    /// Drops the slots the window has passed at `now`.
    pub fn forget(&mut self, window: &Window, now: i64) {
        let first = window.slot(now) - SLOTS;
        self.0.retain(|&(slot, _)| slot >= first);
    }

    pub fn used(&self) -> u64 {
        self.0.iter().map(|&(_, n)| n).sum()
    }

    /// Adds `n` to `slot`.
    pub fn add(&mut self, slot: i64, n: u64) {
        match self.0.iter().position(|&(s, _)| s >= slot) {
            Some(i) if self.0[i].0 == slot => self.0[i].1 += n,
            Some(i) => self.0.insert(i, (slot, n)),
            None => self.0.push((slot, n)),
        }
    }

    /// µs from `now` until at most `keep` are counted (slot `s` leaves at `(s + 61) ×
    /// width`).
    fn until(&self, window: &Window, now: i64, keep: u64) -> i64 {
        let (mut used, mut at) = (self.used(), 0);
        for &(slot, n) in &self.0 {
            if used <= keep {
                break;
            }
            used -= n;
            at = (slot + SLOTS + 1) * window.width() - now;
        }
        at.max(0)
    }
}

/// What one window says of an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Left in the window after this request.
    pub remaining: u64,
    /// µs until the window counts nothing.
    pub reset_us: i64,
    /// When this window refused: µs until it has room; 0 otherwise.
    pub retry_us: i64,
}

/// Counts one request at `now` in every request window, if every window (requests and
/// tokens) has room; with `look`, only says what is left. Whether it was admitted, and
/// each window's verdict.
pub fn admit(
    counts: &mut [Counts],
    windows: &[Window],
    now: i64,
    look: bool,
) -> (bool, Vec<Verdict>) {
    for (c, w) in counts.iter_mut().zip(windows) {
        c.forget(w, now);
    }
    let full = |c: &Counts, w: &Window| c.used() >= w.limit;
    let admitted = !look && !counts.iter().zip(windows).any(|(c, w)| full(c, w));
    if admitted {
        for (c, w) in counts.iter_mut().zip(windows) {
            if w.unit == Unit::Requests {
                c.add(w.slot(now), 1);
            }
        }
    }
    let verdicts = counts
        .iter()
        .zip(windows)
        .map(|(c, w)| Verdict {
            remaining: w.limit.saturating_sub(c.used()),
            reset_us: c.until(w, now, 0),
            retry_us: match !look && !admitted && full(c, w) {
                true => c.until(w, now, w.limit - 1),
                false => 0,
            },
        })
        .collect();
    (admitted, verdicts)
}

/// Counts `tokens` used at `now` in every token window.
pub fn spend(counts: &mut [Counts], windows: &[Window], now: i64, tokens: u64) {
    for (c, w) in counts.iter_mut().zip(windows) {
        if w.unit == Unit::Tokens && tokens > 0 {
            c.forget(w, now);
            c.add(w.slot(now), tokens);
        }
    }
}

/// A window's counts rebuilt from the ledger's hourly sums (`(hour start µs, requests,
/// tokens)`): each hour's count is put in the slot of its last instant (or of `now`, for
/// the hour under way), so that it stays counted at least as long as its requests would.
pub fn seed(window: &Window, hours: &[(i64, u64, u64)], now: i64) -> Counts {
    let mut counts = Counts::default();
    for &(start, requests, tokens) in hours {
        let n = match window.unit {
            Unit::Requests => requests,
            Unit::Tokens => tokens,
        };
        let last = (start + 3_600_000_000 - 1).min(now);
        if n > 0 {
            counts.add(window.slot(last), n);
        }
    }
    counts.forget(window, now);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;
    const T0: i64 = 1_764_000_000_000_000;

    fn requests(limit: u64, hours: i64) -> Window {
        Window {
            unit: Unit::Requests,
            limit,
            span_us: hours * HOUR,
        }
    }

    /// Tries `n` requests at `now`; how many were admitted.
    fn tries(counts: &mut [Counts], windows: &[Window], now: i64, n: usize) -> usize {
        (0..n)
            .filter(|_| admit(counts, windows, now, false).0)
            .count()
    }

    #[test]
    fn no_span_of_the_window_holds_more_than_the_limit() {
        let window = [requests(10, 5)];
        let mut counts = vec![Counts::default()];
        // Ten at once, then none until the whole window (and at most a 60th more) passed.
        assert_eq!(tries(&mut counts, &window, T0, 25), 10);
        let (_, refused) = admit(&mut counts, &window, T0 + HOUR, false);
        let retry = refused[0].retry_us;
        // Five hours from the first request, an hour of it gone: four more (and a slot).
        assert!(
            (4 * HOUR..=4 * HOUR + 5 * HOUR / 60).contains(&retry),
            "{retry}"
        );
        assert_eq!(tries(&mut counts, &window, T0 + HOUR + retry - 1, 3), 0);
        assert_eq!(tries(&mut counts, &window, T0 + HOUR + retry, 25), 10);
        // Spread over the window: still no more than ten in any five hours.
        let mut counts = vec![Counts::default()];
        let mut admitted = Vec::new();
        for minute in 0..(15 * 60) {
            let now = T0 + minute * 60_000_000;
            if admit(&mut counts, &window, now, false).0 {
                admitted.push(now);
            }
        }
        for (i, &at) in admitted.iter().enumerate() {
            let within = admitted[i..].iter().filter(|&&t| t < at + 5 * HOUR).count();
            assert!(within <= 10, "{within} within 5 hours of {at}");
        }
        assert!(
            admitted.len() >= 25,
            "{} admitted in 15 hours",
            admitted.len()
        );
    }

    #[test]
    fn every_window_must_have_room_and_all_count_at_once() {
        let windows = [requests(3, 1), requests(5, 24)];
        let mut counts = vec![Counts::default(), Counts::default()];
        assert_eq!(tries(&mut counts, &windows, T0, 10), 3);
        // The hour refused: the day counted only what was admitted.
        assert_eq!(counts[1].used(), 3);
        let (_, verdicts) = admit(&mut counts, &windows, T0 + 2 * HOUR, true);
        assert_eq!((verdicts[0].remaining, verdicts[1].remaining), (3, 2));
        assert_eq!(tries(&mut counts, &windows, T0 + 2 * HOUR, 10), 2);
        let (admitted, verdicts) = admit(&mut counts, &windows, T0 + 2 * HOUR, false);
        assert!(!admitted);
        // Only the day refused: it names the wait.
        assert_eq!(verdicts[0].retry_us, 0);
        assert!(verdicts[1].retry_us > 21 * HOUR, "{verdicts:?}");
    }

    #[test]
    fn tokens_refuse_once_used_up() {
        let windows = [
            requests(100, 1),
            Window {
                unit: Unit::Tokens,
                limit: 100,
                span_us: 24 * HOUR,
            },
        ];
        let mut counts = vec![Counts::default(), Counts::default()];
        for _ in 0..4 {
            assert!(admit(&mut counts, &windows, T0, false).0);
            spend(&mut counts, &windows, T0, 30);
        }
        assert_eq!(counts[1].used(), 120);
        assert!(!admit(&mut counts, &windows, T0, false).0);
        assert_eq!(counts[0].used(), 4, "a refused request is not counted");
    }

    #[test]
    fn a_seed_keeps_each_hour_counted_to_its_end() {
        let window = requests(10, 5);
        let hour = T0 - T0 % HOUR;
        let hours = [
            (hour - 6 * HOUR, 7, 0),
            (hour - 2 * HOUR, 4, 0),
            (hour, 3, 0),
        ];
        let counts = seed(&window, &hours, hour + 60_000_000);
        // Six hours ago has left the window; two hours ago and this hour stay.
        assert_eq!(counts.used(), 7);
        let mut counts = vec![counts];
        assert_eq!(tries(&mut counts, &[window], hour + 60_000_000, 10), 3);
    }

    #[test]
    fn windows_read_as_people_say_them() {
        assert_eq!(requests(1, 5).label(), "5 hours");
        assert_eq!(requests(1, 24).label(), "1 day");
        assert_eq!(requests(1, 7 * 24).label(), "7 days");
        let half = Window {
            unit: Unit::Requests,
            limit: 1,
            span_us: 1_800_000_000,
        };
        assert_eq!(half.label(), "30 minutes");
    }
}
