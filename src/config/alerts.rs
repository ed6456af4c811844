//! Alerts by webhook (`[alerts]`): where events are sent (`[[alerts.webhooks]]`, each with
//! its signing secret and the events and accounts it wants) and the thresholds that make
//! events of their own (`[[alerts.thresholds]]`, per account).

use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

use super::Amount;
use super::secrets;

/// Every event type an endpoint may ask for (or `*`).
pub const EVENT_TYPES: [&str; 11] = [
    "key.created",
    "key.revoked",
    "key.rotated",
    "account.topped_up",
    "account.note_issued",
    "grant.issued",
    "invoice.finalized",
    "balance.below",
    "budget.reached",
    "credit.reached",
    "grant.expiring",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub webhooks: Vec<WebhookConfig>,
    pub thresholds: Vec<ThresholdConfig>,
    /// How often thresholds are checked.
    pub check_every_secs: u64,
    /// The first retry waits this long; each one after waits twice as long as the last
    /// (at most an hour).
    pub retry_base_ms: u64,
    /// A delivery not acknowledged after this many attempts is given up (`failed`).
    pub max_attempts: u32,
    /// How long an endpoint has to answer.
    pub timeout_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            thresholds: Vec::new(),
            check_every_secs: 60,
            retry_base_ms: 5000,
            max_attempts: 20,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the endpoint in deliveries and metrics.
    pub name: String,
    pub url: String,
    /// Environment variable holding the signing secret.
    pub secret_env: Option<String>,
    /// A file holding it instead (a mounted secret).
    pub secret_file: Option<PathBuf>,
    /// Event types (`EVENT_TYPES`), or `["*"]` (the default) for all.
    #[serde(default = "every_event")]
    pub events: Vec<String>,
    /// Accounts (by name) whose events it gets; empty: every account's.
    #[serde(default)]
    pub accounts: Vec<String>,
}

fn every_event() -> Vec<String> {
    vec!["*".into()]
}

impl WebhookConfig {
    /// The signing secret (required: an unsigned webhook cannot be trusted).
    pub fn secret(&self) -> anyhow::Result<String> {
        let field = format!("alerts.webhooks {:?} secret_file", self.name);
        match secrets::read(
            &field,
            self.secret_env.as_deref(),
            self.secret_file.as_deref(),
        )? {
            Some(secret) if secret.len() >= 16 => Ok(secret),
            Some(_) => bail!(
                "alerts.webhooks {:?}: the secret must be at least 16 bytes",
                self.name
            ),
            None => bail!(
                "alerts.webhooks {:?} needs secret_env (set) or secret_file",
                self.name
            ),
        }
    }

    pub fn wants(&self, event: &str, account: Option<&str>) -> bool {
        let typed = self.events.iter().any(|e| e == "*" || e == event);
        let whose = self.accounts.is_empty()
            || account.is_some_and(|a| self.accounts.iter().any(|x| x == a));
        typed && whose
    }
}

/// An account's thresholds: each fires once when crossed, and again only after it was
/// clear (a budget's percentages once a month, a grant's expiry once).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    pub account: String,
    /// What the account can spend (its balance and open grants) falls below this (CNY).
    pub balance_below: Option<Amount>,
    /// A monthly budget (CNY), and the percentages of it whose crossing is told.
    pub budget: Option<Amount>,
    #[serde(default)]
    pub budget_percent: Vec<u32>,
    /// Percentages of a postpaid account's credit limit used.
    #[serde(default)]
    pub credit_percent: Vec<u32>,
    /// An open grant with something left expires within this many days.
    pub grant_expiring_days: Option<u32>,
}

pub(super) fn check(alerts: &AlertsConfig) -> anyhow::Result<()> {
    for hook in &alerts.webhooks {
        let name = &hook.name;
        if name.is_empty() || alerts.webhooks.iter().filter(|h| &h.name == name).count() > 1 {
            bail!("alerts.webhooks: every endpoint needs a name of its own ({name:?})");
        }
        if !(hook.url.starts_with("https://") || hook.url.starts_with("http://")) {
            bail!("alerts.webhooks {name:?}: url must be http:// or https://");
        }
        hook.url
            .parse::<http::Uri>()
            .map_err(|e| anyhow::anyhow!("alerts.webhooks {name:?}: url: {e}"))?;
        for event in &hook.events {
            if event != "*" && !EVENT_TYPES.contains(&event.as_str()) {
                bail!(
                    "alerts.webhooks {name:?}: unknown event {event:?} (one of {})",
                    EVENT_TYPES.join(", ")
                );
            }
        }
        hook.secret()?;
    }
    for t in &alerts.thresholds {
        let percents = t.budget_percent.iter().chain(&t.credit_percent);
        if percents.clone().any(|p| !(1..=1000).contains(p)) {
            bail!(
                "alerts.thresholds {:?}: percentages are 1 to 1000",
                t.account
            );
        }
        if !t.budget_percent.is_empty() && t.budget.is_none() {
            bail!(
                "alerts.thresholds {:?}: budget_percent needs a budget",
                t.account
            );
        }
    }
    if alerts.check_every_secs == 0 || alerts.retry_base_ms == 0 || alerts.max_attempts == 0 {
        bail!("alerts.check_every_secs, retry_base_ms and max_attempts must be at least 1");
    }
    if !(100..=120_000).contains(&alerts.timeout_ms) {
        bail!("alerts.timeout_ms must be between 100 and 120000");
    }
    Ok(())
}
