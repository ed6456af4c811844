//! The frame around every page (`Frame`: language, theme, who is signed in, the navigation,
//! the CSRF token for its forms) and how figures are written: money in the account's
//! currency, times in its time zone, counts with separators.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::{Decimal, RoundingStrategy};

use super::i18n::{Lang, Words};
use super::web::{Prefs, Signed};
use crate::domain::people::Role;

/// A navigation entry: its path, its catalogue key, whether it is the current page.
pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// What the page's frame shows.
pub struct Frame {
    pub t: &'static Words,
    pub theme: &'static str,
    pub lang_tag: &'static str,
    /// The signed-in person's email and role (`None` on the sign-in page).
    pub who: Option<(String, &'static str)>,
    pub csrf: String,
    pub nav: Vec<NavItem>,
    /// Links to the other language and themes, returning here.
    pub switches: Vec<(String, &'static str, bool)>,
}

impl Frame {
    /// The frame of a page for someone signed in; `section` is the current nav entry.
    pub fn signed(signed: &Signed, section: &str) -> Frame {
        let role = signed.session.person.role;
        let mut nav = vec![
            ("/console/", "nav.overview"),
            ("/console/usage", "nav.usage"),
            ("/console/keys", "nav.keys"),
            ("/console/invoices", "nav.invoices"),
            ("/console/tasks", "nav.tasks"),
            ("/console/prices", "nav.prices"),
        ];
        if role.manages_account() {
            nav.push(("/console/people", "nav.people"));
        }
        if role == Role::Operator {
            nav.push(("/console/accounts", "nav.accounts"));
            nav.push(("/console/audit", "nav.audit"));
            nav.push(("/console/health", "nav.health"));
        }
        nav.push(("/console/me", "nav.me"));
        let mut frame = Frame::public(&signed.prefs);
        frame.who = Some((signed.session.person.email.clone(), role.as_str()));
        frame.csrf = signed.session.csrf.clone();
        frame.nav = nav
            .into_iter()
            .map(|(href, label)| NavItem {
                href,
                label,
                current: label == section,
            })
            .collect();
        frame
    }

    /// The frame of a page anyone may see (the sign-in page).
    pub fn public(prefs: &Prefs) -> Frame {
        let back = super::web::url_escape(&prefs.here);
        let mut switches = Vec::new();
        for lang in Lang::ALL {
            let label = match lang {
                Lang::En => "English",
                Lang::Zh => "中文",
            };
            switches.push((
                format!("/console/prefs?lang={}&back={back}", lang.code()),
                label,
                lang == prefs.lang,
            ));
        }
        let t = prefs.t();
        for theme in ["auto", "light", "dark"] {
            let label = match theme {
                "light" => t.get("theme.light"),
                "dark" => t.get("theme.dark"),
                _ => t.get("theme.auto"),
            };
            switches.push((
                format!("/console/prefs?theme={theme}&back={back}"),
                label,
                theme == prefs.theme,
            ));
        }
        Frame {
            t,
            theme: prefs.theme,
            lang_tag: prefs.lang.tag(),
            who: None,
            csrf: String::new(),
            nav: Vec::new(),
            switches,
        }
    }
}

/// An amount with its currency sign and thousands separators: to the fen (rounded
/// half-up) from ¥1, and below that to six significant digits, so that a month of small
/// requests does not read as nothing: `¥1,234.57`, `¥0.0000348`.
pub fn money(amount: Decimal) -> String {
    let shown = if amount.abs() >= Decimal::ONE || amount.is_zero() {
        amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
    } else {
        let digits = amount.abs().scale() as i64 - amount.abs().mantissa().to_string().len() as i64;
        let places = (digits + 6).clamp(2, 28) as u32;
        amount
            .round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero)
            .normalize()
    };
    let text = shown.abs().to_string();
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let fraction = format!("{fraction:0<2}");
    let sign = if shown.is_sign_negative() && !shown.is_zero() {
        "-"
    } else {
        ""
    };
    format!("{sign}¥{}.{fraction}", group_digits(whole))
}

/// An exact amount, as many decimals as it has: `0.0001234`.
pub fn exact(amount: Decimal) -> String {
    amount.normalize().to_string()
}

/// A count with thousands separators: `12,345`.
pub fn count(n: impl Into<i128>) -> String {
    let n = n.into();
    let digits = group_digits(&n.unsigned_abs().to_string());
    if n < 0 { format!("-{digits}") } else { digits }
}

fn group_digits(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A time in `zone`, to the minute: `2026-12-02 23:31`.
pub fn time(at: DateTime<Utc>, zone: Tz) -> String {
    at.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string()
}

/// A share as a percentage with one decimal: `2.5%`.
pub fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        return "0.0%".into();
    }
    let share = Decimal::from(part) * Decimal::from(100) / Decimal::from(whole);
    format!(
        "{:.1}%",
        share.round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_written_for_people() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(money(d("1234567.125")), "¥1,234,567.13");
        assert_eq!(money(d("0.004")), "¥0.004");
        assert_eq!(money(d("0.0000348")), "¥0.0000348");
        assert_eq!(money(d("0.123456789")), "¥0.123457");
        assert_eq!(money(d("0")), "¥0.00");
        assert_eq!(money(d("0.5")), "¥0.50");
        assert_eq!(money(d("-12.5")), "-¥12.50");
        assert_eq!(money(d("999")), "¥999.00");
        assert_eq!(exact(d("0.00012300")), "0.000123");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(-1000), "-1,000");
        assert_eq!(count(12), "12");
        assert_eq!(percent(1, 40), "2.5%");
        assert_eq!(percent(0, 0), "0.0%");
        let at = "2026-12-02T23:31:00Z".parse().unwrap();
        assert_eq!(time(at, chrono_tz::Asia::Shanghai), "2026-12-03 07:31");
    }
}
