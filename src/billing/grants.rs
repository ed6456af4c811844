//! Credit grants, burned: which grants pay how much of which record. Pure: the open grants
//! and the records in; the uses out. A record burns the grants in force when its request
//! started (effective at or before, expiring after): first token grants of its model (a
//! free quota of tokens: each pays for as many of the record's tokens as it holds, that
//! share of its cost), then money grants; among each, lowest priority number first, then
//! the soonest expiry (never-expiring last), then the oldest. Each pays what it holds, up
//! to what is left of the record's cost; the balance pays the rest. Records are taken in
//! the order they started (then by request id), so a batch burns as its requests came.

use rust_decimal::{Decimal, RoundingStrategy};

/// A grant with something left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: i64,
    /// Money left (0 for a token grant).
    pub remaining: Decimal,
    /// A token grant: its model and the tokens it has left.
    pub tokens: Option<(String, u64)>,
    pub priority: i32,
    /// ms since the epoch.
    pub effective_at: i64,
    pub expires_at: Option<i64>,
}

impl Held {
    fn covers(&self, started_ms: i64) -> bool {
        self.effective_at <= started_ms && self.expires_at.is_none_or(|e| started_ms < e)
    }
}

/// A record to be paid.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub request_id: &'a str,
    pub started_ms: i64,
    pub cost: Decimal,
    pub model: &'a str,
    /// Prompt and completion tokens.
    pub tokens: u64,
}

/// What one grant paid of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub grant_id: i64,
    pub request_id: String,
    pub at_ms: i64,
    pub amount: Decimal,
    /// The tokens a token grant paid for (0 for a money grant).
    pub tokens: u64,
}

/// The order grants are burned in: token grants first.
pub fn order(grants: &mut [Held]) {
    grants.sort_by_key(|g| {
        let money = g.tokens.is_none();
        (money, g.priority, g.expires_at.unwrap_or(i64::MAX), g.id)
    });
}

