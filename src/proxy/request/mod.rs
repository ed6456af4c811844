//! A client's request body, read within the size limit and checked once. Only its top
//! level is taken apart: the values pass to the backend as the client wrote them, and are
//! parsed only where tollgate reads them (`model`, `stream`, limits, estimates).

use std::ops::Range;
use std::sync::OnceLock;

use axum::body::Body;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::billing::{TokenCounts, Units};
use crate::config::{Endpoint, MAX_COMPLETION_TOKENS};
use crate::metering::estimate;
use crate::server::ApiError;
use crate::upstream::Upstream;

mod body;

use body::{MAX_DEPTH, Members, nests_deeper, read_limited, top_level};

#[derive(Debug)]
pub struct ClientRequest {
    pub endpoint: Endpoint,
    /// The body as the client sent it.
    raw: Bytes,
    /// Its top-level members: each value's span in `raw`.
    members: Members,
    /// The `model` member, parsed.
    model: Option<Value>,
    pub stream: bool,
    /// The client asked for the usage-only chunk (`stream_options.include_usage`).
    pub wants_stream_usage: bool,
    /// `max_completion_tokens` or `max_tokens`, at most `MAX_COMPLETION_TOKENS`.
    pub max_tokens: Option<u64>,
    /// Answers asked for (`n`), 1 to `MAX_CHOICES`.
    pub choices: u64,
    /// `image_url` parts in the prompt (a vision model's input), priced `per_image`.
    pub input_images: u64,
    /// An upper bound on the prompt's tokens from byte counts alone (`bound_prompt`),
    /// counted when first asked: a request without a token limit or a spending limit
    /// never needs it.
    prompt_bound: OnceLock<u64>,
}

/// The most answers one request may ask for (`n`).
pub const MAX_CHOICES: u64 = 128;
/// The members of a body that carry its prompt.
const PROMPT_MEMBERS: [&str; 7] = [
    "messages",
    "input",
    "query",
    "documents",
    "prompt",
    "tools",
    "functions",
];
/// Tokens a chat template may add per message, beyond its text (OpenAI counts 3 or 4).
const FRAMING_PER_MESSAGE: u64 = 8;

impl ClientRequest {
    /// Reads at most `limit` bytes (413 beyond, even for chunked bodies without a length)
    /// and checks that they are one JSON object (400 otherwise).
    pub async fn read(endpoint: Endpoint, body: Body, limit: usize) -> Result<Self, ApiError> {
        let raw = read_limited(body, limit).await?;
        ClientRequest::parse(endpoint, raw)
    }

