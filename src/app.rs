//! The application at the top of the house: the router (the middleware order written down
//! once) and the build/run life cycle that tests use to boot the real gateway on port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::RwLock;

use anyhow::{Context, bail};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::auth::cache::KeyCache;
use crate::auth::jwt::AdminAuth;
use crate::billing::PriceBook;
use crate::config::Config;
use crate::domain::prices;
use crate::limits::Limits;
use crate::limits::spending::Spending;
use crate::metering::{Ledger, LedgerWriter};
use crate::metrics::Metrics;
use crate::proxy::handlers;
use crate::server::{self, ConnectionLimits};
use crate::state::{App, AppState};
use crate::store;
use crate::store::health::Health;
use crate::store::signal::ChangeSignal;
use crate::upstream::Upstreams;

/// The router with its fallback; the one place the route table is assembled. The console
/// is on it unless it is off or has its own address (`console_router`).
pub fn router(state: AppState) -> Router {
    let console = &state.config().console;
    let console = if console.enabled && console.listen.is_none() {
        crate::console::router()
    } else {
        Router::new()
    };
    handlers::router()
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            crate::ops::count_rejections,
        ))
        // axum's own rejections of paths and queries (admin ids, filters) are plain text:
        // given the OpenAI shape there, off the client routes' hot path.
        .merge(admin::router().layer(axum::middleware::map_response(crate::ops::shape_errors)))
        .merge(crate::ops::router())
        .merge(console)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
}

/// The console alone, for its own address (`console.listen`).
pub fn console_router(state: AppState) -> Router {
    crate::console::router()
        .fallback(handlers::not_found)
        .with_state(state)
}

pub struct Application {
    listener: TcpListener,
    /// The console's own listener, when `console.listen` is set.
    console_listener: Option<TcpListener>,
    state: AppState,
    ledger_writer: LedgerWriter,
    connection_limits: ConnectionLimits,
}