/// Burns `grants` (their `remaining` lowered) for `charges`: the uses, in order.
pub fn burn(grants: &mut [Held], charges: &[Charge<'_>]) -> Vec<Use> {
    order(grants);
    let mut charges: Vec<&Charge<'_>> = charges.iter().collect();
    charges.sort_by_key(|c| (c.started_ms, c.request_id));
    let mut uses = Vec::new();
    for charge in charges {
        let mut left = charge.cost;
        let mut tokens_left = charge.tokens;
        for grant in grants.iter_mut() {
            if left <= Decimal::ZERO {
                break;
            }
            if !grant.covers(charge.started_ms) {
                continue;
            }
            let (paid, tokens) = match &mut grant.tokens {
                Some((model, held)) => {
                    if model != charge.model || *held == 0 || tokens_left == 0 {
                        continue;
                    }
                    let n = tokens_left.min(*held);
                    // The tokens' share of what is left of the cost (to 1e-10 CNY, half up).
                    let share = match n == tokens_left {
                        true => left,
                        false => (left * Decimal::from(n) / Decimal::from(tokens_left))
                            .round_dp_with_strategy(10, RoundingStrategy::MidpointAwayFromZero)
                            .min(left),
                    };
                    *held -= n;
                    tokens_left -= n;
                    (share, n)
                }
                None => {
                    if grant.remaining <= Decimal::ZERO {
                        continue;
                    }
                    let paid = left.min(grant.remaining);
                    grant.remaining -= paid;
                    (paid, 0)
                }
            };
            left -= paid;
            uses.push(Use {
                grant_id: grant.id,
                request_id: charge.request_id.to_owned(),
                at_ms: charge.started_ms,
                amount: paid,
                tokens,
            });
        }
    }
    uses
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn grant(id: i64, remaining: &str, priority: i32, expires_at: Option<i64>) -> Held {
        Held {
            id,
            remaining: d(remaining),
            tokens: None,
            priority,
            effective_at: 0,
            expires_at,
        }
    }

    fn charge<'a>(request_id: &'a str, started_ms: i64, cost: &str) -> Charge<'a> {
        Charge {
            request_id,
            started_ms,
            cost: d(cost),
            model: "m",
            tokens: 100,
        }
    }

    #[test]
    fn priority_then_the_soonest_expiry_burns_first() {
        let mut grants = vec![
            grant(1, "10", 50, None),
            grant(2, "1", 50, Some(1_000)),
            grant(3, "2", 50, Some(500)),
            grant(4, "0.5", 0, None),
        ];
        let uses = burn(&mut grants, &[charge("a", 100, "4")]);
        let paid: Vec<(i64, Decimal)> = uses.iter().map(|u| (u.grant_id, u.amount)).collect();
        assert_eq!(
            paid,
            [(4, d("0.5")), (3, d("2")), (2, d("1")), (1, d("0.5"))]
        );
        let left: Vec<(i64, Decimal)> = grants.iter().map(|g| (g.id, g.remaining)).collect();
        assert_eq!(left, [(4, d("0")), (3, d("0")), (2, d("0")), (1, d("9.5"))]);
    }

    #[test]
    fn a_grant_pays_only_for_requests_started_in_its_life() {
        let mut grants = vec![Held {
            id: 1,
            remaining: d("5"),
            tokens: None,
            priority: 0,
            effective_at: 100,
            expires_at: Some(200),
        }];
        let charges = [
            charge("before", 99, "1"),
            charge("first", 100, "1"),
            charge("last", 199, "1"),
            charge("after", 200, "1"),
        ];
        let uses = burn(&mut grants, &charges);
        let paid: Vec<&str> = uses.iter().map(|u| u.request_id.as_str()).collect();
        assert_eq!(paid, ["first", "last"]);
        assert_eq!(grants[0].remaining, d("3"));
    }

    #[test]
    fn the_balance_pays_what_the_grants_cannot_and_records_burn_in_their_order() {
        let mut grants = vec![grant(1, "0.0000015", 10, None)];
        let uses = burn(
            &mut grants,
            &[charge("b", 20, "0.000001"), charge("a", 10, "0.000001")],
        );
        let paid: Vec<(&str, Decimal)> = uses
            .iter()
            .map(|u| (u.request_id.as_str(), u.amount))
            .collect();
        assert_eq!(paid, [("a", d("0.000001")), ("b", d("0.0000005"))]);
        assert_eq!(grants[0].remaining, Decimal::ZERO);
    }

    #[test]
    fn a_token_grant_pays_for_its_tokens_of_its_model_first() {
        let mut grants = vec![
            grant(1, "1", 0, None),
            Held {
                id: 2,
                remaining: Decimal::ZERO,
                tokens: Some(("m".into(), 250)),
                priority: 50,
                effective_at: 0,
                expires_at: None,
            },
        ];
        let other = Charge {
            model: "other",
            ..charge("x", 1, "0.3")
        };
        let charges = [
            charge("a", 2, "0.3"),
            charge("b", 3, "0.3"),
            charge("c", 4, "0.3"),
            other,
        ];
        let uses = burn(&mut grants, &charges);
        let paid: Vec<(&str, i64, Decimal, u64)> = uses
            .iter()
            .map(|u| (u.request_id.as_str(), u.grant_id, u.amount, u.tokens))
            .collect();
        assert_eq!(
            paid,
            [
                ("x", 1, d("0.3"), 0),
                ("a", 2, d("0.3"), 100),
                ("b", 2, d("0.3"), 100),
                // 50 of its 100 tokens: half its cost; the money grant the rest.
                ("c", 2, d("0.15"), 50),
                ("c", 1, d("0.15"), 0),
            ]
        );
        assert_eq!(grants[0].tokens, Some(("m".into(), 0)));
        assert_eq!(grants[1].remaining, d("0.55"));
    }
}
