//! Alerts by webhook. Events come from the audit log (keys created, revoked or rotated,
//! top-ups, notes, grants, invoices finalized: `events::of_action`) and from accounts'
//! thresholds crossed (`events::rules`); each is stored with one delivery per endpoint
//! that wants it (`store::webhooks`), so none is lost to a restart. Every replica runs
//! `tick` each second: the audit log's cursor and the thresholds' states make each event
//! once, and a delivery is leased by the replica sending it. A delivery is a POST of the
//! event's JSON signed as Standard Webhooks say (`sign`), retried with doubling waits
//! until a 2xx (at least once: a receiver deduplicates by `webhook-id`), every attempt kept
//! and each failure counted (`tollgate_webhook_failures_total`).

pub mod events;
pub mod sign;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::billing::period::Month;
use crate::billing::{PriceBook, invoice};
use crate::config::{AlertsConfig, WebhookConfig};
use crate::store::webhooks::{self, Audited, Due, Outcome, Outgoing};
use crate::store::{self, Db};

/// The longest wait between two attempts.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Audit entries this young are left for the next tick: one committing with a smaller id
/// would otherwise be passed over.
const SETTLE_MS: i64 = 2000;

struct Endpoint {
    config: WebhookConfig,
    url: http::Uri,
    secret: Vec<u8>,
}

pub struct Alerts {
    config: AlertsConfig,
    endpoints: Vec<Endpoint>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    failures: prometheus::IntCounterVec,
    /// This replica, as the leases name it.
    owner: String,
    checked: Mutex<Option<Instant>>,
    /// Accounts' names by id, as events name them (names never change).
    names: Mutex<HashMap<i64, String>>,
}

impl Alerts {
    pub fn new(
        config: &AlertsConfig,
        owner: &str,
        failures: prometheus::IntCounterVec,
    ) -> anyhow::Result<Alerts> {
        let endpoints = (config.webhooks.iter())
            .map(|hook| {
                let secret = hook.secret()?;
                // A Standard Webhooks secret (`whsec_` + base64) is its decoded bytes.
                let secret = match secret.strip_prefix("whsec_") {
                    Some(b64) => base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| anyhow::anyhow!("alerts.webhooks {:?}: {e}", hook.name))?,
                    None => secret.into_bytes(),
                };
                Ok(Endpoint {
                    url: hook.url.parse()?,
                    config: hook.clone(),
                    secret,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms)));
        let connector = HttpsConnectorBuilder::new()
            .try_with_platform_verifier()?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(Alerts {
            config: config.clone(),
            endpoints,
            client: Client::builder(TokioExecutor::new()).build(connector),
            failures,
            owner: owner.to_owned(),
            checked: Mutex::new(None),
            names: Mutex::default(),
        })
    }

    /// Whether there is anywhere to send events.
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Makes the events due (from the audit log, and the thresholds when their check is
    /// due) and sends the deliveries due.
    pub async fn tick(&self, db: &Db, prices: &PriceBook, zone: Tz) -> anyhow::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let now = Utc::now().timestamp_millis();
        // Only when the audit log has new entries: then the names of their accounts (those
        // not known yet), and the events, the cursor moved past them.
        let pending = webhooks::pending_accounts(db, now - SETTLE_MS).await?;
        if !pending.is_empty() {
            let mut names = HashMap::new();
            for id in pending.into_iter().flatten() {
                let known = self.names.lock().get(&id).cloned();
                let name = match known {
                    Some(name) => Some(name),
                    None => store::accounts::get(db, id).await?.map(|a| a.name),
                };
                if let Some(name) = name {
                    self.names.lock().insert(id, name.clone());
                    names.insert(id, name);
                }
            }
            webhooks::from_audit_log(db, now - SETTLE_MS, now, |entry| {
                let kind = events::of_action(&entry.action)?;
                Some(self.outgoing(kind, entry.account_id, &names, audited(entry)))
            })
            .await?;
        }
        let every = Duration::from_secs(self.config.check_every_secs);
        let due = self.checked.lock().is_none_or(|t| t.elapsed() >= every);
        if due {
            *self.checked.lock() = Some(Instant::now());
            self.check_thresholds(db, prices, zone).await?;
        }
        self.deliver(db).await
    }

    /// An event of `kind` about `account_id` with `data`, for the endpoints that want it.
    fn outgoing(
        &self,
        kind: &str,
        account_id: Option<i64>,
        names: &HashMap<i64, String>,
        data: Value,
    ) -> Outgoing {
        let name = account_id.and_then(|id| names.get(&id)).map(String::as_str);
        let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
        let account = account_id.map(|id| json!({"id": id, "name": name}));
        let payload = json!({
            "id": id,
            "type": kind,
            "created_at": Utc::now().to_rfc3339(),
            "account": account,
            "data": data,
        });
        let endpoints = (self.endpoints.iter())
            .filter(|e| e.config.wants(kind, name))
            .map(|e| e.config.name.clone())
            .collect();
        Outgoing {
            id,
            kind: kind.to_owned(),
            account_id,
            payload: payload.to_string(),
            endpoints,
        }
    }

