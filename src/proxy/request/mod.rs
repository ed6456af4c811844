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
mod tests {
    use super::*;

    fn patched(body: &str, include_usage: bool) -> String {
        let request = ClientRequest::parse(Endpoint::Chat, Bytes::from(body.to_owned())).unwrap();
        String::from_utf8(request.patched("up-model", include_usage, None).to_vec()).unwrap()
    }

    #[test]
    fn the_model_is_replaced_in_place_and_everything_else_passes_through() {
        assert_eq!(
            patched(
                r#"{"messages":[{"role":"user","content":"hi"}],"model":"m","n":1}"#,
                false
            ),
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"up-model","n":1}"#
        );
        assert_eq!(
            patched(r#"{"input":"x"}"#, false),
            r#"{"input":"x","model":"up-model"}"#
        );
    }

    #[test]
    fn values_pass_through_as_written() {
        // Numbers beyond f64, escapes and spacing inside values are not rewritten.
        assert_eq!(
            patched(
                "{ \"seed\" : 123456789012345678901234567890 , \"s\\u00e9\": \"\\u00e9\\n\", \"model\": \"m\",\n \"x\": [1, 2.50]}",
                false
            ),
            "{\"seed\":123456789012345678901234567890,\"sé\":\"\\u00e9\\n\",\"model\":\"up-model\",\"x\":[1, 2.50]}"
        );
    }