    /// Checks `raw` in full (syntax, UTF-8, nesting depth) and takes its top level apart.
    pub fn parse(endpoint: Endpoint, raw: Bytes) -> Result<Self, ApiError> {
        let members = top_level(&raw).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                ApiError::InvalidJson("the body must be a JSON object".into())
            } else {
                ApiError::InvalidJson(e.to_string())
            }
        })?;
        if nests_deeper(&raw, MAX_DEPTH) {
            return Err(ApiError::InvalidJson(format!(
                "the body nests arrays and objects deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut request = ClientRequest {
            endpoint,
            raw,
            members,
            model: None,
            stream: false,
            wants_stream_usage: false,
            max_tokens: None,
            choices: 1,
            input_images: 0,
            prompt_bound: OnceLock::new(),
        };
        request.model = request.model_value();
        request.input_images = request.count_images();
        request.stream = match request.member("stream") {
            None | Some("null") | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ApiError::invalid(
                    "'stream' must be true or false",
                    "stream",
                ));
            }
        };
        if request.stream && endpoint != Endpoint::Chat && endpoint != Endpoint::Generation {
            return Err(ApiError::invalid(
                "streaming is only supported for chat completions",
                "stream",
            ));
        }
        request.wants_stream_usage = request
            .value("stream_options")
            .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
            .unwrap_or(false);
        // DashScope's native body keeps its limits in `parameters`.
        let limits = match endpoint {
            Endpoint::Generation => request.value("parameters").unwrap_or(Value::Null),
            _ => Value::Null,
        };
        for name in ["max_tokens", "max_completion_tokens"] {
            let limit = match endpoint {
                Endpoint::Generation => count_of(limits.get(name), name, 1)?,
                _ => request.count(name, 1)?,
            };
            if let Some(limit) = limit {
                request.max_tokens = Some(limit.min(MAX_COMPLETION_TOKENS));
            }
        }
        let n = match endpoint {
            Endpoint::Generation => count_of(limits.get("n"), "n", 1)?,
            // An SD task makes `batch_size` images `n_iter` times.
            Endpoint::ImageTask => {
                let batch = request.count("batch_size", 1)?.unwrap_or(1);
                let rounds = request.count("n_iter", 1)?.unwrap_or(1);
                Some(batch.saturating_mul(rounds))
            }
            // A ComfyUI run makes the batches its nodes ask for (`batch_size` inputs); a
            // run that sets none makes the hosted workflow's own, at least one image.
            Endpoint::Workflow => {
                let prompt = request.value("prompt").unwrap_or(Value::Null);
                Some(workflow_batches(&prompt)?.max(1))
            }
            _ => request.count("n", 1)?,
        };
        if let Some(n) = n {
            if n > MAX_CHOICES {
                let name = match endpoint {
                    Endpoint::ImageTask => "batch_size",
                    Endpoint::Workflow => "prompt",
                    _ => "n",
                };
                return Err(ApiError::invalid(
                    format!("'{name}' asks for more than {MAX_CHOICES} results"),
                    name,
                ));
            }
            request.choices = n;
        }
        Ok(request)
    }

    /// The value that names the model: `model`, a ComfyUI workflow's `workflow_id`, an SD
    /// task's `override_settings.sd_model_checkpoint`.
    fn model_value(&self) -> Option<Value> {
        match self.endpoint {
            Endpoint::ImageTask => self.value(SETTINGS)?.get(CHECKPOINT).cloned(),
            endpoint => self.value(model_member(endpoint)),
        }
    }

    /// A member that must be a whole number of at least `min` (or absent, or `null`).
    fn count(&self, name: &'static str, min: u64) -> Result<Option<u64>, ApiError> {
        whole_number(self.member(name), name, min)
    }

    /// Bytes are an upper bound on the tokens of a byte-level BPE tokenizer, and a JSON
    /// string's text is never longer than its JSON form: so the prompt members' JSON length,
    /// plus framing for every object that could be a message, bounds the prompt's tokens
    /// without tokenizing or even parsing it. Images are the exception: an `image_url` part
    /// (a base64 image is megabytes) counts `estimate::IMAGE_TOKENS` instead of its bytes,
    /// and only a member that has one is parsed.
    fn bound_prompt(&self) -> u64 {
        let mut bound = 3u64;
        for name in PROMPT_MEMBERS {
            if let Some(span) = self.members.get(name) {
                let text = &self.raw[span.clone()];
                let objects = text.iter().filter(|&&b| b == b'{').count() as u64;
                let mut bytes = text.len() as u64;
                if names_an_image(text)
                    && let Ok(value) = serde_json::from_slice::<Value>(text)
                {
                    let (images, image_bytes) = image_parts(&value);
                    bytes = bytes
                        .saturating_sub(image_bytes)
                        .saturating_add(images.saturating_mul(estimate::IMAGE_TOKENS));
                }
                bound = bound
                    .saturating_add(bytes)
                    .saturating_add(objects.saturating_mul(FRAMING_PER_MESSAGE));
            }
        }
        bound
    }

    /// The `image_url` parts of the prompt members; only a member that names one is
    /// parsed.
    fn count_images(&self) -> u64 {
        PROMPT_MEMBERS
            .iter()
            .filter_map(|name| self.members.get(name))
            .map(|span| &self.raw[span.clone()])
            .filter(|text| names_an_image(text))
            .filter_map(|text| serde_json::from_slice::<Value>(text).ok())
            .map(|value| image_parts(&value).0)
            .fold(0u64, u64::saturating_add)
    }

    /// The `model` field (a workflow's `workflow_id`), required when the route does not
    /// name the model.
    pub fn model(&self) -> Result<&str, ApiError> {
        let name = model_member(self.endpoint);
        match &self.model {
            Some(Value::String(m)) if !m.is_empty() => Ok(m),
            None => Err(ApiError::invalid(format!("'{name}' is required"), name)),
            Some(_) => Err(ApiError::invalid(
                format!("'{name}' must be a non-empty string"),
                name,
            )),
        }
    }

    /// A top-level member's JSON text, as sent.
    fn member(&self, name: &str) -> Option<&str> {
        let span = self.members.get(name)?.clone();
        // `raw` was checked to be UTF-8 and spans fall on value boundaries.
        std::str::from_utf8(&self.raw[span]).ok()
    }

    /// A top-level member, parsed.
    pub fn value(&self, name: &str) -> Option<Value> {
        serde_json::from_str(self.member(name)?).ok()
    }

    /// An upper bound on the prompt's tokens, cheap enough for admission: what limits and
    /// spending holds reserve. See `bound_prompt`.
    pub fn prompt_bound(&self) -> u64 {
        *self.prompt_bound.get_or_init(|| self.bound_prompt())
    }

    /// The most the request can use: the prompt's byte bound plus `max_tokens` (or
    /// `reserve_max_tokens` when absent) for each of its `n` answers; no completion for
    /// embeddings and rerank. Cheap: nothing is tokenized before admission.
    pub fn worst_case(&self, reserve_max_tokens: u64) -> TokenCounts {
        let completion = if self.endpoint.completes() {
            self.max_tokens
                .unwrap_or(reserve_max_tokens)
                .saturating_mul(self.choices)
        } else {
            0
        };
        TokenCounts {
            prompt: self.prompt_bound(),
            completion,
            cached: 0,
        }
    }

    /// The most the request can produce besides tokens: `n` images from an image
    /// generation (an SD task's batches, a ComfyUI run's), one task from a task submission.
    pub fn worst_units(&self) -> Units {
        Units {
            images: if matches!(
                self.endpoint,
                Endpoint::Images | Endpoint::ImageTask | Endpoint::Workflow
            ) {
                self.choices
            } else {
                self.input_images
            },
            tasks: u64::from(self.endpoint.is_task()),
            ..Units::default()
        }
    }

    /// The prompt, owned, for a tokenizer to count off the async workers.
    pub fn prompt(&self) -> Prompt {
        Prompt {
            endpoint: self.endpoint,
            raw: self.raw.clone(),
            members: PROMPT_MEMBERS
                .into_iter()
                .filter_map(|name| Some((name, self.members.get(name)?.clone())))
                .collect(),
        }
    }

    /// Whether tollgate adds `include_usage` for this upstream (and must then hide the
    /// usage-only chunk from a client that did not ask for it).
    pub fn injects_usage(&self, upstream: &Upstream) -> bool {
        self.stream && upstream.stream_options && !self.wants_stream_usage
    }

    /// The body sent to `upstream`: the backend's model name, and usage requested in
    /// streams where the backend supports it. Everything else passes through.
    /// `max_tokens`, when given, is added for a client that set none: what its spending
    /// hold covers.
    pub fn upstream_body(&self, upstream: &Upstream, max_tokens: Option<u64>) -> Bytes {
        self.patched(
            &upstream.upstream_model,
            self.injects_usage(upstream),
            max_tokens.filter(|_| self.max_tokens.is_none()),
        )
    }

    /// The body with `model` set, and `stream_options.include_usage` set if asked; every
    /// other member is copied as sent. A member that was not there is added at the end.
    fn patched(&self, model: &str, include_usage: bool, max_tokens: Option<u64>) -> Bytes {
        let json = |value: &Value| serde_json::to_vec(value).expect("a JSON value serializes");
        let options = include_usage.then(|| {
            let mut options = match self.value("stream_options") {
                Some(Value::Object(options)) => options,
                _ => Map::new(),
            };
            options.insert("include_usage".into(), Value::Bool(true));
            json(&Value::Object(options))
        });
        let name = Value::String(model.to_owned());
        // An SD task names its model inside `override_settings`.
        let model = match self.endpoint {
            Endpoint::ImageTask => {
                let mut settings = match self.value(SETTINGS) {
                    Some(Value::Object(settings)) => settings,
                    _ => Map::new(),
                };
                settings.insert(CHECKPOINT.into(), name);
                (SETTINGS, json(&Value::Object(settings)))
            }
            endpoint => (model_member(endpoint), json(&name)),
        };
        let mut patches = vec![(model.0, model.1.as_slice())];
        if let Some(options) = &options {
            patches.push(("stream_options", options));
        }
        // DashScope's native body keeps `max_tokens` in `parameters`.
        let max_tokens = max_tokens.map(|n| match self.endpoint {
            Endpoint::Generation => {
                let mut parameters = match self.value("parameters") {
                    Some(Value::Object(parameters)) => parameters,
                    _ => Map::new(),
                };
                parameters.insert("max_tokens".into(), Value::from(n));
                ("parameters", json(&Value::Object(parameters)))
            }
            _ => ("max_tokens", n.to_string().into_bytes()),
        });
        if let Some((name, value)) = &max_tokens {
            patches.push((name, value));
        }
        let mut out = Vec::with_capacity(self.raw.len() + 64);
        out.push(b'{');
        let mut put = |name: &str, value: &[u8]| {
            if out.len() > 1 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name).expect("a string serializes");
            out.push(b':');
            out.extend_from_slice(value);
        };
        for (name, span) in &self.members.list {
            match patches.iter().find(|(patched, _)| patched == name) {
                Some((_, value)) => put(name, value),
                None => put(name, &self.raw[span.clone()]),
            }
        }
        for (name, value) in patches {
            if self.members.position(name).is_none() {
                put(name, value);
            }
        }
        out.push(b'}');
        out.into()
    }
}