    async fn check_thresholds(&self, db: &Db, prices: &PriceBook, zone: Tz) -> anyhow::Result<()> {
        let now = Utc::now();
        for threshold in &self.config.thresholds {
            let Some(account) = store::accounts::find_by_name(db, &threshold.account).await? else {
                continue;
            };
            let figures = figures(db, prices, zone, &account, now).await?;
            let names = HashMap::from([(account.id, account.name.clone())]);
            let fired = webhooks::fired(db, account.id).await?;
            for rule in events::rules(threshold, &figures) {
                let was = fired.contains(&rule.key);
                if rule.holds && !was {
                    let event = self.outgoing(rule.event, Some(account.id), &names, rule.data);
                    let at = now.timestamp_millis();
                    webhooks::fire(db, account.id, &rule.key, &event, at).await?;
                } else if !rule.holds && was && rule.clears {
                    webhooks::rearm(db, account.id, &rule.key).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends the deliveries due, leased to this replica.
    async fn deliver(&self, db: &Db) -> anyhow::Result<()> {
        let now = Utc::now().timestamp_millis();
        let lease = now + self.config.timeout_ms as i64 + 30_000;
        for due in webhooks::lease(db, &self.owner, now, lease, 20).await? {
            let endpoint = self
                .endpoints
                .iter()
                .find(|e| e.config.name == due.endpoint);
            let started = Instant::now();
            let (status, error) = match endpoint {
                Some(endpoint) => self.send(endpoint, &due).await,
                None => (
                    None,
                    Some("the endpoint is no longer configured".to_owned()),
                ),
            };
            let delivered = status.is_some_and(|s| (200..300).contains(&s));
            if !delivered {
                self.failures.with_label_values(&[&due.endpoint]).inc();
            }
            let attempts = u32::try_from(due.attempts + 1).unwrap_or(u32::MAX);
            let retry_at_ms =
                (!delivered && endpoint.is_some() && attempts < self.config.max_attempts)
                    .then(|| now + self.wait(attempts).as_millis() as i64);
            let outcome = Outcome {
                at_ms: now,
                status,
                error: error.as_deref(),
                ms: started.elapsed().as_millis() as i64,
                delivered,
                retry_at_ms,
            };
            webhooks::attempted(db, &due, &self.owner, &outcome).await?;
        }
        Ok(())
    }

    /// The wait after the `attempts`th failed attempt: the base, doubled each time.
    fn wait(&self, attempts: u32) -> Duration {
        let base = Duration::from_millis(self.config.retry_base_ms);
        base.saturating_mul(1 << attempts.saturating_sub(1).min(20))
            .min(MAX_WAIT)
    }

    /// One attempt: the status, or why none came.
    async fn send(&self, endpoint: &Endpoint, due: &Due) -> (Option<u16>, Option<String>) {
        let timestamp = Utc::now().timestamp();
        let body = Bytes::from(due.payload.clone());
        let signature = sign::signature(&endpoint.secret, &due.event_id, timestamp, &body);
        let request = http::Request::post(endpoint.url.clone())
            .header("content-type", "application/json")
            .header("user-agent", "tollgate-webhooks")
            .header("webhook-id", &due.event_id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(Full::new(body));
        let request = match request {
            Ok(request) => request,
            Err(e) => return (None, Some(e.to_string())),
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status();
                let error = (!status.is_success()).then(|| format!("answered {status}"));
                (Some(status.as_u16()), error)
            }
            Ok(Err(e)) => (None, Some(e.to_string())),
            Err(_) => (None, Some(format!("no answer within {timeout:?}"))),
        }
    }
}

/// What an audit entry tells receivers: the thing as it is after the change.
fn audited(entry: &Audited) -> Value {
    let after = (entry.after.as_deref())
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .unwrap_or(Value::Null);
    json!({"target": entry.target, "object": after})
}

/// An account's figures for its thresholds.
async fn figures(
    db: &Db,
    prices: &PriceBook,
    zone: Tz,
    account: &store::accounts::Account,
    now: DateTime<Utc>,
) -> anyhow::Result<events::Figures> {
    let funds = store::funds::of(db, account.id).await?;
    let month = Month::containing(now, zone);
    let (start, end) = month.bounds(zone);
    let by = store::rollups::By {
        zone: Some(zone),
        ..Default::default()
    };
    let scope = store::rollups::Scope::Account(account.id);
    let totals = store::rollups::totals(db, scope, store::to_ms(start), store::to_ms(end), by);
    let month_cost = invoice::cost_of_sums(&totals.await?, prices)?;
    let expiring = (store::grants::of_account(db, account.id).await?.into_iter())
        .filter(|g| g.state == "open" && g.remaining > Decimal::ZERO)
        .filter_map(|g| {
            let expires = g.expires_at?;
            Some((
                g.id,
                g.remaining,
                expires.to_rfc3339(),
                (expires - now).num_days(),
            ))
        })
        .collect();
    let credit_limit = match account.billing_mode {
        store::accounts::BillingMode::Postpaid => account.credit_limit,
        store::accounts::BillingMode::Prepaid => None,
    };
    Ok(events::Figures {
        spendable: funds.spendable()?,
        balance: funds.balance()?,
        credit_limit,
        month: month.to_string(),
        month_cost,
        expiring,
    })
}
