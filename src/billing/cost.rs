//! Exact cost: integer quantities (tokens, requests, images, tasks, compute time) times
//! decimal prices, by unit. `Quantities::cost` is the one formula that records, invoices,
//! reports and balances all use.

use rust_decimal::Decimal;

use super::PriceVersion;
use serde::{Deserialize, Serialize};

use super::money::{self, Overflow, add, mul};

/// What a line counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Prompt tokens not served from cache, priced per 1,000.
    InputTokens,
    /// Cached prompt tokens, priced per 1,000.
    CachedInputTokens,
    /// Prompt tokens written to the backend's prompt cache, priced per 1,000.
    CacheWriteTokens,
    /// Completion tokens (other than reasoning ones), priced per 1,000.
    OutputTokens,
    /// Reasoning tokens (a thinking model's, part of its completion), priced per 1,000.
    ReasoningTokens,
    /// Completed requests, priced each.
    Requests,
    /// Images a completed request or task produced, priced each.
    Images,
    /// Completed tasks, priced each.
    Tasks,
    /// Compute time a backend reported, in milliseconds, priced per second.
    ComputeMs,
    /// Files uploaded to a backend (ComfyUI's input images), priced each.
    Uploads,
}

impl Unit {
    /// How many units the unit price is for.
    pub fn per(self) -> u32 {
        match self {
            Unit::Requests | Unit::Images | Unit::Tasks | Unit::Uploads => 1,
            Unit::InputTokens
            | Unit::CachedInputTokens
            | Unit::CacheWriteTokens
            | Unit::OutputTokens
            | Unit::ReasoningTokens
            | Unit::ComputeMs => 1000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::InputTokens => "input_tokens",
            Unit::CachedInputTokens => "cached_input_tokens",
            Unit::CacheWriteTokens => "cache_write_tokens",
            Unit::OutputTokens => "output_tokens",
            Unit::ReasoningTokens => "reasoning_tokens",
            Unit::Requests => "requests",
            Unit::Images => "images",
            Unit::Tasks => "tasks",
            Unit::ComputeMs => "compute_ms",
            Unit::Uploads => "uploads",
        }
    }
}

/// Money in CNY. Never negative, never a float.
pub type Cost = Decimal;

/// Tokens as the ledger counts them: `cached` (read from the backend's prompt cache) and
/// `cache_write` (written to it) are parts of `prompt`, reasoning tokens are part of
/// `completion`, so each token is counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenCounts {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    #[serde(default)]
    pub cache_write: u64,
    /// Part of `completion`: a thinking model's reasoning.
    #[serde(default)]
    pub reasoning: u64,
}

impl TokenCounts {
    pub fn is_zero(&self) -> bool {
        self.prompt == 0 && self.completion == 0
    }
}

impl TokenCounts {
    /// Each count at most `cap`'s (and cached and cache writes never above prompt): what
    /// a spending hold covers is all that is billed.
    pub fn capped(self, cap: TokenCounts) -> TokenCounts {
        let prompt = self.prompt.min(cap.prompt);
        let cached = self.cached.min(prompt);
        let completion = self.completion.min(cap.completion);
        TokenCounts {
            prompt,
            completion,
            cached,
            cache_write: self.cache_write.min(prompt - cached),
            reasoning: self.reasoning.min(completion),
        }
    }
}

/// What a request produced besides tokens: counted only when it completed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Units {
    pub images: u64,
    pub tasks: u64,
    pub compute_ms: u64,
    pub uploads: u64,
}

impl Units {
    pub fn is_zero(&self) -> bool {
        *self == Units::default()
    }
}

/// What a record, or a sum of records, bills: a count per unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quantities {
    pub tokens: TokenCounts,
    /// Completed requests (those carry the per-request price).
    pub requests: u64,
    pub units: Units,
}

