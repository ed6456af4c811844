//! A client's request body, read within the size limit and checked once. Only its top
//! level is taken apart: the values pass to the backend as the client wrote them, and are
//! parsed only where tollgate reads them (`model`, `stream`, limits, estimates), at the
//! places the route's dialect says (`dialect::Wire::model_at` and the rest).

use std::ops::Range;
use std::sync::OnceLock;

use axum::body::Body;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::billing::{TokenCounts, Units};
use crate::config::{Endpoint, MAX_COMPLETION_TOKENS};
use crate::dialect::request::{MAX_RESULTS, Members as _};
use crate::dialect::{Call, Wire};
use crate::metering::estimate;
use crate::server::ApiError;
use crate::upstream::Upstream;

mod body;

use body::{MAX_DEPTH, Members, nests_deeper, read_limited, top_level};

pub struct ClientRequest {
    /// The dialect of the route it came by: where its body says what.
    pub wire: &'static dyn Wire,
    /// What the route's requests are.
    pub call: Call,
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
    /// Results asked for (`n`, images), 1 to `MAX_RESULTS`.
    pub choices: u64,
    /// `image_url` parts in the prompt (a vision model's input), priced `per_image`.
    pub input_images: u64,
    /// The client's headers its dialect passes on to the backend (`Wire::passed_headers`).
    pub passed_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// An upper bound on the prompt's tokens from byte counts alone (`bound_prompt`),
    /// counted when first asked: a request without a token limit or a spending limit
    /// never needs it.
    prompt_bound: OnceLock<u64>,
}

/// Tokens a chat template may add per message, beyond its text (OpenAI counts 3 or 4).
const FRAMING_PER_MESSAGE: u64 = 8;

impl std::fmt::Debug for ClientRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRequest")
            .field("dialect", &self.wire.name())
            .field("call", &self.call)
            .field("model", &self.model)
            .field("stream", &self.stream)
            .field("max_tokens", &self.max_tokens)
            .field("choices", &self.choices)
            .finish_non_exhaustive()
    }
}

impl ClientRequest {
    /// Reads at most `limit` bytes (413 beyond, even for chunked bodies without a length)
    /// and checks that they are one JSON object (400 otherwise).
    pub async fn read(
        wire: &'static dyn Wire,
        call: Call,
        body: Body,
        limit: usize,
    ) -> Result<Self, ApiError> {
        let raw = read_limited(body, limit).await?;
        ClientRequest::parse(wire, call, raw)
    }

    /// Checks `raw` in full (syntax, UTF-8, nesting depth) and takes its top level apart.
    pub fn parse(
        wire: &'static dyn Wire,
        call: impl Into<Call>,
        raw: Bytes,
    ) -> Result<Self, ApiError> {
        let call = call.into();
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
            wire,
            call,
            raw,
            members,
            model: None,
            stream: false,
            wants_stream_usage: false,
            max_tokens: None,
            choices: 1,
            input_images: 0,
            prompt_bound: OnceLock::new(),
            passed_headers: Vec::new(),
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
        if request.stream && !call.streams() {
            return Err(ApiError::invalid(
                "streaming is only supported for chat completions",
                "stream",
            ));
        }
        request.wants_stream_usage = request
            .value("stream_options")
            .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
            .unwrap_or(false);
        for name in ["max_tokens", "max_completion_tokens"] {
            let limit = crate::dialect::request::limit(&request, wire.limits_in(), name)?;
            if let Some(limit) = limit {
                request.max_tokens = Some(limit.min(MAX_COMPLETION_TOKENS));
            }
        }
        if let Some(n) = wire.results(&request)? {
            if n > MAX_RESULTS {
                let name = wire.results_member();
                return Err(ApiError::invalid(
                    format!("'{name}' asks for more than {MAX_RESULTS} results"),
                    name,
                ));
            }
            request.choices = n;
        }
        Ok(request)
    }

    /// The value that names the model, where the dialect says: `model`, a ComfyUI
    /// workflow's `workflow_id`, an SD task's `override_settings.sd_model_checkpoint`.
    fn model_value(&self) -> Option<Value> {
        let at = self.wire.model_at();
        let value = self.value(at.member)?;
        match at.inside {
            Some(inside) => value.get(inside).cloned(),
            None => Some(value),
        }
    }

