//! The backends: each configured upstream (URL, credential, timeouts, its connections:
//! `client` over a `pool` of its own for plain HTTP) and the routing policy that orders
//! them for a request.

pub mod client;
mod http1;
mod pool;

use foldhash::{HashMap, HashMapExt};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use rand::Rng;

use crate::billing::{Buyer, PriceBook};
use crate::config::{BaseUrl, Config, Endpoint, RoutingPolicy, StreamFormat, UpstreamConfig};
use crate::dialect::{self, Call, Wire};
use crate::metrics::{Metrics, PairMetrics};
use crate::server::ApiError;
use client::UpstreamClient;

/// One backend: a (model, chip) pair or a dedicated deployment.
pub struct Upstream {
    pub model: String,
    pub chip: String,
    pub endpoint: Endpoint,
    pub deployment: Option<String>,
    /// A deployment's owner accounts (by name): only their keys reach it.
    owners: Vec<String>,
    /// A deployment without its own price is billed at the model × chip price.
    pair_price: bool,
    /// `base_url` + the endpoint's path, parsed once rather than on every request.
    pub url: axum::http::Uri,
    /// The `Host` header for `url`, built once (the client would format it per request).
    pub host: HeaderValue,
    /// The model name sent to the backend.
    pub upstream_model: String,
    /// The credential's header (`Authorization: Bearer ...`, or where the dialect puts
    /// it), from the environment or a file, built once and marked sensitive; never logged.
    credential: Option<(HeaderName, HeaderValue)>,
    /// The wire format it speaks (`crate::dialect`).
    wire: &'static dyn Wire,
    /// Where its other paths are (a task's submission and polls).
    base_url: BaseUrl,
    /// The backend's own limit on requests (`rpm`), and its count in this process (used
    /// when the limits are not shared in Redis, or Redis does not answer).
    rpm: Option<u32>,
    outbound: Option<governor::DefaultDirectRateLimiter>,
    /// How its streams are framed: its config's, or its dialect's when that says `auto`.
    pub stream_format: StreamFormat,
    pub stream_options: bool,
    pub weight: u32,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// One client per upstream: each has its own connect timeout and connection pool.
    pub client: UpstreamClient,
    /// This pair's metric series, resolved at first use.
    metrics: OnceLock<PairMetrics>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("model", &self.model)
            .field("chip", &self.chip)
            .field("deployment", &self.deployment)
            .field("url", &self.url.to_string())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Who a request by `account` (its name) to this backend is priced for.
    pub fn buyer<'a>(&'a self, account: &'a str) -> Buyer<'a> {
        Buyer {
            account: Some(account),
            deployment: self.deployment.as_deref(),
            pair_price: self.pair_price,
        }
    }

    /// Whether `account`'s keys reach it: a deployment's owners', anyone's otherwise.
    pub fn reached_by(&self, account: &str) -> bool {
        self.deployment.is_none() || self.owners.iter().any(|o| o == account)
    }

