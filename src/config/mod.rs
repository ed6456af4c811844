//! Typed settings: the TOML file (`--config`, default `./tollgate.toml`) with environment
//! overrides (`TOLLGATE_SECTION__KEY=value`), validated once at start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

mod alerts;
mod database;
mod env;
mod limits;
mod plans;
pub mod secrets;
mod upstreams;

pub use alerts::{AlertsConfig, EVENT_TYPES, ThresholdConfig, WebhookConfig};
pub use database::{Backend, DatabaseConfig, LedgerConfig, Synchronous};
pub use limits::{LimitStoreKind, LimitsConfig, PostpaidFallback, RedisConfig, RedisFallback};
pub use plans::{PlanConfig, PlanHolder, QuotaConfig};
pub use upstreams::{BaseUrl, Endpoint, StreamFormat, UpstreamConfig, check_name, timestamp};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub pricing: PricingConfig,
    #[serde(default)]
    pub metering: MeteringConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub billing: BillingConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
}

/// The console (`/console/`): where it is served and how long a sign-in lasts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console at all (on `server.listen`, or on `listen` when set).
    pub enabled: bool,
    /// A separate address for the console only (e.g. kept off the public port); unset:
    /// `/console/` on `server.listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// A session unused this long ends.
    pub idle_minutes: u32,
    /// A session ends this long after sign-in, however used.
    pub session_hours: u32,
    /// Wrong passwords for one email (or from one address) within `throttle_minutes`
    /// before sign-in is refused for the rest of that window.
    pub throttle_failures: u32,
    pub throttle_minutes: u32,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            listen: None,
            idle_minutes: 30,
            session_hours: 12,
            throttle_failures: 10,
            throttle_minutes: 15,
        }
    }
}

/// How long raw usage records stay in the ledger (`tollgate serve` retires older ones
/// each hour, as `tollgate usage retire` does; rollups, balances and invoices stay).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Keep the records of this many whole days (in `billing.timezone`) before today;
    /// unset: keep every record.
    pub keep_days: Option<u32>,
    /// Where the retired records are archived first, one gzip-compressed JSON-lines file
    /// per retirement (what `tollgate usage import` reads).
    pub archive_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// IANA timezone whose calendar months are the invoice periods.
    #[serde(deserialize_with = "zone")]
    pub timezone: chrono_tz::Tz,
    /// Finalizing an invoice waits this long after its period, for requests still running.
    pub finalize_grace_secs: i64,
    /// A grant every newly opened account gets (`[billing.welcome_grant]`), if set.
    pub welcome_grant: Option<WelcomeGrant>,
}

/// An amount of money in the configuration: a plain decimal string ("10.00"), never a
/// float, not negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(pub rust_decimal::Decimal);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let plain = !text.is_empty()
            && text.chars().all(|c| c.is_ascii_digit() || c == '.')
            && text.matches('.').count() <= 1;
        match text.parse::<rust_decimal::Decimal>() {
            Ok(value) if plain => Ok(Amount(value)),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not a plain amount, e.g. \"10.00\""
            ))),
        }
    }
}

/// The grant a new account gets, as DashScope gives new accounts a free allowance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WelcomeGrant {
    /// CNY, e.g. "10.00".
    pub amount: Amount,
    #[serde(default = "promotional")]
    pub kind: String,
    #[serde(default = "middle_priority")]
    pub priority: i32,
    /// Unset: it never expires.
    pub expires_after_days: Option<u32>,
    #[serde(default = "welcome_reason")]
    pub reason: String,
}

fn promotional() -> String {
    "promotional".into()
}

fn middle_priority() -> i32 {
    50
}

fn welcome_reason() -> String {
    "welcome grant".into()
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            timezone: chrono_tz::UTC,
            finalize_grace_secs: 3600,
            welcome_grant: None,
        }
    }
}

