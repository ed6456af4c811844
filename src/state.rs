//! The parts every request shares (`AppState`): configuration, ledger, price book,
//! key cache, limits, spending, metrics, upstreams. Below every handler; the router that
//! hands it to them is assembled in `app`.

use std::sync::Arc;

use parking_lot::RwLock;
use tokio_util::task::TaskTracker;

use crate::auth::cache::KeyCache;
use crate::auth::jwt::AdminAuth;
use crate::billing::PriceBook;
use crate::config::Config;
use crate::limits::Limits;
use crate::limits::spending::Spending;
use crate::metering::Ledger;
use crate::metrics::Metrics;
use crate::server::ApiError;
use crate::store::health::Health;
use crate::store::signal::ChangeSignal;
use crate::store::{self, Db};
use crate::upstream::Upstreams;

pub struct App {
    pub(crate) config: Config,
    pub(crate) db: Db,
    /// Whether `db` answers, kept current by a probe in the background.
    pub(crate) health: Health,
    pub(crate) ledger: Ledger,
    /// Swapped whole when `tollgate prices sync` (here or elsewhere) appends versions.
    pub(crate) prices: RwLock<Arc<PriceBook>>,
    pub(crate) prices_signal: ChangeSignal,
    /// Moved by account changes made in other processes (CLI top-ups, billing settings).
    pub(crate) accounts_signal: ChangeSignal,
    /// Wakes the grants' upkeep: a grant was issued (here, or in another process).
    pub(crate) grants_issued: Arc<tokio::sync::Notify>,
    pub(crate) upstreams: Upstreams,
    pub(crate) keys: KeyCache,
    pub(crate) limits: Limits,
    pub(crate) spending: Spending,
    pub(crate) metrics: Arc<Metrics>,
    /// This gateway's name among the replicas on the ledger (heartbeats, holds).
    pub(crate) replica: String,
    /// `None` when no admin key is configured: the admin API answers 503.
    pub(crate) admin_auth: Option<AdminAuth>,
    /// Wrong console passwords counted per email and per address.
    pub(crate) sign_in_throttle: crate::domain::people::throttle::Throttle,
    /// The bearer token `/metrics` requires (`metrics.bearer_token_*`), if any.
    pub(crate) metrics_token: Option<String>,
    /// Exchanges run outside the connection that started them (so a client leaving cannot
    /// cancel metering); shutdown waits for them here.
    pub(crate) tasks: TaskTracker,
}

/// Cheap to clone; handed to every handler.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<App>);

impl AppState {
    pub fn config(&self) -> &Config {
        &self.0.config
    }
    pub fn db(&self) -> &Db {
        &self.0.db
    }
    pub fn ledger(&self) -> &Ledger {
        &self.0.ledger
    }
    /// Whether the database answered the background probe last time.
    pub fn health(&self) -> &Health {
        &self.0.health
    }

    /// The database once every usage record committed so far is in it (see `Ledger::flush`):
    /// what readers of usage read from.
    pub async fn usage_db(&self) -> Result<&Db, ApiError> {
        self.0.ledger.flush().await?;
        Ok(&self.0.db)
    }
    /// The price book now; cheap (an `Arc` clone).
    pub fn prices(&self) -> Arc<PriceBook> {
        self.0.prices.read().clone()
    }
    pub fn upstreams(&self) -> &Upstreams {
        &self.0.upstreams
    }
    pub fn tasks(&self) -> &TaskTracker {
        &self.0.tasks
    }
    pub fn keys(&self) -> &KeyCache {
        &self.0.keys
    }
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }
    pub fn spending(&self) -> &Spending {
        &self.0.spending
    }
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
    pub fn admin_auth(&self) -> Option<&AdminAuth> {
        self.0.admin_auth.as_ref()
    }
    pub fn sign_in_throttle(&self) -> &crate::domain::people::throttle::Throttle {
        &self.0.sign_in_throttle
    }
    /// This gateway's name among the replicas.
    pub fn replica(&self) -> &str {
        &self.0.replica
    }
    pub fn metrics_token(&self) -> Option<&str> {
        self.0.metrics_token.as_deref()
    }
    /// A grant was issued: its upkeep looks at once for when it opens or expires.
    pub fn grant_issued(&self) {
        self.0.grants_issued.notify_one();
    }
    pub(crate) fn grants_issued(&self) -> Arc<tokio::sync::Notify> {
        self.0.grants_issued.clone()
    }
}

/// Once a second: reloads the price book if another process synced prices, and account
/// balances if another process changed accounts. Every 5 s: writes this replica's
/// heartbeat (the live count divides rate limits while Redis is down) and voids spending
/// holds that expired without their record (PostgreSQL; one replica at a time). Every 30 s:
/// drops limiter state that a fresh limiter would have anyway, so memory stays bounded with
/// many keys. Holds the state weakly: it ends with the application.
pub(crate) fn spawn_maintenance(state: &AppState) {
    let app = Arc::downgrade(&state.0);
    tokio::spawn(async move {
        let mut seen = app.upgrade().map(|a| a.prices_signal.stamp());
        let mut accounts_seen = app.upgrade().map(|a| a.accounts_signal.stamp());
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let replica = app.upgrade().map(|a| a.replica.clone()).unwrap_or_default();
        // Since when every heartbeat succeeded (`None` after a failed one).
        let mut beating_since = None;
        // Two heartbeats: long enough for every live replica to have written one since.
        let steady_after =
            std::time::Duration::from_millis(2 * store::replicas::BEAT_EVERY_MS as u64);
        for n in 0u64.. {
            tick.tick().await;
            let Some(app) = app.upgrade() else { break };
            let stamp = Some(app.prices_signal.stamp());
            if stamp != seen {
                match store::prices::all(&app.db).await {
                    Ok(versions) => {
                        *app.prices.write() = Arc::new(PriceBook::new(versions));
                        seen = stamp;
                        tracing::info!("price book reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload prices; keeping the current ones")
                    }
                }
            }
            let stamp = Some(app.accounts_signal.stamp());
            if stamp != accounts_seen {
                app.grants_issued.notify_one();
                match app.spending.refresh(&app.db).await {
                    Ok(()) => accounts_seen = stamp,
                    Err(e) => tracing::error!(error = %e, "cannot refresh account balances"),
                }
            }
            if n % (store::replicas::BEAT_EVERY_MS / 1000) as u64 == 0 {
                match store::replicas::beat(&app.db, &replica).await {
                    Ok(alive) => {
                        app.limits.set_live_replicas(alive);
                        beating_since.get_or_insert_with(std::time::Instant::now);
                    }
                    Err(e) => {
                        beating_since = None;
                        tracing::warn!(error = %e, "cannot write this replica's heartbeat");
                    }
                }
            }
            let steady = beating_since.is_some_and(|t| t.elapsed() >= steady_after);
            if n % 5 == 4
                && let Err(e) = app.spending.reconcile(app.ledger.spool_age(), steady).await
            {
                tracing::warn!(error = %e, "cannot void expired spending holds now");
            }
            if n % 30 == 29 {
                app.limits.sweep();
            }
        }
    });
}