    #[test]
    fn a_repeated_name_keeps_its_first_place_and_last_value() {
        assert_eq!(
            patched(r#"{"n":1,"model":"a","n":2}"#, false),
            r#"{"n":2,"model":"up-model"}"#
        );
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let deep = |levels: usize| {
            format!(
                r#"{{"s":"[[{{\"[","v":{}1{}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        assert!(!nests_deeper(deep(127).as_bytes(), MAX_DEPTH));
        assert!(nests_deeper(deep(128).as_bytes(), MAX_DEPTH));
        let refused = ClientRequest::parse(Endpoint::Chat, Bytes::from(deep(500)));
        assert!(matches!(refused, Err(ApiError::InvalidJson(m)) if m.contains("deeper than 128")));
        assert!(ClientRequest::parse(Endpoint::Chat, Bytes::from(deep(100))).is_ok());
    }

    #[test]
    fn many_members_keep_their_order_and_repeats_keep_the_last_value() {
        let names: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        let mut body: Vec<String> = names.iter().map(|n| format!("\"{n}\":1")).collect();
        body.push(r#""k3":2"#.into());
        body.push(r#""k39":3"#.into());
        let sent = format!("{{{}}}", body.join(","));
        let request = ClientRequest::parse(Endpoint::Chat, Bytes::from(sent)).unwrap();
        assert_eq!(request.value("k3"), Some(Value::from(2)));
        assert_eq!(request.value("k39"), Some(Value::from(3)));
        assert_eq!(request.value("k40"), None);
        let upstream: Map<String, Value> =
            serde_json::from_slice(&request.patched("up-model", false, None)).unwrap();
        let order: Vec<&String> = upstream.keys().collect();
        assert_eq!(order.len(), 41);
        assert!(order[..40].iter().zip(&names).all(|(a, b)| *a == b));
        assert_eq!(upstream["k3"], 2);
    }

    #[test]
    fn include_usage_is_added_to_what_the_client_sent() {
        assert_eq!(
            patched(r#"{"model":"m","stream":true}"#, true),
            r#"{"model":"up-model","stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            patched(
                r#"{"stream_options":{"include_usage":false,"x":1},"model":"m"}"#,
                true
            ),
            r#"{"stream_options":{"include_usage":true,"x":1},"model":"up-model"}"#
        );
        assert_eq!(
            patched(r#"{"stream_options":{"x":1}}"#, true),
            r#"{"stream_options":{"x":1,"include_usage":true},"model":"up-model"}"#
        );
        assert_eq!(
            patched(r#"{"stream_options":"odd"}"#, true),
            r#"{"stream_options":{"include_usage":true},"model":"up-model"}"#
        );
    }

    #[test]
    fn bodies_that_are_not_one_object_are_refused_with_the_reason() {
        let refused = |body: &[u8]| match ClientRequest::parse(
            Endpoint::Chat,
            Bytes::copy_from_slice(body),
        ) {
            Err(ApiError::InvalidJson(message)) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(b"[1]"), "the body must be a JSON object");
        assert_eq!(refused(b"\"x\""), "the body must be a JSON object");
        assert!(refused(b"{\"a\":1} {}").contains("trailing"));
        let invalid_utf8 = refused(b"{\"a\":\"\xff\"}");
        assert!(invalid_utf8.contains("unicode"), "{invalid_utf8}");
        assert!(refused(b"{\"a\":[1,}").contains("line 1"));
    }

    #[test]
    fn the_fields_tollgate_reads_are_parsed() {
        let request = ClientRequest::parse(
            Endpoint::Chat,
            Bytes::from_static(
                br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},
                     "messages":[{"role":"user","content":"hello world"}],"max_tokens":7}"#,
            ),
        )
        .unwrap();
        assert_eq!(request.model().unwrap(), "m");
        assert!(request.stream && request.wants_stream_usage);
        assert_eq!(request.max_tokens, Some(7));
        assert_eq!(request.prompt().estimate(), 3 + 3 + 2);
        assert!(request.prompt_bound() >= request.prompt().estimate());
        let bad = ClientRequest::parse(Endpoint::Chat, Bytes::from_static(br#"{"stream":1}"#));
        assert!(matches!(bad, Err(ApiError::InvalidRequest { .. })));
    }

    #[test]
    fn client_numbers_are_bounded_at_parse_time() {
        let parse = |body: &str| ClientRequest::parse(Endpoint::Chat, Bytes::from(body.to_owned()));
        let huge = parse(r#"{"max_tokens":18446744073709551615}"#).unwrap();
        assert_eq!(huge.max_tokens, Some(MAX_COMPLETION_TOKENS));
        let beyond = parse(r#"{"max_completion_tokens":99999999999999999999999}"#).unwrap();
        assert_eq!(beyond.max_tokens, Some(MAX_COMPLETION_TOKENS));
        assert_eq!(parse(r#"{"n":3}"#).unwrap().choices, 3);
        for bad in [
            r#"{"max_tokens":-1}"#,
            r#"{"max_tokens":0}"#,
            r#"{"max_tokens":1.5}"#,
            r#"{"max_tokens":"100"}"#,
            r#"{"n":0}"#,
            r#"{"n":129}"#,
            r#"{"n":18446744073709551616}"#,
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                matches!(err, ApiError::InvalidRequest { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_prompt_bound_is_never_below_the_tokenizer() {
        let bodies = [
            r#"{"messages":[{},{},{}]}"#,
            r#"{"messages":[{"role":"user","content":"你好，世界 \u00e9\n"},{"role":"user","name":"x","content":"a"}]}"#,
            r#"{"input":["hello world","aaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}"#,
        ];
        for body in bodies {
            let endpoint = if body.contains("input") {
                Endpoint::Embeddings
            } else {
                Endpoint::Chat
            };
            let request = ClientRequest::parse(endpoint, Bytes::from(body.to_owned())).unwrap();
            assert!(
                request.prompt_bound() >= request.prompt().estimate(),
                "{body}"
            );
        }
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Whatever object a client sends, compact or pretty, the backend gets the same
        /// object with only `model` (and, if asked, `include_usage`) changed.
        #[test]
        fn the_upstream_body_is_the_clients_object_with_model_replaced(
            members in proptest::collection::btree_map(proptest::prelude::any::<String>(), json(), 0..8),
            pretty in proptest::prelude::any::<bool>(),
        ) {
            // Members tollgate checks (a request with odd ones is refused): not part of this test.
            let checked = ["stream", "n", "max_tokens", "max_completion_tokens"];
            let sent: Map<String, Value> = members
                .into_iter()
                .filter(|(name, _)| !checked.contains(&name.as_str()))
                .collect();
            let text = if pretty {
                serde_json::to_string_pretty(&sent).unwrap()
            } else {
                serde_json::to_string(&sent).unwrap()
            };
            let request = ClientRequest::parse(Endpoint::Chat, Bytes::from(text.clone())).unwrap();
            let upstream: Map<String, Value> =
                serde_json::from_slice(&request.patched("up-model", false, None)).unwrap();
            // Read back the way the backend would read what the client sent (serde_json's
            // float parsing is not exact; the bytes themselves pass through unchanged).
            let mut expected: Map<String, Value> = serde_json::from_str(&text).unwrap();
            expected.insert("model".into(), Value::from("up-model"));
            proptest::prop_assert_eq!(upstream, expected);
        }
    }

    #[test]
    fn dashscope_keeps_its_limits_in_parameters() {
        let body = r#"{"model":"qwen-plus","input":{"prompt":"hi"},"parameters":{"n":2,"seed":7}}"#;
        let request = ClientRequest::parse(Endpoint::Generation, Bytes::from(body)).unwrap();
        assert_eq!((request.max_tokens, request.choices), (None, 2));
        assert_eq!(request.worst_case(100).completion, 200);
        let sent = request.patched("qwen-plus-2025", false, Some(40));
        assert_eq!(
            std::str::from_utf8(&sent).unwrap(),
            r#"{"model":"qwen-plus-2025","input":{"prompt":"hi"},"parameters":{"n":2,"seed":7,"max_tokens":40}}"#
        );
        let body = r#"{"model":"m","input":{},"parameters":{"max_tokens":5}}"#;
        let request = ClientRequest::parse(Endpoint::Generation, Bytes::from(body)).unwrap();
        assert_eq!(request.max_tokens, Some(5));
    }
}