impl BillingConfig {
    pub fn zone(&self) -> chrono_tz::Tz {
        self.timezone
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Environment variable holding a bearer token `/metrics` requires; open when neither
    /// it nor `bearer_token_file` is set.
    pub bearer_token_env: Option<String>,
    /// A file holding that token instead (a mounted secret), read when the gateway starts.
    pub bearer_token_file: Option<PathBuf>,
}

impl MetricsConfig {
    /// The token `/metrics` requires, if one is configured; an error when one is named but
    /// cannot be read (the endpoint is never left open by a missing secret).
    pub fn bearer_token(&self) -> anyhow::Result<Option<String>> {
        let token = secrets::read(
            "metrics.bearer_token_file",
            self.bearer_token_env.as_deref(),
            self.bearer_token_file.as_deref(),
        )?;
        if token.is_none()
            && let Some(var) = &self.bearer_token_env
        {
            anyhow::bail!("metrics.bearer_token_env names {var}, which is not set");
        }
        Ok(token)
    }
}

/// The longest grace period a rotated key's old secret may have: a year.
pub const MAX_ROTATION_GRACE_SECS: i64 = 366 * 24 * 3600;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Environment variable holding the HS256 secret for admin tokens. When neither it,
    /// `jwt_secret_file` nor `jwt_public_key_file` is set, the admin API is off.
    pub jwt_secret_env: String,
    /// A file holding the HS256 secret instead (a mounted secret): read in place of
    /// `jwt_secret_env` when set.
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key accepting RS256 tokens from an existing identity provider.
    pub jwt_public_key_file: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// How long a rotated key keeps working.
    pub rotation_grace_secs: i64,
}

impl AdminConfig {
    /// Where the HS256 secret is read from, as the operator sets it.
    pub fn secret_source(&self) -> String {
        match &self.jwt_secret_file {
            Some(path) => format!("admin.jwt_secret_file ({})", path.display()),
            None => self.jwt_secret_env.clone(),
        }
    }

    /// The HS256 secret, if one is configured (`config::secrets`).
    pub fn jwt_secret(&self) -> anyhow::Result<Option<String>> {
        secrets::read(
            "admin.jwt_secret_file",
            Some(&self.jwt_secret_env),
            self.jwt_secret_file.as_deref(),
        )
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            jwt_secret_env: "TOLLGATE_ADMIN_SECRET".into(),
            jwt_secret_file: None,
            jwt_public_key_file: None,
            issuer: "tollgate".into(),
            audience: "tollgate-admin".into(),
            leeway_secs: 30,
            rotation_grace_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Request bodies above this get 413.
    pub max_request_bytes: usize,
    /// Uploaded files (ComfyUI's `upload/image`) above this get 413.
    pub max_upload_bytes: usize,
    /// Non-streamed backend bodies above this are refused (502): they could not be metered.
    pub max_response_bytes: usize,
    /// Client connections open at once; more are closed at once with a 503. Lowered at
    /// start to what the open-file limit allows (each may need a backend connection too).
    pub max_connections: usize,
    /// A new connection must send a complete request head within this; so must a kept-alive
    /// one once the first byte of its next request arrives.
    pub header_timeout_ms: u64,
    /// A kept-alive connection with no request in flight is closed after this.
    pub keep_alive_timeout_ms: u64,
    /// Longest pause between two pieces of a request body (408 beyond).
    pub body_idle_timeout_ms: u64,
    /// Longest time to receive a whole request body (408 beyond).
    pub body_timeout_ms: u64,
    /// Threads of the runtime that serves requests; 0 (default) is one per core, or
    /// `TOKIO_WORKER_THREADS` when set. Replicas sharing a small host with their database
    /// and each other do better with fewer each (bench/README.md).
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_request_bytes: 20 << 20,
            max_upload_bytes: 10 << 20,
            max_response_bytes: 64 << 20,
            max_connections: 10_000,
            header_timeout_ms: 10_000,
            keep_alive_timeout_ms: 60_000,
            body_idle_timeout_ms: 30_000,
            body_timeout_ms: 120_000,
            worker_threads: 0,
        }
    }
}

