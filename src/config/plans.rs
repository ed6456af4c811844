//! Quota plans (`[[limits.plans]]`): request and token quotas over several rolling windows
//! at once ("1,000 requests per 5 hours, 7,000 per 7 days"), given to accounts by name,
//! counted for the whole account or for each of its keys.

use anyhow::bail;
use serde::Deserialize;

/// The longest window a quota may have: a year.
const MAX_WINDOW_SECS: u64 = 366 * 24 * 3600;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    pub name: String,
    /// The accounts (by name) on this plan; an account is on one plan at most.
    pub accounts: Vec<String>,
    /// Whether the quotas are the account's, shared by its keys (`account`, the default),
    /// or each key's own (`key`: a rotated key keeps its predecessor's counts).
    #[serde(default)]
    pub per: PlanHolder,
    pub quotas: Vec<QuotaConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PlanHolder {
    #[default]
    Account,
    Key,
}

/// One quota: `requests` or `tokens` (prompt + completion) per `window` (`"30m"`, `"5h"`,
/// `"7d"`), rolling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub window: String,
}

impl QuotaConfig {
    /// The window in seconds: a whole number of minutes (`m`), hours (`h`) or days (`d`).
    pub fn window_secs(&self) -> anyhow::Result<u64> {
        let text = self.window.trim();
        let (digits, unit) = text.split_at(text.len().saturating_sub(1));
        let scale = match unit {
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => bail!("a quota's window is like \"30m\", \"5h\" or \"7d\", not {text:?}"),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| anyhow::anyhow!("a quota's window is like \"5h\", not {text:?}"))?;
        let secs = n.saturating_mul(scale);
        if !(60..=MAX_WINDOW_SECS).contains(&secs) {
            bail!("a quota's window is from 1 minute to 366 days, not {text:?}");
        }
        Ok(secs)
    }
}

/// Checks every plan: a name, quotas of one unit each with a window, no account twice.
pub(super) fn check(plans: &[PlanConfig]) -> anyhow::Result<()> {
    let mut seen = std::collections::HashMap::new();
    for plan in plans {
        let name = &plan.name;
        if name.is_empty() || plans.iter().filter(|p| &p.name == name).count() > 1 {
            bail!("limits.plans: every plan needs a name of its own ({name:?})");
        }
        if plan.quotas.is_empty() {
            bail!("limits.plans {name:?}: a plan needs at least one quota");
        }
        for quota in &plan.quotas {
            match (quota.requests, quota.tokens) {
                (Some(n), None) | (None, Some(n)) if n > 0 => {}
                _ => bail!(
                    "limits.plans {name:?}: each quota is `requests` or `tokens` (at least 1) per `window`"
                ),
            }
            quota
                .window_secs()
                .map_err(|e| anyhow::anyhow!("limits.plans {name:?}: {e}"))?;
        }
        for account in &plan.accounts {
            if let Some(other) = seen.insert(account.clone(), name.clone()) {
                bail!("limits.plans: account {account:?} is on two plans ({other:?} and {name:?})");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(window: &str) -> QuotaConfig {
        QuotaConfig {
            requests: Some(1),
            tokens: None,
            window: window.into(),
        }
    }

    #[test]
    fn windows_read_in_minutes_hours_and_days() {
        assert_eq!(quota("30m").window_secs().unwrap(), 1800);
        assert_eq!(quota("5h").window_secs().unwrap(), 18_000);
        assert_eq!(quota("7d").window_secs().unwrap(), 604_800);
        for bad in ["", "5", "h", "5x", "0m", "400d", "-1h", "1.5h"] {
            assert!(quota(bad).window_secs().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_plan_is_checked_whole() {
        let plan = |name: &str, accounts: &[&str], quotas: Vec<QuotaConfig>| PlanConfig {
            name: name.into(),
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
            per: PlanHolder::Account,
            quotas,
        };
        assert!(check(&[plan("coding", &["acme"], vec![quota("5h")])]).is_ok());
        assert!(check(&[plan("coding", &["acme"], vec![])]).is_err());
        let both = QuotaConfig {
            requests: Some(1),
            tokens: Some(1),
            window: "1h".into(),
        };
        assert!(check(&[plan("coding", &["acme"], vec![both])]).is_err());
        let twice = [
            plan("a", &["acme"], vec![quota("5h")]),
            plan("b", &["acme"], vec![quota("5h")]),
        ];
        assert!(check(&twice).unwrap_err().to_string().contains("two plans"));
    }
}
