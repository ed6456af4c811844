//! The PostgreSQL ledger's change signal: a version per topic in table `changes`, raised
//! with every change and announced with `NOTIFY` on channel `tollgate_<topic>`. Each
//! process keeps the highest version it has seen: a listener task raises it on each
//! notification, reloads it after a reconnection (notifications sent meanwhile are lost),
//! and polls it every `POLL` as the backstop. A version only ever goes up.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::{Stamp, Topic};

/// How often the version is read even without a notification.
const POLL: Duration = Duration::from_secs(2);

/// How long an announcement waits to see itself come back before it returns anyway.
const SETTLE_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct PgSignal {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pool: PgPool,
    topic: Topic,
    /// The highest version seen.
    version: AtomicI64,
    /// The listener task has been started (on the first `stamp`).
    listening: AtomicBool,
    /// The listener raised the version.
    raised: Notify,
}

impl Shared {
    fn raise(&self, version: i64) {
        if self.version.fetch_max(version, Ordering::AcqRel) < version {
            self.raised.notify_waiters();
        }
    }

    async fn reload(&self) -> Result<(), sqlx::Error> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM changes WHERE topic = $1")
                .bind(self.topic)
                .fetch_optional(&self.pool)
                .await?;
        self.raise(version.unwrap_or(0));
        Ok(())
    }
}

fn channel(topic: Topic) -> String {
    format!("tollgate_{topic}")
}

impl PgSignal {
    pub fn new(pool: &PgPool, topic: Topic) -> PgSignal {
        PgSignal {
            shared: Arc::new(Shared {
                pool: pool.clone(),
                topic,
                version: AtomicI64::new(0),
                listening: AtomicBool::new(false),
                raised: Notify::new(),
            }),
        }
    }

    /// Raises the topic's version and notifies every listener, then waits (at most
    /// `SETTLE_MAX`) until this process's own listener has heard it: the others hear it
    /// through the same server at about the same time.
    pub async fn announce(&self) {
        let shared = &*self.shared;
        let bumped = sqlx::query_scalar(
            "WITH bumped AS (
                 INSERT INTO changes (topic, version) VALUES ($1, 1)
                 ON CONFLICT (topic) DO UPDATE SET version = changes.version + 1
                 RETURNING version),
             notified AS (SELECT pg_notify($2, version::text) FROM bumped)
             SELECT version FROM bumped, notified",
        )
        .bind(shared.topic)
        .bind(channel(shared.topic))
        .fetch_one(&shared.pool)
        .await;
        let version: i64 = match bumped {
            Ok(version) => version,
            Err(e) => {
                tracing::error!(topic = shared.topic, error = %e, "cannot announce a change");
                return;
            }
        };
        if !shared.listening.load(Ordering::Acquire) {
            shared.raise(version);
            return;
        }
        let heard = async {
            loop {
                let raised = shared.raised.notified();
                if shared.version.load(Ordering::Acquire) >= version {
                    return;
                }
                raised.await;
            }
        };
        if tokio::time::timeout(SETTLE_MAX, heard).await.is_err() {
            tracing::warn!(
                topic = shared.topic,
                "a change's notification did not come back in time"
            );
            shared.raise(version);
        }
    }

    pub fn stamp(&self) -> Stamp {
        let shared = &self.shared;
        if !shared.listening.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(listen(Arc::downgrade(shared)));
                }
                Err(_) => shared.listening.store(false, Ordering::Release),
            }
        }
        Stamp::Version(shared.version.load(Ordering::Acquire))
    }
}

/// Raises the version of `shared`'s topic as changes are announced, until the signal is
/// dropped.
async fn listen(shared: Weak<Shared>) {
    let mut listener: Option<PgListener> = None;
    let mut poll = tokio::time::interval(POLL);
    loop {
        let Some(signal) = shared.upgrade() else {
            return;
        };
        if listener.is_none() {
            match connect(&signal).await {
                Ok(connected) => listener = Some(connected),
                Err(e) => {
                    tracing::warn!(topic = signal.topic, error = %e, "cannot listen for changes; polling")
                }
            }
        }
        let received = async {
            match listener.as_mut() {
                Some(l) => l.try_recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = received => match received {
                Ok(Some(notification)) => {
                    if let Ok(version) = notification.payload().parse() {
                        signal.raise(version);
                    }
                }
                // Reconnected: what was announced meanwhile was not heard.
                Ok(None) => {
                    let _ = signal.reload().await;
                }
                Err(e) => {
                    tracing::warn!(topic = signal.topic, error = %e, "lost the change listener; polling");
                    listener = None;
                }
            },
            _ = poll.tick() => {
                if let Err(e) = signal.reload().await {
                    tracing::warn!(topic = signal.topic, error = %e, "cannot read the change version");
                }
            }
        }
    }
}

/// A listener on the topic's channel, and the version as it stands once it listens.
async fn connect(signal: &Shared) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(&signal.pool).await?;
    listener.listen(&channel(signal.topic)).await?;
    signal.reload().await?;
    Ok(listener)
}
