//! Every Prometheus metric tollgate exports, in one registry. Labels are bounded: models and
//! chips come from the configuration, statuses and reasons from fixed sets; never a key, an
//! account or a request id. Metrics are for dashboards: the ledger, not these floats, is
//! the record of money.

use std::time::Duration;

use prometheus::{
    Counter, CounterVec, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use crate::billing::record::{UsageRecord, UsageSource};

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The reasons of `tollgate_rejected_requests_total` (see `ops::count_rejections`).
pub const REJECTION_REASONS: [&str; 8] = [
    "unauthorized",
    "rate_limit",
    "spending_limit",
    "forbidden",
    "not_found",
    "too_large",
    "bad_request",
    "timeout",
];

/// The series of one (model, chip) pair, held by its upstream.
pub struct PairMetrics {
    /// prompt, completion, cached.
    reported: [IntCounter; 3],
    estimated: [IntCounter; 3],
    /// Records whose reported usage was not billed as reported: suspect, capped.
    adjusted: [IntCounter; 2],
    cost: Counter,
    duration: Histogram,
    time_to_first_token: Histogram,
    pub upstream_latency: Histogram,
}

/// Every metric, each with its help text (written once, where it is created in `new`).
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub tokens: IntCounterVec,
    pub cost: CounterVec,
    pub request_duration: HistogramVec,
    pub upstream_latency: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub rejected: IntCounterVec,
    pub usage_adjusted: IntCounterVec,
    pub client_connections: IntGauge,
    pub refused_connections: IntCounter,
    pub active_streams: IntGauge,
    pub ledger_queue_depth: IntGauge,
    /// How long the oldest record not yet in the database has waited in the spool.
    pub ledger_spool_age: Gauge,
    pub ledger_batch_size: Histogram,
    pub ledger_commit_seconds: Histogram,
    pub ledger_import_size: Histogram,
    pub ledger_import_seconds: Histogram,
    /// Imports that failed (the database unreachable or refusing): their records wait in
    /// the journal and are tried again.
    pub ledger_import_failures: IntCounter,
    /// Redis calls of the rate limits that failed or timed out.
    pub redis_errors: IntCounter,
    /// Webhook deliveries that failed (no answer, or not 2xx), by endpoint.
    pub webhook_failures: IntCounterVec,
    /// 1 while rate limits are counted by the fallback (Redis configured, not answering).
    pub limits_fallback: IntGauge,
    /// Replicas alive on the ledger (heartbeats), as this one last counted them.
    pub live_replicas: IntGauge,
    /// Spending holds this gateway took that are not settled yet.
    pub holds_pending: IntGauge,
    /// Asynchronous tasks submitted and not yet polled to their end (in the ledger).
    pub tasks_pending: IntGauge,
    /// Tasks never polled to their end that expired (at no cost).
    pub tasks_expired: IntCounter,
    pub key_cache: [IntCounter; 2],
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("tollgate".into()), None).expect("a valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram_vec = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, &["model", "chip"]).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let cost = CounterVec::new(
            Opts::new("cost_cny_total", "Cost billed, in CNY, by model and chip."),
            &["model", "chip"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(cost.clone()))
            .expect("registered once");
        Metrics {
            requests: counter(
                "requests_total",
                "Proxied requests by route, model, chip and final status.",
                &["route", "model", "chip", "status"],
            ),
            tokens: counter(
                "tokens_total",
                "Tokens billed by model, chip, kind (prompt, completion, cached) and source (reported, estimated).",
                &["model", "chip", "kind", "source"],
            ),
            cost,
            request_duration: histogram_vec(
                "request_duration_seconds",
                "Duration of proxied requests, through the backend, by model and chip.",
            ),
            upstream_latency: histogram_vec(
                "upstream_latency_seconds",
                "Time from sending a request to the backend to its response head, by model and chip.",
            ),
            time_to_first_token: histogram_vec(
                "time_to_first_token_seconds",
                "Time from request to the first streamed chunk, by model and chip.",
            ),
            rejected: {
                let rejected = counter(
                    "rejected_requests_total",
                    "Requests refused before reaching a backend, by reason.",
                    &["reason"],
                );
                // Every series exists from the start: a fresh gateway's scrape has them all.
                for reason in REJECTION_REASONS {
                    rejected.with_label_values(&[reason]);
                }
                rejected
            },
            usage_adjusted: counter(
                "usage_adjusted_total",
                "Records whose reported usage was not billed as reported, by model, chip and reason (suspect: beyond metering.max_reported_tokens, the estimate is billed; capped: beyond what the spending hold covers).",
                &["model", "chip", "reason"],
            ),
            client_connections: gauge("client_connections", "Client connections open now."),
            refused_connections: {
                let c = IntCounter::new(
                    "refused_connections_total",
                    "Client connections closed at once because server.max_connections were open.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            active_streams: gauge("active_streams", "Streams being relayed now."),
            ledger_queue_depth: gauge(
                "ledger_queue_depth",
                "Usage records committed to the journal and not yet imported into the database (the spool's backlog).",
            ),
            ledger_spool_age: {
                let g = Gauge::new(
                    "ledger_spool_age_seconds",
                    "Age of the oldest usage record committed to the journal and not yet imported into the database (0 when the spool is empty); growing while the database answers means shipping has stalled.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            ledger_batch_size: histogram(
                "ledger_batch_records",
                "Usage records made durable per ledger commit (one fdatasync of the usage journal; one record with synchronous = normal).",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            ledger_commit_seconds: histogram(
                "ledger_commit_seconds",
                "Time to commit one ledger batch (the fdatasync of the usage journal; with synchronous = normal, one append).",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ],
            ),
            ledger_import_size: histogram(
                "ledger_import_records",
                "Usage records per import from the journal into the database (one transaction).",
                vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0],
            ),
            ledger_import_seconds: histogram(
                "ledger_import_seconds",
                "Time to import one batch of usage records into the database.",
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            ),
            ledger_import_failures: {
                let c = IntCounter::new(
                    "ledger_import_failures_total",
                    "Imports of usage records from the journal that failed (database unreachable or refusing); the records wait in the journal and are tried again.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            redis_errors: {
                let c = IntCounter::new(
                    "redis_errors_total",
                    "Rate-limit calls to Redis that failed or timed out (the fallback counted them).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            webhook_failures: counter(
                "webhook_failures_total",
                "Attempts to deliver a webhook event that failed (no answer in time, or not 2xx), by endpoint.",
                &["endpoint"],
            ),
            limits_fallback: gauge(
                "limits_fallback",
                "1 while rate limits are counted by the fallback because Redis does not answer.",
            ),
            live_replicas: gauge(
                "live_replicas",
                "Replicas alive on the ledger (heartbeats in PostgreSQL; 1 on SQLite).",
            ),
            holds_pending: gauge(
                "holds_pending",
                "Spending holds this gateway took that are neither posted nor voided yet (PostgreSQL: its rows in holds).",
            ),
            tasks_pending: gauge(
                "tasks_pending",
                "Asynchronous tasks submitted and not yet polled to their end, in the ledger (all gateways').",
            ),
            tasks_expired: {
                let c = IntCounter::new(
                    "tasks_expired_total",
                    "Tasks never polled to their end that this gateway expired, recorded as timeout at no cost.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            key_cache: {
                let lookups = counter(
                    "key_cache_lookups_total",
                    "API key lookups by result (hit, miss).",
                    &["result"],
                );
                ["hit", "miss"].map(|result| lookups.with_label_values(&[result]))
            },
            registry,
        }
    }

    /// The per-(model, chip) series, resolved once: a label lookup hashes every label.
    pub fn pair(&self, model: &str, chip: &str) -> PairMetrics {
        let labels = [model, chip];
        let tokens = |source: &str| {
            ["prompt", "completion", "cached"]
                .map(|kind| self.tokens.with_label_values(&[model, chip, kind, source]))
        };
        PairMetrics {
            reported: tokens(UsageSource::Reported.as_str()),
            estimated: tokens(UsageSource::Estimated.as_str()),
            adjusted: ["suspect", "capped"].map(|reason| {
                self.usage_adjusted
                    .with_label_values(&[model, chip, reason])
            }),
            cost: self.cost.with_label_values(&labels),
            duration: self.request_duration.with_label_values(&labels),
            time_to_first_token: self.time_to_first_token.with_label_values(&labels),
            upstream_latency: self.upstream_latency.with_label_values(&labels),
        }
    }

    /// Counts a finished request from its ledger record; `pair` holds the series of the
    /// record's model and chip. `duration` and `ttft` come from the monotonic clock, at full
    /// resolution (the record keeps whole milliseconds).
    pub fn observe(
        &self,
        pair: &PairMetrics,
        route: &str,
        record: &UsageRecord,
        duration: Duration,
        ttft: Option<Duration>,
    ) {
        let (model, chip) = (record.model.as_str(), record.chip.as_str());
        self.requests
            .with_label_values(&[route, model, chip, record.status.as_str()])
            .inc();
        let tokens = match record.usage_source {
            UsageSource::Reported => Some(&pair.reported),
            UsageSource::Capped => {
                pair.adjusted[1].inc();
                Some(&pair.reported)
            }
            UsageSource::Estimated => Some(&pair.estimated),
            UsageSource::Suspect => {
                pair.adjusted[0].inc();
                Some(&pair.estimated)
            }
            // Imports are not traffic through this gateway.
            UsageSource::None | UsageSource::Imported => None,
        };
        if let Some([prompt, completion, cached]) = tokens {
            let t = record.tokens;
            prompt.inc_by(t.prompt);
            completion.inc_by(t.completion);
            cached.inc_by(t.cached);
        }
        // Display only: the exact amount is in the ledger.
        let cost: f64 = record.cost.try_into().unwrap_or(0.0);
        pair.cost.inc_by(cost);
        pair.duration.observe(duration.as_secs_f64());
        if let Some(ttft) = ttft {
            pair.time_to_first_token.observe(ttft.as_secs_f64());
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("text encoding does not fail")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
