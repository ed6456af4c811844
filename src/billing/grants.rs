//! Credit grants, burned: which grants pay how much of which record. Pure: the open grants
//! and the records in; the uses out. A record burns the grants in force when its request
//! started (effective at or before, expiring after), lowest priority number first, then the
//! soonest expiry (never-expiring last), then the oldest; each pays what it holds, up to
//! what is left of the record's cost; the balance pays the rest. Records are taken in the
//! order they started (then by request id), so a batch burns as its requests came.

use rust_decimal::Decimal;

/// A grant with something left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: i64,
    pub remaining: Decimal,
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
}

/// What one grant paid of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub grant_id: i64,
    pub request_id: String,
    pub at_ms: i64,
    pub amount: Decimal,
}

/// The order grants are burned in.
pub fn order(grants: &mut [Held]) {
    grants.sort_by_key(|g| (g.priority, g.expires_at.unwrap_or(i64::MAX), g.id));
}

/// Burns `grants` (their `remaining` lowered) for `charges`: the uses, in order.
pub fn burn(grants: &mut [Held], charges: &[Charge<'_>]) -> Vec<Use> {
    order(grants);
    let mut charges: Vec<&Charge<'_>> = charges.iter().collect();
    charges.sort_by_key(|c| (c.started_ms, c.request_id));
    let mut uses = Vec::new();
    for charge in charges {
        let mut left = charge.cost;
        for grant in grants.iter_mut() {
            if left <= Decimal::ZERO {
                break;
            }
            if grant.remaining <= Decimal::ZERO || !grant.covers(charge.started_ms) {
                continue;
            }
            let paid = left.min(grant.remaining);
            grant.remaining -= paid;
            left -= paid;
            uses.push(Use {
                grant_id: grant.id,
                request_id: charge.request_id.to_owned(),
                at_ms: charge.started_ms,
                amount: paid,
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
}