/// A value that must be a whole number of at least `min` (or absent, or `null`), given as
/// its JSON text.
fn whole_number(text: Option<&str>, name: &'static str, min: u64) -> Result<Option<u64>, ApiError> {
    match text {
        None | Some("null") => Ok(None),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n >= min => Ok(Some(n)),
            Ok(_) => Err(ApiError::invalid(
                format!("'{name}' must be at least {min}"),
                name,
            )),
            // Digits beyond u64: a number, just a very large one.
            Err(_) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(u64::MAX)),
            Err(_) => Err(ApiError::invalid(
                format!("'{name}' must be a whole number"),
                name,
            )),
        },
    }
}

/// Whether a member's JSON text has an `image_url` part (a fast scan: most have none).
fn names_an_image(text: &[u8]) -> bool {
    memchr::memmem::find(text, b"image_url").is_some()
}

/// The `image_url` parts anywhere in `value`, and their length as compact JSON (never
/// more than the bytes they took in the request).
fn image_parts(value: &Value) -> (u64, u64) {
    match value {
        Value::Object(part) if part.get("type").and_then(Value::as_str) == Some("image_url") => {
            (1, value.to_string().len() as u64)
        }
        Value::Object(map) => map.values().map(image_parts).fold((0, 0), add_pairs),
        Value::Array(items) => items.iter().map(image_parts).fold((0, 0), add_pairs),
        _ => (0, 0),
    }
}