impl Application {
    /// Opens the database, records the price tables, builds the upstreams and binds the
    /// listener (`server.listen`; port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        install_tls_provider();
        let db = store::open(&config).await?;
        // Everything is checked before the price tables are recorded: a recorded version
        // is kept forever, so a configuration that cannot serve records none.
        let entries = prices::read(&config)?;
        let recorded = PriceBook::new(store::prices::all(&db).await?);
        for up in &config.upstreams {
            let deployment = up.deployment.as_deref();
            let in_tables = entries.iter().any(|e| {
                e.model == up.model
                    && (e.chip == up.chip || e.chip == "*")
                    && (e.deployment.as_deref() == deployment
                        || (e.deployment.is_none() && (deployment.is_none() || up.pair_price)))
            });
            if !in_tables && !recorded.covers(&up.model, &up.chip, deployment, up.pair_price) {
                match deployment {
                    Some(d) => bail!(
                        "deployment {d} has no price: add an entry with deployment = \"{d}\" \
                         to {}, or set pair_price = true on it to bill it at {}/{}'s price",
                        config.pricing.dir.display(),
                        up.model,
                        up.chip
                    ),
                    None => bail!(
                        "upstream {}/{} has no price: add it (or a '*' chip entry) to {}",
                        up.model,
                        up.chip,
                        config.pricing.dir.display()
                    ),
                }
            }
        }
        let upstreams = Upstreams::build(&config)?;
        let admin_auth = AdminAuth::from_config(&config.admin)?;
        let metrics_token = config.metrics.bearer_token()?;
        prices::record(&config, &db, &entries).await?;
        let book = PriceBook::new(store::prices::all(&db).await?);
        for up in config
            .upstreams
            .iter()
            .filter(|u| u.reserved_from.is_some())
        {
            let deployment = up.deployment.as_deref();
            let hourly = (book.all().into_iter()).any(|v| {
                v.entry.deployment.as_deref() == deployment && !v.entry.per_hour.is_zero()
            });
            if !hourly {
                tracing::warn!(
                    deployment,
                    "reserved_from is set but no price of this deployment names per_hour: its reserved hours cost nothing"
                );
            }
        }
        if admin_auth.is_none() {
            tracing::warn!(
                "admin API off: set {} (or admin.jwt_secret_file, admin.jwt_public_key_file) to enable it",
                config.admin.jwt_secret_env
            );
        }
        let metrics = Arc::new(Metrics::new());
        let (ledger, ledger_writer) =
            Ledger::spawn(&config.database, &config.ledger, metrics.clone()).await?;
        let connection_limits = ConnectionLimits::from_config(&config.server);
        let addr = config.server.listen;
        let listener =
            crate::server::listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let console_listener = match config.console.listen {
            Some(addr) if config.console.enabled => Some(
                crate::server::listen(addr)
                    .with_context(|| format!("cannot listen on {addr} (console.listen)"))?,
            ),
            _ => None,
        };
        tokio::task::spawn_blocking(crate::metering::estimate::warm_up);
        let url = &config.database.url;
        let replica = crate::store::replicas::new_name();
        let prices_signal = ChangeSignal::new(&db, url, "prices");
        let accounts_signal = ChangeSignal::new(&db, url, "accounts");
        let keys = KeyCache::new(ChangeSignal::new(&db, url, "keys"));
        let health = Health::default();
        let state = AppState(Arc::new(App {
            keys,
            limits: Limits::new(
                config.limits.clone(),
                &config.redis,
                metrics.redis_errors.clone(),
                plan_history(&db),
            )?,
            spending: Spending::new(&db, ledger.clone(), &config.limits, &replica, &health),
            health,
            replica,
            metrics,
            admin_auth,
            metrics_token,
            sign_in_throttle: crate::domain::people::throttle::Throttle::new(
                config.console.throttle_failures,
                std::time::Duration::from_secs(u64::from(config.console.throttle_minutes) * 60),
            ),
            config,
            db,
            ledger,
            prices: RwLock::new(Arc::new(book)),
            prices_signal,
            accounts_signal,
            grants_issued: Default::default(),
            upstreams,
            tasks: TaskTracker::new(),
        }));
        crate::state::spawn_maintenance(&state);
        let app = Arc::downgrade(&state.0);
        state
            .health()
            .watch(state.db().clone(), move || app.strong_count() > 0);
        crate::proxy::tasks::spawn_expiry(&state);
        spawn_upkeep(&state);
        spawn_reserved_hours(&state);
        spawn_grant_upkeep(&state);
        spawn_alerts(&state)?;
        Ok(Application {
            listener,
            console_listener,
            state,
            ledger_writer,
            connection_limits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The console's own address, when it has one (`console.listen`).
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then drains: in-flight requests finish, exchanges
    /// finish, and the ledger commits everything queued before this returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            console_listener,
            state,
            ledger_writer,
            connection_limits,
        } = self;
        let metrics = state.0.metrics.clone();
        let router = router(state.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let console = console_listener.map(|listener| {
            let router = console_router(state.clone());
            let stopped = stop.clone().cancelled_owned();
            tokio::spawn(server::serve(
                listener,
                router,
                connection_limits,
                metrics.clone(),
                stopped,
            ))
        });
        let stopper = stop.clone();
        let shutdown = async move {
            shutdown.await;
            stopper.cancel();
        };
        server::serve(listener, router, connection_limits, metrics, shutdown).await;
        if let Some(console) = console {
            let _ = console.await;
        }
        state.tasks().close();
        state.tasks().wait().await;
        ledger_writer
            .shutdown()
            .await
            .context("the ledger writer thread died")?;
        if let Err(e) = crate::store::replicas::leave(state.db(), &state.0.replica).await {
            tracing::warn!(error = %e, "cannot remove this replica's heartbeat");
        }
        Ok(())
    }
}

/// Chooses ring as the TLS crypto provider for outbound HTTPS; must run before any HTTP
/// client is built. Harmless to call again.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Charges private deployments' reserved hours each minute (`domain::reservations`): an
/// hour is charged within a minute of its start, long before its invoice can be final.
/// Opens credit grants at their effective time and closes them at their expiry, waking for
/// the next one due, a grant issued, or each minute.
fn spawn_grant_upkeep(state: &AppState) {
    let app = std::sync::Arc::downgrade(&state.0);
    let issued = state.grants_issued();
    tokio::spawn(async move {
        let minute = std::time::Duration::from_secs(60);
        loop {
            let Some(app) = app.upgrade() else { break };
            let state = AppState(app);
            let wait = match crate::domain::grants::upkeep(state.db(), state.spending()).await {
                Ok(Some(due)) => {
                    let ms = due - chrono::Utc::now().timestamp_millis();
                    std::time::Duration::from_millis(ms.clamp(0, 60_000) as u64)
                }
                Ok(None) => minute,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open or close credit grants now");
                    minute
                }
            };
            drop(state);
            let sleep = tokio::time::sleep(wait.max(std::time::Duration::from_millis(20)));
            tokio::select! {
                () = sleep => {}
                () = issued.notified() => {}
            }
        }
    });
}

