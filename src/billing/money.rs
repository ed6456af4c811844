//! Bounds on every amount of money tollgate accepts from outside (top-ups, credit limits,
//! prices), so that no sum or product of them can overflow a `Decimal`: with these bounds
//! and token counts bounded per record, every money path stays far inside its 28 digits.

use rust_decimal::Decimal;

/// The largest top-up or credit limit: one trillion CNY.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(0xD4A5_1000, 0xE8, 0, false, 0);
/// The largest price, per 1,000 tokens or per request: one million CNY.
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// The most decimal places an amount or a price may have.
pub const MAX_SCALE: u32 = 12;

/// Checks a top-up or credit limit: not negative, at most `MAX_AMOUNT`, at most
/// `MAX_SCALE` decimal places. The error names `field`.
pub fn check_amount(value: Decimal, field: &str) -> Result<(), String> {
    check(value, MAX_AMOUNT, field)
}

/// Checks a price the same way, against `MAX_PRICE`.
pub fn check_price(value: Decimal, field: &str) -> Result<(), String> {
    check(value, MAX_PRICE, field)
}

fn check(value: Decimal, max: Decimal, field: &str) -> Result<(), String> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{field} must not be negative"));
    }
    if value > max {
        return Err(format!("{field} must be at most {max} CNY"));
    }
    if value.normalize().scale() > MAX_SCALE {
        return Err(format!("{field} has more than {MAX_SCALE} decimal places"));
    }
    Ok(())
}

/// A decimal written plainly: an optional sign, digits, and an optional point with digits
/// after it. No exponent (`1e3`), no `_`, no spaces inside: an amount of money reads as
/// what it is.
pub fn parse_plain(s: &str) -> Option<Decimal> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    (all_digits(whole) && all_digits(fraction))
        .then(|| s.parse().ok())
        .flatten()
}

pub use crate::error::Overflow;

/// `a + b`, or `Overflow`.
pub fn add(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    a.checked_add(b).ok_or(Overflow)
}

/// `a - b`, or `Overflow`.
pub fn sub(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    a.checked_sub(b).ok_or(Overflow)
}

/// `a * b`, or `Overflow`.
pub fn mul(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    a.checked_mul(b).ok_or(Overflow)
}

/// `a / per`, for `per` a count of units (`Unit::per`: 1 or 1000). Dividing by a power of
/// ten moves the decimal point: when `a`'s scale has room for it, only the scale changes,
/// and the value is the division's, exactly (rust_decimal's division takes hundreds of
/// instructions, and every record's cost makes two or three). Otherwise it divides.
pub fn per(a: Decimal, per: u32) -> Decimal {
    let shift = per.checked_ilog10().filter(|&k| 10u32.pow(k) == per);
    match shift {
        Some(k) if a.scale() + k <= Decimal::MAX_SCALE => {
            let mut moved = a;
            // Within MAX_SCALE, so it cannot fail.
            moved
                .set_scale(a.scale() + k)
                .expect("a scale within bounds");
            moved
        }
        _ => a / Decimal::from(per),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    proptest::proptest! {
        /// `per` gives what the division gives, to the last digit, whatever the scale.
        #[test]
        fn dividing_by_units_moves_the_point_to_the_divisions_value(
            (lo, mid, hi) in proptest::prelude::any::<(u32, u32, u32)>(),
            negative in proptest::prelude::any::<bool>(),
            scale in 0u32..=28,
            per_index in 0usize..5,
        ) {
            let value = Decimal::from_parts(lo, mid, hi, negative, scale);
            let units = [1u32, 10, 1000, 7, 1_000_000_000][per_index];
            let divided = value / Decimal::from(units);
            let moved = super::per(value, units);
            proptest::prop_assert_eq!(moved, divided);
            proptest::prop_assert_eq!(moved.normalize().to_string(), divided.normalize().to_string());
        }
    }

    #[test]
    fn the_bounds_are_what_they_say() {
        assert_eq!(MAX_AMOUNT, Decimal::from(1_000_000_000_000u64));
        assert_eq!(MAX_PRICE, Decimal::from(1_000_000));
    }

    #[test]
    fn amounts_outside_the_bounds_name_their_field() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert!(check_amount(d("100.00"), "amount").is_ok());
        assert!(check_amount(d("1000000000000"), "amount").is_ok());
        let err = check_amount(d("1000000000000.01"), "credit_limit").unwrap_err();
        assert!(err.contains("credit_limit"), "{err}");
        assert!(check_amount(Decimal::MAX, "amount").is_err());
        assert!(check_amount(d("-1"), "amount").is_err());
        assert!(check_amount(d("0.0000000000001"), "amount").is_err());
        assert!(check_price(d("1000000.5"), "input_per_1k").is_err());
        assert!(check_price(d("0.00000001"), "input_per_1k").is_ok());
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert_eq!(add(Decimal::MAX, Decimal::ONE), Err(Overflow));
        assert_eq!(sub(Decimal::MIN, Decimal::ONE), Err(Overflow));
        assert_eq!(mul(Decimal::MAX, Decimal::TWO), Err(Overflow));
    }
}

#[cfg(test)]
mod plain_tests {
    use super::parse_plain;

    #[test]
    fn amounts_are_plain_decimals() {
        for plain in ["12", "0.5", "-3.25", "+1.0", "007"] {
            assert!(parse_plain(plain).is_some(), "{plain}");
        }
        for odd in [
            "1e3", "1E3", "1_000", "1.", ".5", "", "-", "1.2.3", "0x10", "1 000", "NaN",
        ] {
            assert_eq!(parse_plain(odd), None, "{odd}");
        }
    }
}
