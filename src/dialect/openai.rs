//! OpenAI's API, the shape most backends copy: `/chat/completions`, `/embeddings`,
//! `/rerank`; SSE `data:` chunks ended by `data: [DONE]`; usage in the last chunk when
//! `stream_options.include_usage` asks for it. Its variants are understood too: GenStudio's
//! `{"code","msg"}` and vLLM's `{"object":"error"}` errors, LMDeploy's bare-JSON streams
//! (`framing` decides by the first byte) and InternLM's moderation verdicts (`observe`).
//! Relayed chunks are made complete for OpenAI's SDKs (`object`, `created`,
//! `finish_reason: null` for LMDeploy's `""`).

use bytes::Bytes;
use serde_json::{Map, Value};

use super::framing::{self, Event};
use super::json::Object;
use super::{RelayFacts, Route, To, Wire};
use crate::config::Endpoint;

pub struct OpenAi;

/// OpenAI's API and the variants of it that GenStudio's chips and deployments, LMDeploy,
/// vLLM and InternLM speak, so those names are accepted for it.
impl Wire for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["genstudio", "lmdeploy", "vllm", "internlm"]
    }

    fn routes(&self) -> &'static [Route] {
        &ROUTES
    }
}

/// OpenAI's base URLs (`/v1`), GenStudio's (`/maas`: M×N pairs, deployments and the
/// model-named routes), InternLM's (`/api/v1`) and DashScope's compatible mode.
static ROUTES: [Route; 13] = [
    Route::send(
        "/maas/{model}/{chip}/chat/completions",
        Endpoint::Chat,
        To::Pair,
    ),
    Route::send(
        "/maas/{model}/{chip}/embeddings",
        Endpoint::Embeddings,
        To::Pair,
    ),
    Route::send("/maas/{model}/{chip}/rerank", Endpoint::Rerank, To::Pair),
    Route::send(
        "/maas/deployment/{id}/chat/completions",
        Endpoint::Chat,
        To::Deployment,
    ),
    Route::named("/maas/v1/chat/completions", Endpoint::Chat),
    Route::named("/v1/chat/completions", Endpoint::Chat),
    Route::named("/api/v1/chat/completions", Endpoint::Chat),
    Route::named("/compatible-mode/v1/chat/completions", Endpoint::Chat),
    Route::named("/v1/images/generations", Endpoint::Images),
    Route::named("/maas/v1/embeddings", Endpoint::Embeddings),
    Route::named("/v1/embeddings", Endpoint::Embeddings),
    Route::named("/maas/v1/rerank", Endpoint::Rerank),
    Route::named("/v1/rerank", Endpoint::Rerank),
];

pub fn path(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::Chat => Some("/chat/completions"),
        Endpoint::Embeddings => Some("/embeddings"),
        Endpoint::Rerank => Some("/rerank"),
        Endpoint::Images => Some("/images/generations"),
    }
}

/// A chunk as OpenAI's SDKs expect it; the backend's own text when nothing changed.
pub fn frame(event: &Event, chunk: &Object, relay: &RelayFacts) -> Bytes {
    let normalised;
    let json = match normalise(chunk, relay.created, relay.bare_json) {
        Some(chunk) => {
            normalised = serde_json::to_string(&chunk).expect("a JSON map always serializes");
            &normalised
        }
        None => &event.data,
    };
    framing::outgoing(&["data: ", json, "\n\n"])
}

pub fn error_frame(error: &Value) -> Bytes {
    // Clients that read `object` on every chunk (InternLM's samples do) find one here too;
    // OpenAI's SDKs raise the `error` as the backend's.
    let mut error = error.clone();
    if let Some(fields) = error.as_object_mut() {
        fields.entry("object").or_insert_with(|| "error".into());
    }
    Bytes::from(format!("data: {error}\n\n"))
}

/// A last chunk like `last` with no content and `finish_reason: "length"`, then `[DONE]`.
pub fn length_end(mut last: Map<String, Value>, relay: &RelayFacts) -> Bytes {
    last.remove("usage");
    let normalised = normalise(&Object::of(&last), relay.created, true);
    let mut last = normalised.unwrap_or(last);
    last.insert(
        "choices".into(),
        serde_json::json!([{"index": 0, "delta": {}, "finish_reason": "length"}]),
    );
    let json = serde_json::to_string(&last).expect("a JSON map always serializes");
    Bytes::from(format!("data: {json}\n\ndata: [DONE]\n\n"))
}

/// A chunk made complete for OpenAI clients, if it is not: `object` and `created` present
/// (`created` replaced too when `one_created`), and LMDeploy's `finish_reason: ""` as
/// `null`. `None` when nothing changes, as for nearly every chunk.
fn normalise(chunk: &Object, created: i64, one_created: bool) -> Option<Map<String, Value>> {
    let add_object = !chunk.has("object");
    let set_created = match chunk.get("created") {
        None => true,
        Some(stamp) => one_created && stamp.to_value().as_i64() != Some(created),
    };
    let empty_finish = chunk.choices().any(|c| c.str("finish_reason") == Some(""));
    if !add_object && !set_created && !empty_finish {
        return None;
    }
    let mut chunk = chunk.to_map();
    if add_object {
        chunk.insert("object".into(), Value::from("chat.completion.chunk"));
    }
    if set_created {
        chunk.insert("created".into(), Value::from(created));
    }
    let choices = chunk.get_mut("choices").and_then(Value::as_array_mut);
    for choice in choices.into_iter().flatten() {
        if choice.get("finish_reason").and_then(Value::as_str) == Some("") {
            choice["finish_reason"] = Value::Null;
        }
    }
    Some(chunk)
}
