//! The backends: what each upstream serves (`Endpoint`), the dialect it speaks (a name
//! `crate::dialect` checks), where it is (`BaseUrl`) and how it is reached; checked once
//! at start-up.

use std::collections::HashSet;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The kinds of request tollgate meters, whatever the dialect: what decides whether an
/// answer has completion tokens, may stream or makes images. Where a request runs as a
/// task and what name its records give it is its route's (`dialect::Call`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// Text generation: OpenAI's chat completions, DashScope's native `generation`
    /// (configured as such before, so still accepted), Anthropic's messages, Zhipu's
    /// asynchronous chat.
    #[default]
    #[serde(alias = "generation")]
    Chat,
    Embeddings,
    Rerank,
    /// Image generation, billed per image: OpenAI's `/images/generations`, hosted ComfyUI
    /// workflows and Stable Diffusion tasks (`workflow` and `image_task` before).
    #[serde(alias = "workflow", alias = "image_task")]
    Images,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Chat,
        Endpoint::Embeddings,
        Endpoint::Rerank,
        Endpoint::Images,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Rerank => "rerank",
            Endpoint::Images => "images",
        }
    }

    /// Whether answers have completion tokens (and so a `max_tokens` to reserve).
    pub fn completes(self) -> bool {
        self == Endpoint::Chat
    }

    /// Whether answers may be streamed (a task's never are: `dialect::Call::streams`).
    pub fn streams(self) -> bool {
        self == Endpoint::Chat
    }

    /// Whether a request makes images (as many as it asks for, billed each).
    pub fn makes_images(self) -> bool {
        self == Endpoint::Images
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// Decide from the first byte: `{` means bare JSON, anything else SSE.
    #[default]
    Auto,
    Sse,
    BareJson,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub model: String,
    pub chip: String,
    /// The wire format it speaks (`openai` by default): a name `crate::dialect` knows,
    /// checked when the upstreams are built.
    #[serde(default = "default_dialect")]
    pub dialect: String,
    /// What this backend serves; decides which client routes reach it. By default what
    /// its dialect serves (`chat`, or `images` for `comfyui` and `sd`).
    pub endpoint: Option<Endpoint>,
    /// A dedicated deployment (`mif-...`): reachable only as `/maas/deployment/{id}/...`,
    /// by its `owners`' keys.
    pub deployment: Option<String>,
    /// A deployment's owner accounts, by name: only their keys reach it (others get 404,
    /// as for an unknown deployment). Every deployment names at least one.
    #[serde(default)]
    pub owners: Vec<String>,
    /// A deployment without a price of its own (`deployment = "mif-…"` in a price entry)
    /// is billed at its model × chip price; without this it is not served.
    #[serde(default)]
    pub pair_price: bool,
    /// A deployment's reserved life begins (a date-time with its offset): from then its
    /// own price's `per_hour` is charged to its first owner for every started hour.
    #[serde(default, deserialize_with = "some_timestamp")]
    pub reserved_from: Option<chrono::DateTime<chrono::Utc>>,
    /// ... and ends (released); none: still reserved.
    #[serde(default, deserialize_with = "some_timestamp")]
    pub reserved_until: Option<chrono::DateTime<chrono::Utc>>,
    /// e.g. `https://host/maas/megrez-7b-instruct/nvidia`; the endpoint path is appended.
    pub base_url: BaseUrl,
    /// Environment variable holding the backend's credential (sent as a Bearer token); read
    /// when the gateway starts serving, so CLI commands do not need it.
    pub api_key_env: Option<String>,
    /// A file holding the credential instead (a mounted secret): read in place of
    /// `api_key_env` when set.
    pub api_key_file: Option<std::path::PathBuf>,
    /// The model name the backend expects, if not `model`.
    pub upstream_model: Option<String>,
    /// How its streams are framed; `auto` leaves it to the dialect.
    #[serde(default)]
    pub stream_format: StreamFormat,
    /// The backend accepts `stream_options.include_usage`.
    #[serde(default)]
    pub stream_options: bool,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Requests per minute the backend allows tollgate's credential (InternLM: 10): more
    /// are routed to the model's next chip, or answered 429 with `Retry-After` by tollgate
    /// itself. Counted once for every replica in Redis (`limits.store = "redis"`), else (or
    /// while Redis does not answer) by each gateway on its own.
    pub rpm: Option<u32>,
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
}