impl Quantities {
    /// The count of each unit: `cached` and `cache_write` are parts of `prompt` (never
    /// more, cached first), `reasoning` of `completion`.
    pub fn by_unit(&self) -> [(Unit, u64); 10] {
        let tokens = self.tokens;
        let cached = tokens.cached.min(tokens.prompt);
        let cache_write = tokens.cache_write.min(tokens.prompt - cached);
        let reasoning = tokens.reasoning.min(tokens.completion);
        [
            (Unit::InputTokens, tokens.prompt - cached - cache_write),
            (Unit::CachedInputTokens, cached),
            (Unit::CacheWriteTokens, cache_write),
            (Unit::OutputTokens, tokens.completion - reasoning),
            (Unit::ReasoningTokens, reasoning),
            (Unit::Requests, self.requests),
            (Unit::Images, self.units.images),
            (Unit::Tasks, self.units.tasks),
            (Unit::ComputeMs, self.units.compute_ms),
            (Unit::Uploads, self.units.uploads),
        ]
    }

    /// The exact cost at `price`: the one formula. Checked: only prices and counts beyond
    /// the bounds of `money` and `config::MAX_REPORTED_TOKENS` could overflow, and then
    /// this is an error.
    pub fn cost(&self, price: &PriceVersion) -> Result<Cost, Overflow> {
        let mut cost = Decimal::ZERO;
        for (unit, quantity) in self.by_unit() {
            let unit_price = unit_price(price, unit);
            // A term of zero adds nothing (the sum is normalized): most of them are.
            if quantity != 0 && !unit_price.is_zero() {
                cost = add(cost, amount(quantity, unit_price, unit.per())?)?;
            }
        }
        Ok(cost.normalize())
    }
}

impl Quantities {
    /// The most of these quantities that `budget` pays for at `price`: what a record may
    /// bill when its spending hold is `budget`. Unchanged if they cost no more. Otherwise
    /// the requests, tasks and uploads (every hold covers those) are kept, and the rest of
    /// the budget pays for input, cached input, cache write, output and reasoning tokens,
    /// images and compute time, in that order, each as many as it still covers.
    pub fn within(&self, price: &PriceVersion, budget: Cost) -> Result<Quantities, Overflow> {
        if self.cost(price)? <= budget {
            return Ok(*self);
        }
        let [
            input,
            cached,
            cache_write,
            output,
            reasoning,
            requests,
            images,
            tasks,
            compute,
            uploads,
        ] = self.by_unit();
        let mut left = budget;
        let mut take = |(unit, quantity): (Unit, u64), fixed: bool| -> Result<u64, Overflow> {
            let unit_price = unit_price(price, unit);
            let mut n = quantity;
            if !fixed && !unit_price.is_zero() {
                let most =
                    (left.max(Decimal::ZERO) * Decimal::from(unit.per()) / unit_price).floor();
                n = n.min(u64::try_from(most).unwrap_or(u64::MAX));
                // The quotient may round up in its last digit: step down to what fits.
                while n > 0 && amount(n, unit_price, unit.per())? > left {
                    n -= 1;
                }
            }
            left -= amount(n, unit_price, unit.per())?;
            Ok(n)
        };
        let requests = take(requests, true)?;
        let tasks = take(tasks, true)?;
        let uploads = take(uploads, true)?;
        let input = take(input, false)?;
        let cached = take(cached, false)?;
        let cache_write = take(cache_write, false)?;
        let output = take(output, false)?;
        let reasoning = take(reasoning, false)?;
        let images = take(images, false)?;
        let compute_ms = take(compute, false)?;
        Ok(Quantities {
            tokens: TokenCounts {
                prompt: input + cached + cache_write,
                completion: output + reasoning,
                cached,
                cache_write,
                reasoning,
            },
            requests,
            units: Units {
                images,
                tasks,
                compute_ms,
                uploads,
            },
        })
    }
}

/// What `price` asks for one `unit.per()` of `unit`.
pub fn unit_price(price: &PriceVersion, unit: Unit) -> Decimal {
    match unit {
        Unit::InputTokens => price.entry.input_per_1k,
        Unit::CachedInputTokens => price.cached_input_per_1k(),
        Unit::CacheWriteTokens => price.cache_write_per_1k(),
        Unit::OutputTokens => price.entry.output_per_1k,
        Unit::ReasoningTokens => price.reasoning_per_1k(),
        Unit::Requests => price.entry.per_request,
        Unit::Images => price.entry.per_image,
        Unit::Tasks => price.entry.per_task,
        Unit::ComputeMs => price.entry.per_second,
        Unit::Uploads => price.entry.per_upload,
    }
}