impl ServerConfig {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    pub fn keep_alive_timeout(&self) -> Duration {
        Duration::from_millis(self.keep_alive_timeout_ms)
    }
    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.body_idle_timeout_ms)
    }
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// Folder of `*.toml` price tables, relative to the working directory.
    pub dir: PathBuf,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            dir: "pricing".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectPolicy {
    /// Keep reading the backend (bounded) to obtain its reported usage, then bill it.
    Drain,
    /// Stop reading at once and bill an estimate of what was delivered.
    Abort,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeteringConfig {
    pub on_client_disconnect: DisconnectPolicy,
    /// Longest time spent draining a backend after its client left.
    pub drain_max_secs: u64,
    /// Most stream events read while draining.
    pub drain_max_events: usize,
    /// The most prompt or completion tokens one request may report. A backend reporting
    /// more is not believed: the record is marked `suspect` and billed for tollgate's
    /// estimate. At most `MAX_REPORTED_TOKENS`.
    pub max_reported_tokens: u64,
}

/// The largest `max_tokens` a request is taken to ask for; larger ones are clamped to it
/// (no model answers with more, and a reservation must stay far from `u64::MAX`).
pub const MAX_COMPLETION_TOKENS: u64 = 1_000_000;

/// The ceiling of `metering.max_reported_tokens`: with it, no sum of a year of records
/// comes near `i64::MAX`.
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

impl Default for MeteringConfig {
    fn default() -> Self {
        MeteringConfig {
            on_client_disconnect: DisconnectPolicy::Drain,
            drain_max_secs: 30,
            drain_max_events: 100_000,
            max_reported_tokens: 2_000_000,
        }
    }
}

impl MeteringConfig {
    pub fn drain_max(&self) -> Duration {
        Duration::from_secs(self.drain_max_secs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingPolicy {
    /// The chip whose price in force is lowest (input + output per 1k tokens).
    Cheapest,
    /// The chips in the order the upstreams are listed.
    First,
    /// A random chip, in proportion to each upstream's `weight`.
    Weighted,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub default_policy: RoutingPolicy,
    /// Per-model overrides.
    pub models: BTreeMap<String, ModelRouting>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            default_policy: RoutingPolicy::Cheapest,
            models: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRouting {
    pub policy: Option<RoutingPolicy>,
    /// Tried first whatever the policy says (others follow as fail-over).
    pub default_chip: Option<String>,
}

impl Config {
    /// Reads `path`, applies `TOLLGATE_*__*` environment overrides and validates.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text, std::env::vars())
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses TOML text, applies overrides from `env` and validates.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut table: toml::Table = toml::from_str(text)?;
        env::apply_overrides(&mut table, env)?;
        let config: Config = table.try_into()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let server = &self.server;
        if server.max_connections == 0 {
            bail!("server.max_connections must be at least 1");
        }
        let timeouts = [
            ("header_timeout_ms", server.header_timeout_ms),
            ("keep_alive_timeout_ms", server.keep_alive_timeout_ms),
            ("body_idle_timeout_ms", server.body_idle_timeout_ms),
            ("body_timeout_ms", server.body_timeout_ms),
        ];
        for (name, ms) in timeouts {
            if !(1..=86_400_000).contains(&ms) {
                bail!("server.{name} must be between 1 and 86400000 (a day)");
            }
        }
        let database = &self.database;
        if database.backend() == Backend::Sqlite && !database.url.starts_with("sqlite:") {
            // Not repeated: a URL of another kind may hold a password.
            bail!("database.url is not supported; use sqlite://PATH or postgres://...");
        }
        if !(1..=1000).contains(&database.max_connections) {
            bail!("database.max_connections must be between 1 and 1000");
        }
        if self.limits.default_rpm == 0
            || self.limits.default_tpm == Some(0)
            || self.limits.usage_rpm == 0
            || self.limits.poll_rpm == 0
            || self.limits.task_expiry_secs == 0
        {
            bail!(
                "limits.default_rpm, default_tpm, usage_rpm, poll_rpm and task_expiry_secs \
                 must be at least 1"
            );
        }
        plans::check(&self.limits.plans)?;
        alerts::check(&self.alerts)?;
        if self.limits.store == LimitStoreKind::Redis {
            let Some(url) = &self.redis.url else {
                bail!("limits.store = \"redis\" needs redis.url");
            };
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                bail!("redis.url must be a redis:// URL");
            }
        }
        let prefix = &self.redis.prefix;
        if prefix.is_empty() || prefix.len() > 64 || prefix.contains(['{', '}']) {
            bail!("redis.prefix must be 1 to 64 characters without braces");
        }
        if !(1..=10_000).contains(&self.redis.timeout_ms) {
            bail!("redis.timeout_ms must be between 1 and 10000");
        }
        if !(10..=86_400).contains(&self.limits.hold_expiry_secs) {
            bail!("limits.hold_expiry_secs must be between 10 and 86400 (a day)");
        }
        if !(1..=MAX_COMPLETION_TOKENS).contains(&self.limits.reserve_max_tokens) {
            bail!("limits.reserve_max_tokens must be between 1 and {MAX_COMPLETION_TOKENS}");
        }
        if let Some(file) = &self.admin.jwt_public_key_file
            && !file.exists()
        {
            bail!(
                "admin.jwt_public_key_file: {} does not exist",
                file.display()
            );
        }
        if !(0..=MAX_ROTATION_GRACE_SECS).contains(&self.admin.rotation_grace_secs) {
            bail!("admin.rotation_grace_secs must be between 0 and a year in seconds");
        }
        if !(1..=MAX_REPORTED_TOKENS).contains(&self.metering.max_reported_tokens) {
            bail!("metering.max_reported_tokens must be between 1 and {MAX_REPORTED_TOKENS}");
        }
        if self.ledger.import_max == 0 {
            bail!("ledger.import_max must be at least 1");
        }
        if let Some(days) = self.retention.keep_days {
            if days == 0 {
                bail!("retention.keep_days must be at least 1");
            }
            if self.retention.archive_dir.is_none() {
                bail!(
                    "retention.keep_days needs retention.archive_dir: records are archived before they are retired"
                );
            }
        }
        upstreams::check(&self.upstreams)?;
        for (model, routing) in &self.routing.models {
            let chips: Vec<&str> = self
                .upstreams
                .iter()
                .filter(|u| &u.model == model && u.deployment.is_none())
                .map(|u| u.chip.as_str())
                .collect();
            if chips.is_empty() {
                bail!("routing.models.{model}: no upstream serves this model");
            }
            if let Some(chip) = &routing.default_chip
                && !chips.contains(&chip.as_str())
            {
                bail!(
                    "routing.models.{model}.default_chip: unknown chip '{chip}' (known: {})",
                    chips.join(", ")
                );
            }
        }
        Ok(())
    }
}

/// An IANA timezone name, e.g. `Asia/Shanghai`.
fn zone<'de, D: serde::Deserializer<'de>>(d: D) -> Result<chrono_tz::Tz, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "billing.timezone: '{name}' is not an IANA timezone like Asia/Shanghai"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[upstreams]]
        model = "m"
        chip = "c"
        base_url = "http://127.0.0.1:9/v1"
    "#;

    #[test]
    fn environment_overrides_nested_settings() {
        let env = [
            ("TOLLGATE_SERVER__LISTEN".into(), "0.0.0.0:9999".into()),
            ("TOLLGATE_LEDGER__IMPORT_MAX".into(), "7".into()),
            ("TOLLGATE_SERVER__WORKER_THREADS".into(), "1".into()),
            ("TOLLGATE_CONFIG".into(), "ignored".into()),
        ];
        assert_eq!(
            Config::from_toml(MINIMAL, [])
                .unwrap()
                .server
                .worker_threads,
            0
        );
        let config = Config::from_toml(MINIMAL, env).unwrap();
        assert_eq!(config.server.worker_threads, 1);
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:9999");
        assert_eq!(config.ledger.import_max, 7);
    }

    #[test]
    fn a_bad_url_is_reported_with_its_upstream() {
        let text = MINIMAL.replace("http://127.0.0.1:9/v1", "not a url");
        let err = format!("{:#}", Config::from_toml(&text, []).unwrap_err());
        assert!(
            err.contains("upstream m/c") && err.contains("not a URL"),
            "{err}"
        );
    }

    #[test]
    fn unknown_settings_are_rejected() {
        let err = Config::from_toml("[server]\nlisten_port = 1\n", []).unwrap_err();
        assert!(format!("{err:#}").contains("listen_port"));
    }

    #[test]
    fn routing_to_an_unknown_chip_is_rejected() {
        let text = format!("{MINIMAL}\n[routing.models.m]\ndefault_chip = \"zz\"\n");
        let err = format!("{:#}", Config::from_toml(&text, []).unwrap_err());
        assert!(err.contains("unknown chip 'zz'"), "{err}");
    }
}