/// A date-time with an offset (`2026-01-01T00:00:00+08:00`), from a TOML date-time or a
/// string.
pub fn timestamp<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<chrono::DateTime<chrono::Utc>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Toml(toml::value::Datetime),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Toml(t) => t.to_string(),
        Raw::Text(s) => s,
    };
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| {
            serde::de::Error::custom(format!(
                "'{text}' must be a date-time with an offset, e.g. 2026-01-01T00:00:00+08:00"
            ))
        })
}

fn some_timestamp<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, D::Error> {
    timestamp(d).map(Some)
}

fn default_dialect() -> String {
    "openai".into()
}
fn default_weight() -> u32 {
    1
}
fn default_connect_ms() -> u64 {
    3_000
}
fn default_first_byte_ms() -> u64 {
    120_000
}
fn default_idle_ms() -> u64 {
    60_000
}

/// An upstream's `base_url`, parsed once as the configuration is read; `validate` refuses
/// one that is not an http(s) URL with a host, naming its upstream.
#[derive(Debug, Clone)]
pub struct BaseUrl {
    text: String,
    uri: Option<http::Uri>,
}

impl<'de> Deserialize<'de> for BaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BaseUrl, D::Error> {
        let text = String::deserialize(d)?;
        let uri = text.parse().ok();
        Ok(BaseUrl { text, uri })
    }
}

impl BaseUrl {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The URL of `path` under this one (`path` starts with `/`).
    pub fn join(&self, path: &str) -> anyhow::Result<http::Uri> {
        Ok(format!("{}{path}", self.text.trim_end_matches('/')).parse()?)
    }
}

/// Model, chip and deployment names appear in URLs, SQL rows and metric labels.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'*'));
    if !ok {
        bail!("'{name}' must be 1-128 characters of A-Z a-z 0-9 - _ . :");
    }
    Ok(())
}

/// Names, URLs, deployment ids and weights of every upstream.
pub(super) fn check(upstreams: &[UpstreamConfig]) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for up in upstreams {
        let name = format!("upstream {}/{}", up.model, up.chip);
        check_name(&up.model).with_context(|| format!("{name}: model"))?;
        check_name(&up.chip).with_context(|| format!("{name}: chip"))?;
        if up.chip == "*" {
            bail!("{name}: '*' is only allowed as a chip in price tables");
        }
        let text = up.base_url.as_str();
        let Some(url) = &up.base_url.uri else {
            bail!("{name}: base_url '{text}' is not a URL");
        };
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            bail!("{name}: base_url '{text}' must be an http(s) URL with a host");
        }
        // A pair configured twice is found where its endpoint is known: its dialect's
        // default when it names none (`Upstreams::build`).
        if let Some(id) = &up.deployment {
            if !id.starts_with("mif-") || check_name(id).is_err() {
                bail!("{name}: deployment id '{id}' must look like mif-xxxx");
            }
            if !seen.insert(id) {
                bail!("{name}: deployment {id} is configured twice");
            }
            if up.owners.is_empty() {
                bail!(
                    "{name}: deployment {id} names no owners: a deployment is one customer's \
                     private service; say whose with owners = [\"account\", ...]"
                );
            }
            for owner in &up.owners {
                check_name(owner).with_context(|| format!("{name}: owner"))?;
            }
            if let (Some(from), Some(until)) = (up.reserved_from, up.reserved_until)
                && until <= from
            {
                bail!("{name}: reserved_until must be after reserved_from");
            }
            if up.reserved_until.is_some() && up.reserved_from.is_none() {
                bail!("{name}: reserved_until needs reserved_from");
            }
        } else if !up.owners.is_empty()
            || up.pair_price
            || up.reserved_from.is_some()
            || up.reserved_until.is_some()
        {
            bail!(
                "{name}: owners, pair_price and reserved_from/until are for deployments \
                 (deployment = \"mif-…\")"
            );
        }
        if up.weight == 0 {
            bail!("{name}: weight must be at least 1");
        }
        if up.rpm == Some(0) {
            bail!("{name}: rpm must be at least 1");
        }
    }
    Ok(())
}