    /// What its wire format means (`crate::dialect`).
    pub fn wire(&self) -> &'static dyn Wire {
        self.wire
    }

    /// What requests reach it.
    pub fn serves(&self) -> Serves {
        Serves::of(self.wire, self.endpoint)
    }

    /// The URL a request of `call` goes to: its own, or where its dialect submits tasks.
    pub fn url_for(&self, call: Call) -> Result<axum::http::Uri, ApiError> {
        if !call.task {
            return Ok(self.url.clone());
        }
        let path = self.wire().task_path(call.endpoint).ok_or_else(|| {
            ApiError::NotFound(format!(
                "{}/{} does not run {} as tasks",
                self.model,
                self.chip,
                call.endpoint.as_str()
            ))
        })?;
        self.base_url.join(path).map_err(ApiError::Internal)
    }

    /// Counts one request against the backend's own limit, if it has one; `Err` with how
    /// long until one would pass when it is reached.
    /// The backend's own limit on requests per minute, and the name its count has in a
    /// store shared by replicas.
    pub fn own_limit(&self) -> Option<(String, u32)> {
        let rpm = self.rpm?;
        let deployment = self.deployment.as_deref().unwrap_or("");
        Some((format!("{}/{}/{deployment}", self.model, self.chip), rpm))
    }

    pub fn admit_outbound(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.outbound else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
        })
    }

    /// How to poll the task `task_id`: its URL and, for a POST, the body.
    pub fn task_poll(
        &self,
        task_id: &str,
        asked: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(axum::http::Uri, Option<serde_json::Value>), ApiError> {
        let poll = self
            .wire()
            .task_poll(task_id, asked)
            .ok_or_else(|| ApiError::NotFound("this backend has no tasks".into()))?;
        let url = self.base_url.join(&poll.path).map_err(ApiError::Internal)?;
        Ok((url, poll.body))
    }

    /// The URL of `path` under this upstream's `base_url` (a dialect's other endpoints).
    pub fn url_of(&self, path: &str) -> Result<axum::http::Uri, ApiError> {
        self.base_url.join(path).map_err(ApiError::Internal)
    }

    fn build(c: &UpstreamConfig) -> anyhow::Result<Upstream> {
        let what = format!("upstream {}/{}: api_key_file", c.model, c.chip);
        let secret = crate::config::secrets::read(
            &what,
            c.api_key_env.as_deref(),
            c.api_key_file.as_deref(),
        )?;
        let source = match (&c.api_key_file, &c.api_key_env) {
            (Some(path), _) => path.display().to_string(),
            (None, Some(var)) => var.clone(),
            (None, None) => String::new(),
        };
        if secret.is_none()
            && let Some(var) = &c.api_key_env
        {
            anyhow::bail!(
                "upstream {}/{}: environment variable {var} (api_key_env) is not set; \
                 export it with the backend's credential",
                c.model,
                c.chip
            );
        }
        let wire = dialect::named(&c.dialect).with_context(|| {
            format!(
                "upstream {}/{}: no dialect is called '{}' (known: {})",
                c.model,
                c.chip,
                c.dialect,
                dialect::names()
            )
        })?;
        let (header, prefix) = wire.credential();
        let credential = secret
            .map(|secret| {
                let mut value =
                    HeaderValue::try_from(format!("{prefix}{secret}")).map_err(|_| {
                        anyhow::anyhow!("{source} holds characters an HTTP header cannot carry")
                    })?;
                value.set_sensitive(true);
                anyhow::Ok((HeaderName::from_static(header), value))
            })
            .transpose()?;
        let endpoint = c.endpoint.unwrap_or_else(|| wire.serves());
        let path = wire.path(endpoint).with_context(|| {
            format!(
                "upstream {}/{}: dialect {} does not serve {}",
                c.model,
                c.chip,
                wire.name(),
                endpoint.as_str()
            )
        })?;
        let url = c.base_url.join(path)?;
        Ok(Upstream {
            model: c.model.clone(),
            chip: c.chip.clone(),
            endpoint,
            deployment: c.deployment.clone(),
            owners: c.owners.clone(),
            pair_price: c.pair_price,
            host: host_header(&url)?,
            client: UpstreamClient::new(&url, Duration::from_millis(c.connect_timeout_ms))?,
            url,
            upstream_model: c.upstream_model.clone().unwrap_or_else(|| c.model.clone()),
            credential,
            wire,
            base_url: c.base_url.clone(),
            rpm: c.rpm,
            outbound: c
                .rpm
                .and_then(std::num::NonZeroU32::new)
                .map(|rpm| governor::RateLimiter::direct(governor::Quota::per_minute(rpm))),
            stream_format: match c.stream_format {
                StreamFormat::Auto => wire.stream_format(),
                format => format,
            },
            stream_options: c.stream_options,
            weight: c.weight,
            first_byte_timeout: Duration::from_millis(c.first_byte_timeout_ms),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            metrics: OnceLock::new(),
        })
    }

    /// The credential's header and value, if the backend has a credential.
    pub fn credential(&self) -> Option<(&HeaderName, &HeaderValue)> {
        self.credential.as_ref().map(|(name, value)| (name, value))
    }

    /// This pair's metric series in `metrics` (the one registry of the application).
    pub fn metrics(&self, metrics: &Metrics) -> &PairMetrics {
        self.metrics
            .get_or_init(|| metrics.pair(&self.model, &self.chip))
    }
}

/// `host[:port]` of `url`, the port left out where it is the scheme's default.
fn host_header(url: &axum::http::Uri) -> anyhow::Result<HeaderValue> {
    let host = url.host().unwrap_or_default();
    let default_port = match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match url.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    Ok(HeaderValue::from_str(&value)?)
}

struct ModelRoute {
    policy: RoutingPolicy,
    default_chip: Option<String>,
    /// In configuration order.
    upstreams: Vec<Arc<Upstream>>,
}

/// What requests reach an upstream: the body shape its dialect takes (`Wire::takes`) and
/// the kind of endpoint. One model × chip may be served once for each: Zhipu's GLM both
/// OpenAI's way and Anthropic's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Serves {
    pub shape: &'static str,
    pub endpoint: Endpoint,
}

impl Serves {
    pub fn of(wire: &dyn Wire, endpoint: Endpoint) -> Serves {
        Serves {
            shape: wire.takes(),
            endpoint,
        }
    }
}

/// A model as `GET /v1/models` lists it.
pub struct CatalogEntry {
    pub model: String,
    pub endpoint: Endpoint,
    /// Each API's chips in configuration order.
    pub chips: Vec<String>,
    /// The request shapes that reach it, sorted.
    pub shapes: Vec<&'static str>,
}