fn add_pairs(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0.saturating_add(b.0), a.1.saturating_add(b.1))
}

/// The images a ComfyUI run's nodes ask for: the sum of their `batch_size` inputs, each a
/// whole number of at least 1 or such a number as a string (ComfyUI takes both). An input
/// linked to another node's output (`["5", 0]`) is known only when the run is: the run is
/// then held for `MAX_CHOICES` images, the most one may ask for. Anything else (a float,
/// zero, a negative, other text) is refused: it would reach the backend while the hold
/// counted one image.
fn workflow_batches(prompt: &Value) -> Result<u64, ApiError> {
    let Some(nodes) = prompt.as_object() else {
        return Ok(0);
    };
    let refused = || {
        ApiError::invalid(
            "a node's 'batch_size' input must be a whole number of at least 1, as a number or a string, or a link to another node",
            "prompt",
        )
    };
    let mut images = 0u64;
    for node in nodes.values() {
        let Some(batch) = node.get("inputs").and_then(|i| i.get("batch_size")) else {
            continue;
        };
        let batch = match batch {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            Value::Array(link) if link.len() == 2 => Some(MAX_CHOICES),
            _ => None,
        };
        images = images.saturating_add(batch.filter(|n| *n >= 1).ok_or_else(refused)?);
    }
    Ok(images)
}

/// Where an SD task names its model: `override_settings.sd_model_checkpoint`.
const SETTINGS: &str = "override_settings";
const CHECKPOINT: &str = "sd_model_checkpoint";

/// The member that names the model: a ComfyUI workflow is named by its `workflow_id`, an
/// SD task by its checkpoint.
fn model_member(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Workflow => "workflow_id",
        Endpoint::ImageTask => "override_settings.sd_model_checkpoint",
        _ => "model",
    }
}

/// `whole_number` of a parsed value.
fn count_of(value: Option<&Value>, name: &'static str, min: u64) -> Result<Option<u64>, ApiError> {
    whole_number(value.map(Value::to_string).as_deref(), name, min)
}

/// A request's prompt members, owned (the body is shared, not copied).
pub struct Prompt {
    endpoint: Endpoint,
    raw: Bytes,
    members: Vec<(&'static str, Range<usize>)>,
}

impl Prompt {
    /// Estimated prompt tokens with the real tokenizer (`estimate::prompt_tokens`). Slow
    /// for long prompts: call it off the async workers.
    pub fn estimate(&self) -> u64 {
        let prompt: Map<String, Value> = self
            .members
            .iter()
            .filter_map(|(name, span)| {
                let value = serde_json::from_slice(&self.raw[span.clone()]).ok()?;
                Some(((*name).to_owned(), value))
            })
            .collect();
        estimate::prompt_tokens(self.endpoint, &prompt)
    }
}

#[cfg(test)]
mod tests;
