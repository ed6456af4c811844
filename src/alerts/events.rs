//! What becomes an event, pure: an audit log entry's action (a key created, an invoice
//! finalized, ...) and an account's thresholds against its figures now. A threshold is a
//! rule with a key of its own: it fires when its condition holds and no row of
//! `alert_states` has its key, and (for those that can clear) is re-armed when the
//! condition no longer holds.

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::config::ThresholdConfig;

/// The event an audit action makes, if any.
pub fn of_action(action: &str) -> Option<&'static str> {
    Some(match action {
        "key.create" => "key.created",
        "key.revoke" => "key.revoked",
        "key.rotate" => "key.rotated",
        "account.top_up" => "account.topped_up",
        "account.credit_note" | "account.debit_note" => "account.note_issued",
        "account.grant" => "grant.issued",
        "invoice.finalize" => "invoice.finalized",
        _ => return None,
    })
}

/// An account's figures, as the thresholds read them.
#[derive(Debug, Clone)]
pub struct Figures {
    /// What it can spend: its balance and what open grants hold.
    pub spendable: Decimal,
    /// Its balance alone (negative: what a postpaid account owes).
    pub balance: Decimal,
    pub credit_limit: Option<Decimal>,
    /// The month under way (`2026-12`) and what its usage cost so far.
    pub month: String,
    pub month_cost: Decimal,
    /// Open grants with something left: (id, remaining, expiry as RFC 3339, days to it).
    pub expiring: Vec<(i64, Decimal, String, i64)>,
}

/// One rule of a threshold now: its key, whether its condition holds, whether it clears
/// (re-armed when the condition no longer holds), and the event it makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub key: String,
    pub holds: bool,
    pub clears: bool,
    pub event: &'static str,
    pub data: Value,
}

/// Every rule of `threshold` against `figures`.
pub fn rules(threshold: &ThresholdConfig, figures: &Figures) -> Vec<Rule> {
    let mut rules = Vec::new();
    if let Some(below) = &threshold.balance_below {
        rules.push(Rule {
            key: format!("balance_below:{}", below.0.normalize()),
            holds: figures.spendable < below.0,
            clears: true,
            event: "balance.below",
            data: json!({"threshold": below.0.normalize().to_string(),
                         "spendable": figures.spendable.normalize().to_string()}),
        });
    }
    if let Some(budget) = threshold.budget.as_ref().filter(|b| b.0 > Decimal::ZERO) {
        for &percent in &threshold.budget_percent {
            let reached =
                figures.month_cost * Decimal::from(100) >= budget.0 * Decimal::from(percent);
            rules.push(Rule {
                key: format!(
                    "budget:{}:{percent}:{}",
                    budget.0.normalize(),
                    figures.month
                ),
                holds: reached,
                clears: false,
                event: "budget.reached",
                data: json!({"percent": percent, "budget": budget.0.normalize().to_string(),
                             "period": figures.month,
                             "cost": figures.month_cost.normalize().to_string()}),
            });
        }
    }
    if let Some(limit) = figures.credit_limit.filter(|l| *l > Decimal::ZERO) {
        let used = (-figures.balance).max(Decimal::ZERO);
        for &percent in &threshold.credit_percent {
            rules.push(Rule {
                key: format!("credit:{percent}"),
                holds: used * Decimal::from(100) >= limit * Decimal::from(percent),
                clears: true,
                event: "credit.reached",
                data: json!({"percent": percent, "credit_limit": limit.normalize().to_string(),
                             "used": used.normalize().to_string()}),
            });
        }
    }
    if let Some(days) = threshold.grant_expiring_days {
        for (id, remaining, expires_at, left) in &figures.expiring {
            rules.push(Rule {
                key: format!("grant_expiring:{id}"),
                holds: *left <= i64::from(days),
                clears: false,
                event: "grant.expiring",
                data: json!({"grant_id": id, "remaining": remaining.normalize().to_string(),
                             "expires_at": expires_at}),
            });
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Amount as Money;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn figures() -> Figures {
        Figures {
            spendable: d("12"),
            balance: d("-40"),
            credit_limit: Some(d("50")),
            month: "2026-12".into(),
            month_cost: d("81"),
            expiring: vec![(7, d("3"), "2026-12-05T00:00:00Z".into(), 2)],
        }
    }

    #[test]
    fn each_rule_says_whether_it_holds() {
        let threshold = ThresholdConfig {
            account: "acme".into(),
            balance_below: Some(Money(d("10"))),
            budget: Some(Money(d("100"))),
            budget_percent: vec![50, 80, 100],
            credit_percent: vec![80, 100],
            grant_expiring_days: Some(3),
        };
        let held: Vec<(String, bool)> = rules(&threshold, &figures())
            .into_iter()
            .map(|r| (r.key, r.holds))
            .collect();
        assert_eq!(
            held,
            [
                ("balance_below:10".to_string(), false),
                ("budget:100:50:2026-12".to_string(), true),
                ("budget:100:80:2026-12".to_string(), true),
                ("budget:100:100:2026-12".to_string(), false),
                ("credit:80".to_string(), true),
                ("credit:100".to_string(), false),
                ("grant_expiring:7".to_string(), true),
            ]
        );
    }

    #[test]
    fn audit_actions_name_their_events() {
        assert_eq!(of_action("key.create"), Some("key.created"));
        assert_eq!(of_action("invoice.finalize"), Some("invoice.finalized"));
        assert_eq!(of_action("account.debit_note"), Some("account.note_issued"));
        assert_eq!(of_action("person.sign_in"), None);
    }
}