/// Every upstream, indexed the ways requests name them.
pub struct Upstreams {
    pairs: HashMap<(Serves, String, String), Arc<Upstream>>,
    models: HashMap<(Serves, String), ModelRoute>,
    deployments: HashMap<String, Arc<Upstream>>,
}

impl Upstreams {
    pub fn build(config: &Config) -> anyhow::Result<Upstreams> {
        let mut table = Upstreams {
            pairs: HashMap::new(),
            models: HashMap::new(),
            deployments: HashMap::new(),
        };
        for c in &config.upstreams {
            let up = Arc::new(Upstream::build(c)?);
            if let Some(id) = &c.deployment {
                table.deployments.insert(id.clone(), up);
                continue;
            }
            let key = (up.serves(), c.model.clone(), c.chip.clone());
            if table.pairs.insert(key, up.clone()).is_some() {
                anyhow::bail!(
                    "upstream {}/{}: {}/{}/{} is configured twice for {} requests",
                    c.model,
                    c.chip,
                    up.endpoint.as_str(),
                    c.model,
                    c.chip,
                    up.serves().shape
                );
            }
            let routing = config.routing.models.get(&c.model);
            table
                .models
                .entry((up.serves(), c.model.clone()))
                .or_insert_with(|| ModelRoute {
                    policy: routing
                        .and_then(|r| r.policy)
                        .unwrap_or(config.routing.default_policy),
                    default_chip: routing.and_then(|r| r.default_chip.clone()),
                    upstreams: Vec::new(),
                })
                .upstreams
                .push(up);
        }
        Ok(table)
    }