    /// Bytes are an upper bound on the tokens of a byte-level BPE tokenizer, and a JSON
    /// string's text is never longer than its JSON form: so the prompt members' JSON length,
    /// plus framing for every object that could be a message, bounds the prompt's tokens
    /// without tokenizing or even parsing it. Images are the exception: an `image_url` part
    /// (a base64 image is megabytes) counts `estimate::IMAGE_TOKENS` instead of its bytes,
    /// and only a member that has one is parsed.
    fn bound_prompt(&self) -> u64 {
        let mut bound = 3u64;
        for name in self.wire.prompt_members() {
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
        self.wire
            .prompt_members()
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
        let name = self.wire.model_at().shown;
        match &self.model {
            Some(Value::String(m)) if !m.is_empty() => Ok(m),
            None => Err(ApiError::invalid(format!("'{name}' is required"), name)),
            Some(_) => Err(ApiError::invalid(
                format!("'{name}' must be a non-empty string"),
                name,
            )),
        }
    }

    /// A top-level member, parsed.
    pub fn value(&self, name: &str) -> Option<Value> {
        crate::dialect::request::Members::value(self, name)
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
        let completion = if self.call.endpoint.completes() {
            self.max_tokens
                .unwrap_or(reserve_max_tokens)
                .saturating_mul(self.choices)
        } else {
            0
        };
        TokenCounts {
            prompt: self.prompt_bound(),
            completion,
            ..TokenCounts::default()
        }
    }

    /// The most the request can produce besides tokens: `n` images from an image
    /// generation (an SD task's batches, a ComfyUI run's), one task from a task submission.
    pub fn worst_units(&self) -> Units {
        Units {
            images: if self.call.endpoint.makes_images() {
                self.choices
            } else {
                self.input_images
            },
            tasks: u64::from(self.call.task),
            ..Units::default()
        }
    }

    /// The prompt, owned, for a tokenizer to count off the async workers.
    pub fn prompt(&self) -> Prompt {
        Prompt {
            wire: self.wire,
            endpoint: self.call.endpoint,
            raw: self.raw.clone(),
            members: (self.wire.prompt_members().iter())
                .filter_map(|&name| Some((name, self.members.get(name)?.clone())))
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
        // Where the dialect names it: an SD task inside `override_settings`.
        let at = self.wire.model_at();
        let model = match at.inside {
            Some(inside) => {
                let mut outer = match self.value(at.member) {
                    Some(Value::Object(outer)) => outer,
                    _ => Map::new(),
                };
                outer.insert(inside.into(), name);
                (at.member, json(&Value::Object(outer)))
            }
            None => (at.member, json(&name)),
        };
        let mut patches = vec![(model.0, model.1.as_slice())];
        if let Some(options) = &options {
            patches.push(("stream_options", options));
        }
        // Where the dialect keeps its limits: DashScope's native body in `parameters`.
        let max_tokens = max_tokens.map(|n| match self.wire.limits_in() {
            Some(outer) => {
                let mut limits = match self.value(outer) {
                    Some(Value::Object(limits)) => limits,
                    _ => Map::new(),
                };
                limits.insert("max_tokens".into(), Value::from(n));
                (outer, json(&Value::Object(limits)))
            }
            None => ("max_tokens", n.to_string().into_bytes()),
        });
        if let Some((name, value)) = &max_tokens {
            patches.push((name, value));
        }
        // Nothing to change (each patch is what was sent) and no name sent twice: the
        // body goes as it came, without a copy (a chat's history is most of it).
        let sent = |name: &str| self.members.get(name).map(|span| &self.raw[span.clone()]);
        if !self.members.repeated
            && patches
                .iter()
                .all(|(name, value)| sent(name) == Some(value))
        {
            return self.raw.clone();
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

/// A request's prompt members, owned (the body is shared, not copied).
pub struct Prompt {
    wire: &'static dyn Wire,
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
        self.wire.prompt_tokens(self.endpoint, &prompt)
    }
}

impl crate::dialect::request::Members for ClientRequest {
    fn member(&self, name: &str) -> Option<&str> {
        let span = self.members.get(name)?.clone();
        // `raw` was checked to be UTF-8 and spans fall on value boundaries.
        std::str::from_utf8(&self.raw[span]).ok()
    }
}

#[cfg(test)]
mod tests;
