//! Exact cost of one request: integer token counts times decimal prices.

use rust_decimal::Decimal;

use super::PriceVersion;

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

/// `charge_request` adds the per-request price; it is false for requests that failed.
pub fn cost_of(price: &PriceVersion, tokens: TokenCounts, charge_request: bool) -> Cost {
    let thousand = Decimal::from(1000);
    let cached = tokens.cached.min(tokens.prompt);
    let uncached = tokens.prompt - cached;
    let per_token = Decimal::from(uncached) * price.entry.input_per_1k
        + Decimal::from(cached) * price.cached_input_per_1k()
        + Decimal::from(tokens.completion) * price.entry.output_per_1k;
    let per_request = if charge_request {
        price.entry.per_request
    } else {
        Decimal::ZERO
    };
    (per_token / thousand + per_request).normalize()
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
            cost_of(&p, tokens, true),
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
            cost_of(&p, tokens, true),
            Decimal::from_str("0.0000000004").unwrap()
        );
    }

    #[test]
    fn per_request_prices_apply_only_when_charged() {
        let p = price("0", None, "0", "0.002");
        let none = TokenCounts::default();
        assert_eq!(cost_of(&p, none, true), Decimal::from_str("0.002").unwrap());
        assert_eq!(cost_of(&p, none, false), Decimal::ZERO);
    }
}