    /// Every upstream, deployments included.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.pairs.values().chain(self.deployments.values())
    }

    /// The M×N route: exactly this model on this chip.
    pub fn pair(&self, serves: Serves, model: &str, chip: &str) -> Result<Arc<Upstream>, ApiError> {
        if let Some(up) = self
            .pairs
            .get(&(serves, model.to_string(), chip.to_string()))
        {
            return Ok(up.clone());
        }
        if self.models.contains_key(&(serves, model.to_string())) {
            Err(ApiError::NotFound(format!(
                "model '{model}' is not served on chip '{chip}'; GET /v1/models lists its chips"
            )))
        } else {
            Err(self.unknown_model(serves, model))
        }
    }

    /// Deployment `id`, if `account`'s keys reach it: another account's deployment is as
    /// unknown as one that does not exist.
    pub fn deployment(&self, id: &str, account: &str) -> Result<Arc<Upstream>, ApiError> {
        self.deployments
            .get(id)
            .filter(|up| up.reached_by(account))
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("deployment '{id}' does not exist")))
    }

    /// The deployments `account`'s keys reach, by id.
    pub fn deployments_of<'a>(&'a self, account: &'a str) -> Vec<&'a Arc<Upstream>> {
        let mut owned: Vec<_> = (self.deployments.values())
            .filter(|up| up.reached_by(account))
            .collect();
        owned.sort_by(|a, b| a.deployment.cmp(&b.deployment));
        owned
    }

    /// The model of a body that names it as its backends know it (an SD task's checkpoint
    /// file, `dialect::Wire::names_backend_model`), which is rarely a valid model name
    /// here: the model whose backends have it as their `upstream_model`, or `name` itself.
    pub fn model_by_backend_name<'a>(&'a self, serves: Serves, name: &'a str) -> &'a str {
        if self.models.contains_key(&(serves, name.into())) {
            return name;
        }
        self.all()
            .find(|u| u.serves() == serves && u.upstream_model == name)
            .map_or(name, |u| u.model.as_str())
    }

    /// The chips serving `model`, ordered by its routing policy: the first is tried first,
    /// the others are fail-over. Chips without a price in force for `account` are left out;
    /// `cheapest` goes by its prices.
    pub fn candidates(
        &self,
        serves: Serves,
        model: &str,
        prices: &PriceBook,
        account: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Arc<Upstream>>, ApiError> {
        let route = self
            .models
            .get(&(serves, model.to_string()))
            .ok_or_else(|| self.unknown_model(serves, model))?;
        let mut ordered: Vec<Arc<Upstream>> = route
            .upstreams
            .iter()
            .filter(|u| {
                prices
                    .for_buyer(&u.model, &u.chip, u.buyer(account), now)
                    .is_some()
            })
            .cloned()
            .collect();
        match route.policy {
            RoutingPolicy::First => {}
            RoutingPolicy::Cheapest => ordered.sort_by_key(|u| {
                let price = prices.for_buyer(&u.model, &u.chip, u.buyer(account), now);
                price.map(|p| p.first().entry.input_per_1k + p.first().entry.output_per_1k)
            }),
            RoutingPolicy::Weighted => {
                let total: u32 = ordered.iter().map(|u| u.weight).sum();
                if total > 0 {
                    let mut pick: u32 = rand::rng().random_range(0..total);
                    let chosen = ordered.iter().position(|u| {
                        let hit = pick < u.weight;
                        pick = pick.saturating_sub(u.weight);
                        hit
                    });
                    if let Some(i) = chosen {
                        let up = ordered.remove(i);
                        ordered.insert(0, up);
                    }
                }
            }
        }
        if let Some(chip) = &route.default_chip
            && let Some(i) = ordered.iter().position(|u| &u.chip == chip)
        {
            let up = ordered.remove(i);
            ordered.insert(0, up);
        }
        if ordered.is_empty() {
            return Err(ApiError::Unavailable(format!(
                "model '{model}' has no price in force; it cannot be billed, so it is not served"
            )));
        }
        Ok(ordered)
    }

    /// Model → chips, for `GET /v1/models`: one entry per model and kind, with the chips
    /// and the request shapes (`Wire::takes`: `openai`, `anthropic`, ...) that reach it.
    pub fn catalog(&self) -> Vec<CatalogEntry> {
        let mut entries: HashMap<(&str, Endpoint), CatalogEntry> = HashMap::new();
        for ((serves, model), route) in &self.models {
            let entry = entries
                .entry((model, serves.endpoint))
                .or_insert_with(|| CatalogEntry {
                    model: model.clone(),
                    endpoint: serves.endpoint,
                    chips: Vec::new(),
                    shapes: Vec::new(),
                });
            for up in &route.upstreams {
                if !entry.chips.contains(&up.chip) {
                    entry.chips.push(up.chip.clone());
                }
            }
            if !entry.shapes.contains(&serves.shape) {
                entry.shapes.push(serves.shape);
                entry.shapes.sort_unstable();
            }
        }
        let mut list: Vec<CatalogEntry> = entries.into_values().collect();
        list.sort_by(|a, b| (&a.model, a.endpoint.as_str()).cmp(&(&b.model, b.endpoint.as_str())));
        list
    }

    /// A model no upstream serves for `serves`: unknown, or served only another way.
    fn unknown_model(&self, serves: Serves, model: &str) -> ApiError {
        let elsewhere = self.models.keys().any(|(_, m)| m == model);
        ApiError::NotFound(match elsewhere {
            true => format!(
                "model '{model}' is not served for {} {} requests here; GET /v1/models lists \
                 the models you can call",
                serves.shape,
                serves.endpoint.as_str()
            ),
            false => format!(
                "model '{model}' does not exist; GET /v1/models lists the models you can call"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_leaves_out_default_ports_and_credentials() {
        let host = |url: &str| host_header(&url.parse().unwrap()).unwrap();
        assert_eq!(host("http://127.0.0.1:9100/v1/chat"), "127.0.0.1:9100");
        assert_eq!(host("https://api.example.com/v1/chat"), "api.example.com");
        assert_eq!(host("http://h:80/x"), "h");
        assert_eq!(host("https://h:443/x"), "h");
        assert_eq!(host("https://h:8443/x"), "h:8443");
        assert_eq!(host("http://user:secret@h:81/x"), "h:81");
        assert_eq!(host("http://[::1]:9000/x"), "[::1]:9000");
    }

    #[test]
    fn a_backend_credential_is_a_sensitive_header_and_a_bad_one_stops_the_start() {
        let config = |var: &str| -> UpstreamConfig {
            let text = format!(
                "model = \"m\"\nchip = \"c\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
                 api_key_env = \"{var}\"\n"
            );
            toml::from_str(&text).unwrap()
        };
        // SAFETY: these variables are set once, before any thread reads them, and no other
        // test uses them.
        unsafe {
            std::env::set_var("TOLLGATE_UNIT_GOOD_SECRET", "sk-abc");
            std::env::set_var("TOLLGATE_UNIT_BAD_SECRET", "sk-abc\nx-injected: 1");
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let upstream = Upstream::build(&config("TOLLGATE_UNIT_GOOD_SECRET")).unwrap();
        let (header, authorization) = upstream.credential().unwrap();
        assert_eq!(header, "authorization");
        assert_eq!(authorization, "Bearer sk-abc");
        assert!(authorization.is_sensitive());
        let error = Upstream::build(&config("TOLLGATE_UNIT_BAD_SECRET")).unwrap_err();
        assert!(
            error.to_string().contains("TOLLGATE_UNIT_BAD_SECRET"),
            "{error}"
        );
        let missing = Upstream::build(&config("TOLLGATE_UNIT_SURELY_UNSET")).unwrap_err();
        let message = missing.to_string();
        assert!(
            message.contains("TOLLGATE_UNIT_SURELY_UNSET") && message.contains("m/c"),
            "{message}"
        );
        assert!(!error.to_string().contains("sk-abc"), "{error}");
    }
}