/// Makes and sends webhook events each second (`alerts`), if any endpoint is configured.
fn spawn_alerts(state: &AppState) -> anyhow::Result<()> {
    let failures = state.metrics().webhook_failures.clone();
    let alerts = crate::alerts::Alerts::new(&state.config().alerts, state.replica(), failures)?;
    if !alerts.enabled() {
        return Ok(());
    }
    let app = std::sync::Arc::downgrade(&state.0);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(app) = app.upgrade() else { break };
            let state = AppState(app);
            let prices = state.prices();
            let zone = state.config().billing.zone();
            if let Err(e) = alerts.tick(state.db(), &prices, zone).await {
                tracing::warn!(error = %e, "cannot make or send webhook events now");
            }
        }
    });
    Ok(())
}

fn spawn_reserved_hours(state: &AppState) {
    if !state
        .config()
        .upstreams
        .iter()
        .any(|u| u.reserved_from.is_some())
    {
        return;
    }
    let app = std::sync::Arc::downgrade(&state.0);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(app) = app.upgrade() else { break };
            let state = AppState(app);
            let config = state.config();
            let prices = state.prices();
            let charged = crate::domain::reservations::charge(
                state.db(),
                &config.upstreams,
                &prices,
                state.spending(),
                config.billing.zone(),
                chrono::Utc::now(),
            );
            match charged.await {
                Ok(c) if c.hours == 0 => {}
                Ok(c) => tracing::info!(hours = c.hours, "deployments' reserved hours charged"),
                Err(e) => tracing::warn!(error = %e, "cannot charge reserved hours now"),
            }
        }
    });
}

/// The ledger's hourly upkeep (the first a minute after start): expired console sessions
/// and the wrong passwords sign-in's throttle no longer counts are removed, the months ahead of the usage records' partitions are created
/// (PostgreSQL, `store::partitions`), and with
/// `retention.keep_days` the records older than it are retired, one replica at a time
/// (`domain::retention::keep_days`).
fn spawn_upkeep(state: &AppState) {
    let config = state.config().clone();
    let throttle = *state.sign_in_throttle();
    let db = state.db().clone();
    let zone = config.billing.zone();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut tick = tokio::time::interval_at(start, std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let lifetimes =
                crate::domain::people::sessions::Lifetimes::from_config(&config.console);
            if let Err(e) = crate::domain::people::sessions::sweep(&db, lifetimes, &throttle).await
            {
                tracing::warn!(error = %e, "cannot remove expired console sessions");
            }
            match store::partitions::keep_ahead(&db, chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(created) => tracing::info!(created, "usage records' monthly partitions created"),
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the usage records' monthly partitions")
                }
            }
            let (Some(days), Some(dir)) =
                (config.retention.keep_days, &config.retention.archive_dir)
            else {
                continue;
            };
            let run = store::retire::one_at_a_time(&db, async || {
                crate::domain::retention::keep_days(&db, zone, days, dir, chrono::Utc::now()).await
            });
            match run.await {
                Ok(Some(Some(retired))) => tracing::info!(
                    archived = retired.archived,
                    retired = retired.deleted,
                    "usage records older than retention.keep_days retired"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot retire old usage records")
                }
            }
        }
    });
}

/// Where quota plans' counts start: the ledger's hourly sums of the holder.
fn plan_history(db: &crate::store::Db) -> crate::limits::plans::History {
    use crate::limits::plans::Holder;
    let db = db.clone();
    std::sync::Arc::new(move |holder, since_ms| {
        let db = db.clone();
        Box::pin(async move {
            let (account, lineage) = match holder {
                Holder::Account(id) => (id, 0),
                Holder::Key { account, lineage } => (account, lineage),
            };
            let hours = crate::store::rollups::hours_of(&db, account, lineage, since_ms).await?;
            Ok(hours)
        })
    })
}
