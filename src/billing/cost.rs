//! Exact cost of one request: integer token counts times decimal prices.

use rust_decimal::Decimal;

use super::PriceVersion;
use super::money::{Overflow, add, mul};

/// Money in CNY. Never negative, never a float.
pub type Cost = Decimal;

/// Tokens as the ledger counts them: `cached` is part of `prompt`, reasoning tokens are
/// part of `completion`, so each token is counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenCounts {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
}

impl TokenCounts {
    pub fn is_zero(&self) -> bool {
        self.prompt == 0 && self.completion == 0
    }
}

impl TokenCounts {
    /// Each count at most `cap`'s (and cached never above prompt): what a spending hold
    /// covers is all that is billed.
    pub fn capped(self, cap: TokenCounts) -> TokenCounts {
        let prompt = self.prompt.min(cap.prompt);
        TokenCounts {
            prompt,
            completion: self.completion.min(cap.completion),
            cached: self.cached.min(prompt),
        }
    }
}

/// `charge_request` adds the per-request price; it is false for requests that failed.
/// Checked: only prices and counts beyond the bounds of `money` and
/// `metering::MAX_TOKENS_PER_RECORD` could overflow, and then this is an error.
pub fn cost_of(
    price: &PriceVersion,
    tokens: TokenCounts,
    charge_request: bool,
) -> Result<Cost, Overflow> {
    let cached = tokens.cached.min(tokens.prompt);
    let uncached = tokens.prompt - cached;
    let per_token = add(
        add(
            mul(Decimal::from(uncached), price.entry.input_per_1k)?,
            mul(Decimal::from(cached), price.cached_input_per_1k())?,
        )?,
        mul(Decimal::from(tokens.completion), price.entry.output_per_1k)?,
    )?;
    let per_request = if charge_request {
        price.entry.per_request
    } else {
        Decimal::ZERO
    };
    Ok(add(per_token / Decimal::ONE_THOUSAND, per_request)?.normalize())
}

/// The most `tokens` can cost at `price`, whichever of their prompt tokens turn out cached:
/// what a spending hold must cover.
pub fn worst_cost_of(price: &PriceVersion, tokens: TokenCounts) -> Result<Cost, Overflow> {
    let cached_dearer = price.cached_input_per_1k() > price.entry.input_per_1k;
    let tokens = TokenCounts {
        cached: if cached_dearer { tokens.prompt } else { 0 },
        ..tokens
    };
    cost_of(price, tokens, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::PriceEntry;
    use std::str::FromStr;

    fn price(input: &str, cached: Option<&str>, output: &str, per_request: &str) -> PriceVersion {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        PriceVersion {
            id: 1,
            entry: PriceEntry {
                model: "m".into(),
                chip: "c".into(),
                effective_from: Default::default(),
                input_per_1k: d(input),
                cached_input_per_1k: cached.map(d),
                output_per_1k: d(output),
                per_request: d(per_request),
            },
        }
    }

    #[test]
    fn cached_tokens_are_priced_once_at_the_cached_rate() {
        let p = price("0.004", Some("0.001"), "0.016", "0");
        let tokens = TokenCounts {
            prompt: 1200,
            completion: 3,
            cached: 1024,
        };
        // 176 * 0.004 + 1024 * 0.001 + 3 * 0.016 = 0.704 + 1.024 + 0.048 = 1.776 per 1k
        assert_eq!(
            cost_of(&p, tokens, true).unwrap(),
            Decimal::from_str("0.001776").unwrap()
        );
    }

    #[test]
    fn tiny_prices_stay_exact() {
        let p = price("0.00000001", None, "0.00000003", "0");
        let tokens = TokenCounts {
            prompt: 7,
            completion: 11,
            cached: 0,
        };
        assert_eq!(
            cost_of(&p, tokens, true).unwrap(),
            Decimal::from_str("0.0000000004").unwrap()
        );
    }

    #[test]
    fn per_request_prices_apply_only_when_charged() {
        let p = price("0", None, "0", "0.002");
        let none = TokenCounts::default();
        assert_eq!(
            cost_of(&p, none, true).unwrap(),
            Decimal::from_str("0.002").unwrap()
        );
        assert_eq!(cost_of(&p, none, false).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn absurd_counts_and_prices_are_an_error_not_a_panic() {
        let mut p = price("0", None, "0", "0");
        p.entry.output_per_1k = Decimal::MAX;
        let tokens = TokenCounts {
            prompt: u64::MAX,
            completion: u64::MAX,
            cached: u64::MAX,
        };
        assert_eq!(cost_of(&p, tokens, true), Err(Overflow));
        let fine = price("1000000", None, "1000000", "1000000");
        assert!(cost_of(&fine, tokens, true).is_ok());
    }
}
