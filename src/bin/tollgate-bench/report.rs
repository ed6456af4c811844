//! Summaries of measured durations, and the Markdown they are written as.

use std::fmt::Write;
use std::time::Duration;

/// Percentiles (nearest rank) and mean of a set of durations.
#[derive(Clone, Copy, Default)]
pub struct Stats {
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Stats {
            mean: samples.iter().sum::<Duration>() / samples.len() as u32,
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
        }
    }
}

/// Milliseconds with three decimals (microsecond resolution).
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// `a - b` in milliseconds, signed.
pub fn added_ms(a: Duration, b: Duration) -> String {
    format!("{:+.3}", (a.as_secs_f64() - b.as_secs_f64()) * 1e3)
}

/// ` (lowest to highest)` of per-round figures, each written by `show`; nothing for a
/// single round.
pub fn spread(mut rounds: Vec<f64>, show: impl Fn(f64) -> String) -> String {
    rounds.sort_by(f64::total_cmp);
    match (rounds.first(), rounds.last()) {
        (Some(&lo), Some(&hi)) if rounds.len() > 1 => format!(" ({} to {})", show(lo), show(hi)),
        _ => String::new(),
    }
}

/// `a / b` with two decimals, or "n/a".
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

/// A Markdown table.
pub struct Table {
    text: String,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        let mut text = format!("| {} |\n|", headers.join(" | "));
        for _ in headers {
            text.push_str("---|");
        }
        text.push('\n');
        Table { text }
    }

    pub fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.text, "| {} |", cells.join(" | "));
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// What the machine is, for the record.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_is_the_lowest_and_highest_round() {
        let show = |x: f64| format!("{x:.2}");
        assert_eq!(spread(vec![0.61, 0.55, 0.65], show), " (0.55 to 0.65)");
        assert_eq!(spread(vec![0.61], show), "");
        assert_eq!(
            spread(vec![-0.1, 0.2], |x| format!("{x:+.3}")),
            " (-0.100 to +0.200)"
        );
    }
}
