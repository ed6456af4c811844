//! Whether the database answers, as a probe in the background last found it (`watch`).
//! `/readyz` reports it without waiting on the database, and requests that need the ledger
//! (spending holds in PostgreSQL, task submissions) check it first: while the database is
//! known down they fail at once instead of waiting out the pool's acquire timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Db, ping};

/// How often the probe asks, and how long one answer may take before the database counts
/// as down.
const EVERY: Duration = Duration::from_secs(1);
const PATIENCE: Duration = Duration::from_millis(900);

/// Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct Health {
    up: Arc<AtomicBool>,
}

impl Default for Health {
    /// Up until the probe says otherwise: a database that answered at start-up.
    fn default() -> Self {
        Health {
            up: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Asks the database once, within `PATIENCE`, and keeps the answer.
    pub async fn probe(&self, db: &Db) -> bool {
        let up = tokio::time::timeout(PATIENCE, ping(db))
            .await
            .unwrap_or(false);
        if up != self.up.swap(up, Ordering::Relaxed) {
            match up {
                true => tracing::info!("the database answers again"),
                false => tracing::warn!("the database does not answer"),
            }
        }
        up
    }

    /// Probes `db` every second for as long as `alive` says.
    pub fn watch(&self, db: Db, alive: impl Fn() -> bool + Send + 'static) {
        let health = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while alive() {
                tick.tick().await;
                health.probe(&db).await;
            }
        });
    }
}
