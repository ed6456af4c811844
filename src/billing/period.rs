//! Billing periods: calendar months in the configured billing timezone, half-open
//! `[start, end)`, as UTC instants.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// A calendar month, e.g. `2026-11`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    /// `2026-11`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Month, String> {
        let bad = || format!("period '{text}' is not a month like 2026-11");
        let (y, m) = text.split_once('-').ok_or_else(bad)?;
        let (year, month) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if y.len() != 4 || m.len() != 2 || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    pub fn containing(t: DateTime<Utc>, zone: Tz) -> Month {
        let local = t.with_timezone(&zone);
        Month {
            year: local.year(),
            month: local.month(),
        }
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn previous(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// `[start, end)` in UTC: local midnight of the 1st to local midnight of the next 1st.
    pub fn bounds(self, zone: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
        (
            local_midnight(self, zone),
            local_midnight(self.next(), zone),
        )
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

fn local_midnight(m: Month, zone: Tz) -> DateTime<Utc> {
    day_start(
        NaiveDate::from_ymd_opt(m.year, m.month, 1).expect("a valid month"),
        zone,
    )
}

/// The first instant of `date` in `zone`: its midnight, or where a zone skips midnight (DST
/// at 00:00) the first instant of the day then.
pub fn day_start(date: NaiveDate, zone: Tz) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    zone.from_local_datetime(&midnight)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                .earliest()
        })
        .expect("one of two consecutive hours exists")
        .with_timezone(&Utc)
}

/// The starts (ms) of every day in `zone` from 1970-01-01 to 2100-01-01 (whose start ends
/// the last day): the days the ledger's daily rollups sum.
pub fn rollup_days(zone: Tz) -> Vec<i64> {
    let first = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    let last = NaiveDate::from_ymd_opt(2100, 1, 1).expect("a date");
    first
        .iter_days()
        .take_while(|d| *d <= last)
        .map(|d| day_start(d, zone).timestamp_millis())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_in_shanghai_starts_at_16_00_utc_the_day_before() {
        let (start, end) = Month::parse("2026-11")
            .unwrap()
            .bounds(chrono_tz::Asia::Shanghai);
        assert_eq!(start.to_rfc3339(), "2026-10-31T16:00:00+00:00");
        assert_eq!(end.to_rfc3339(), "2026-11-30T16:00:00+00:00");
        let december = Month::parse("2026-12").unwrap().bounds(chrono_tz::UTC);
        assert_eq!(december.1.to_rfc3339(), "2027-01-01T00:00:00+00:00");
    }

    #[test]
    fn rollup_days_are_each_local_day_in_order() {
        let days = rollup_days(chrono_tz::Asia::Kolkata);
        assert_eq!(days.len(), 47_483);
        assert!(days.windows(2).all(|w| w[0] < w[1]));
        let nov_3 = NaiveDate::from_ymd_opt(2026, 11, 3).unwrap();
        let start = day_start(nov_3, chrono_tz::Asia::Kolkata);
        assert_eq!(start.to_rfc3339(), "2026-11-02T18:30:00+00:00");
        assert!(days.binary_search(&start.timestamp_millis()).is_ok());
        // New York's days are 23 or 25 hours at the changes of clock.
        let ny = rollup_days(chrono_tz::America::New_York);
        assert!(ny.windows(2).any(|w| w[1] - w[0] == 23 * 3_600_000));
        assert!(ny.windows(2).any(|w| w[1] - w[0] == 25 * 3_600_000));
    }

    #[test]
    fn bad_periods_are_refused() {
        for bad in ["2026-13", "2026-1", "26-11", "november", "2026-00"] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
    }
}