/// The exact amount of `quantity` units at `price` per `per`: the one cost formula, for a
/// record and for an invoice line alike.
pub fn amount(quantity: u64, price: Decimal, per: u32) -> Result<Decimal, Overflow> {
    Ok(money::per(mul(Decimal::from(quantity), price)?, per).normalize())
}

/// The cost of a request's `tokens`, and of its `units` and its per-request price when it
/// `completed` (a failed request pays only for the tokens it delivered).
pub fn cost_of(
    price: &PriceVersion,
    tokens: TokenCounts,
    units: Units,
    completed: bool,
) -> Result<Cost, Overflow> {
    let quantities = Quantities {
        tokens,
        requests: u64::from(completed),
        units: if completed { units } else { Units::default() },
    };
    quantities.cost(price)
}

/// The most `tokens` and `units` can cost at `price`, whichever of their prompt tokens turn
/// out read from or written to a cache, or reasoning: what a spending hold must cover. The
/// whole prompt is priced at the dearest of the three prompt rates, the whole completion at
/// the dearer of output and reasoning.
pub fn worst_cost_of(
    price: &PriceVersion,
    tokens: TokenCounts,
    units: Units,
) -> Result<Cost, Overflow> {
    let (input, cached, write) = (
        price.entry.input_per_1k,
        price.cached_input_per_1k(),
        price.cache_write_per_1k(),
    );
    let tokens = TokenCounts {
        cached: if cached > input && cached >= write {
            tokens.prompt
        } else {
            0
        },
        cache_write: if write > input && write > cached {
            tokens.prompt
        } else {
            0
        },
        reasoning: if price.reasoning_per_1k() > price.entry.output_per_1k {
            tokens.completion
        } else {
            0
        },
        ..tokens
    };
    cost_of(price, tokens, units, true)
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
                cache_write_per_1k: None,
                output_per_1k: d(output),
                per_request: d(per_request),
                ..Default::default()
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
            cache_write: 0,
            reasoning: 0,
        };
        // 176 * 0.004 + 1024 * 0.001 + 3 * 0.016 = 0.704 + 1.024 + 0.048 = 1.776 per 1k
        assert_eq!(
            cost_of(&p, tokens, Units::default(), true).unwrap(),
            Decimal::from_str("0.001776").unwrap()
        );
    }

    #[test]
    fn cache_writes_are_priced_at_their_rate_and_held_at_the_dearest() {
        let mut p = price("0.003", Some("0.0003"), "0.015", "0");
        p.entry.cache_write_per_1k = Some(Decimal::from_str("0.00375").unwrap());
        // Anthropic's usage: 100 input, 2000 written to the cache, 3000 read from it.
        let tokens = TokenCounts {
            prompt: 5100,
            completion: 10,
            cached: 3000,
            cache_write: 2000,
            reasoning: 0,
        };
        // 100 * 0.003 + 3000 * 0.0003 + 2000 * 0.00375 + 10 * 0.015 = 0.3 + 0.9 + 7.5 + 0.15
        assert_eq!(
            cost_of(&p, tokens, Units::default(), true).unwrap(),
            Decimal::from_str("0.00885").unwrap()
        );
        // A hold prices the whole prompt as cache writes, the dearest prompt rate.
        let worst = worst_cost_of(&p, tokens, Units::default()).unwrap();
        assert_eq!(worst, Decimal::from_str("0.0192750").unwrap());
        // No rate of its own: the input price.
        p.entry.cache_write_per_1k = None;
        assert_eq!(
            cost_of(&p, tokens, Units::default(), true).unwrap(),
            Decimal::from_str("0.00735").unwrap()
        );
        // More cache writes than prompt tokens left: capped, never billed twice.
        let over = TokenCounts {
            cache_write: 9999,
            ..tokens
        };
        let q = Quantities {
            tokens: over,
            requests: 1,
            units: Units::default(),
        };
        let counted: u64 = q.by_unit()[..3].iter().map(|(_, n)| n).sum();
        assert_eq!(counted, 5100);
    }

    #[test]
    fn tiny_prices_stay_exact() {
        let p = price("0.00000001", None, "0.00000003", "0");
        let tokens = TokenCounts {
            prompt: 7,
            completion: 11,
            cached: 0,
            cache_write: 0,
            reasoning: 0,
        };
        assert_eq!(
            cost_of(&p, tokens, Units::default(), true).unwrap(),
            Decimal::from_str("0.0000000004").unwrap()
        );
    }

    #[test]
    fn per_request_prices_apply_only_when_charged() {
        let p = price("0", None, "0", "0.002");
        let none = TokenCounts::default();
        assert_eq!(
            cost_of(&p, none, Units::default(), true).unwrap(),
            Decimal::from_str("0.002").unwrap()
        );
        assert_eq!(
            cost_of(&p, none, Units::default(), false).unwrap(),
            Decimal::ZERO
        );
    }

    #[test]
    fn absurd_counts_and_prices_are_an_error_not_a_panic() {
        let mut p = price("0", None, "0", "0");
        p.entry.output_per_1k = Decimal::MAX;
        let tokens = TokenCounts {
            prompt: u64::MAX,
            completion: u64::MAX,
            cached: u64::MAX,
            cache_write: 0,
            reasoning: 0,
        };
        assert_eq!(cost_of(&p, tokens, Units::default(), true), Err(Overflow));
        let fine = price("1000000", None, "1000000", "1000000");
        assert!(cost_of(&fine, tokens, Units::default(), true).is_ok());
    }

    #[test]
    fn images_tasks_and_compute_time_are_priced_when_the_request_completed() {
        let mut p = price("0.001", None, "0", "0.01");
        p.entry.per_image = Decimal::from_str("0.25").unwrap();
        p.entry.per_task = Decimal::from_str("0.5").unwrap();
        p.entry.per_second = Decimal::from_str("0.003").unwrap();
        let tokens = TokenCounts {
            prompt: 1000,
            ..Default::default()
        };
        let units = Units {
            images: 4,
            tasks: 1,
            compute_ms: 1500,
            uploads: 0,
        };
        // 0.001 + 0.01 + 4 * 0.25 + 0.5 + 1.5 * 0.003
        assert_eq!(
            cost_of(&p, tokens, units, true).unwrap(),
            Decimal::from_str("1.5155").unwrap()
        );
        assert_eq!(
            cost_of(&p, tokens, units, false).unwrap(),
            Decimal::from_str("0.001").unwrap()
        );
    }

    #[test]
    fn a_record_bills_at_most_what_its_hold_pays_for() {
        let mut p = price("0.001", None, "0.002", "0.01");
        p.entry.per_image = Decimal::from_str("0.05").unwrap();
        p.entry.per_task = Decimal::from_str("0.02").unwrap();
        let d = |s: &str| Decimal::from_str(s).unwrap();
        let asked = Quantities {
            tokens: TokenCounts {
                prompt: 1000,
                completion: 1000,
                cached: 0,
                cache_write: 0,
                reasoning: 0,
            },
            requests: 1,
            units: Units {
                images: 100,
                tasks: 1,
                ..Units::default()
            },
        };
        // 0.01 + 0.02 + 0.001 + 0.002 + 100 * 0.05 = 5.033; a hold of 0.2 pays for the
        // request, the task, the tokens and 3 images (0.183), not a 4th.
        assert_eq!(asked.cost(&p).unwrap(), d("5.033"));
        let billed = asked.within(&p, d("0.2")).unwrap();
        assert_eq!(billed.units.images, 3);
        assert_eq!((billed.requests, billed.units.tasks), (1, 1));
        assert_eq!(billed.tokens, asked.tokens);
        assert_eq!(billed.cost(&p).unwrap(), d("0.183"));
        // Tokens beyond the hold: output is cut before input, to the token.
        let billed = asked.within(&p, d("0.0325")).unwrap();
        assert_eq!(
            (
                billed.tokens.prompt,
                billed.tokens.completion,
                billed.units.images
            ),
            (1000, 750, 0)
        );
        assert_eq!(billed.cost(&p).unwrap(), d("0.0325"));
        // What fits is unchanged.
        assert_eq!(asked.within(&p, d("5.033")).unwrap(), asked);
        // Prices with a repeating quotient (1/3) still stay within the budget.
        p.entry.per_image = d("0.03");
        let billed = asked.within(&p, d("0.1")).unwrap();
        assert!(billed.cost(&p).unwrap() <= d("0.1"));
        assert_eq!(billed.units.images, 2);
    }
}
