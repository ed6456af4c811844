//! Anthropic's Messages API (`POST /v1/messages`), which Zhipu, DashScope and DeepSeek
//! also serve for coding tools. The key comes as `x-api-key` (or a bearer token) and goes
//! to the backend the same way, with `anthropic-version`. A body names `model`,
//! `max_tokens`, `system` and `messages` (text or content blocks); `stream: true` asks for
//! SSE events: `message_start` (the message, with its `usage`: `input_tokens`,
//! `cache_creation_input_tokens`, `cache_read_input_tokens`, a first `output_tokens`),
//! `content_block_start`/`_delta`/`_stop`, `ping`, `message_delta` (`stop_reason` and the
//! running `output_tokens`; newer backends repeat the input counts there), `message_stop`,
//! or an `error` event. Usage is counted as the ledger counts it: prompt tokens are the
//! input, cache-write and cache-read tokens together (Anthropic's `input_tokens` leaves
//! out both), cache reads are `cached`, cache writes `cache_write`, each at its own rate.
//! Errors are `{"type":"error","error":{"type","message"}}`, tollgate's own too.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::framing::{self, Event};
use super::json::{Json, Object};
use super::observe::{Observed, collect};
use super::{RelayFacts, Route, Wire};
use crate::billing::TokenCounts;
use crate::config::{Endpoint, StreamFormat};
use crate::metering::estimate::{self, collect_text};

pub struct Anthropic;

/// The API version sent to backends: the one every Anthropic-compatible API accepts.
const VERSION: &str = "2023-06-01";

impl Wire for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    /// Clients set their SDK's base URL to tollgate's root, or to where DeepSeek
    /// (`/anthropic`) and Zhipu (`/api/anthropic`) serve it.
    fn routes(&self) -> &'static [Route] {
        const ROUTES: &[Route] = &[
            Route::named("/v1/messages", Endpoint::Chat),
            Route::named("/anthropic/v1/messages", Endpoint::Chat),
            Route::named("/api/anthropic/v1/messages", Endpoint::Chat),
        ];
        ROUTES
    }

    fn takes(&self) -> &'static str {
        "anthropic"
    }

    fn prompt_members(&self) -> &'static [&'static str] {
        &["system", "messages", "tools"]
    }

    /// OpenAI's accounting of the messages and tools, and the system prompt's text.
    fn prompt_tokens(&self, endpoint: Endpoint, prompt: &Map<String, Value>) -> u64 {
        let mut system = String::new();
        collect_text(prompt.get("system"), &mut system);
        estimate::prompt_tokens(endpoint, prompt).saturating_add(estimate::count_text(&system))
    }

    /// Tollgate's errors in Anthropic's shape, which its SDKs read.
    fn client_error(&self) -> Option<fn(&Value, Option<&str>) -> Value> {
        Some(native_error)
    }

    fn path(&self, endpoint: Endpoint) -> Option<&'static str> {
        (endpoint == Endpoint::Chat).then_some("/v1/messages")
    }

    fn credential(&self) -> (&'static str, &'static str) {
        ("x-api-key", "")
    }

    /// The beta features a client opts into (coding tools send several).
    fn passed_headers(&self) -> &'static [&'static str] {
        &["anthropic-beta"]
    }

    fn headers(&self, _streamed: bool) -> &'static [(&'static str, &'static str)] {
        &[("anthropic-version", VERSION)]
    }

    fn stream_format(&self) -> StreamFormat {
        StreamFormat::Sse
    }

    fn observe(&self, seen: &mut Observed, v: &Object) {
        match v.str("type") {
            // A whole answer, or the message a stream starts with.
            Some("message") => take_usage(seen, v.get("usage")),
            Some("message_start") => {
                take_usage(seen, v.get("message").and_then(|m| m.get("usage")));
            }
            Some("message_delta") => {
                take_usage(seen, v.get("usage"));
                let reason = v.get("delta").and_then(|d| d.get("stop_reason"));
                seen.finished |= reason.and_then(Json::as_str).is_some_and(|r| !r.is_empty());
            }
            _ => {}
        }
    }

    fn deliver(&self, seen: &mut Observed, v: &Object) {
        let parts: Vec<&Object> = match v.str("type") {
            Some("content_block_delta") => v
                .get("delta")
                .and_then(Json::as_object)
                .into_iter()
                .collect(),
            Some("message") => v
                .get("content")
                .into_iter()
                .flat_map(Json::objects)
                .collect(),
            _ => Vec::new(),
        };
        for part in parts {
            for name in ["text", "thinking", "partial_json"] {
                collect(part.get(name), &mut seen.delivered_text);
            }
            if let Some(input) = part.get("input") {
                seen.delivered_text.push_str(&input.to_value().to_string());
            }
        }
    }

    fn is_done(&self, event: &Event) -> bool {
        match event.name.as_deref() {
            Some(name) => name == "message_stop",
            // A relay in between that dropped the `event:` lines: the data says.
            None => serde_json::from_str::<Value>(&event.data)
                .is_ok_and(|v| v.get("type").and_then(Value::as_str) == Some("message_stop")),
        }
    }

    fn frame(&self, event: &Event, chunk: &Object, _relay: &RelayFacts) -> Bytes {
        let name = event
            .name
            .as_deref()
            .or_else(|| chunk.str("type"))
            .unwrap_or("message");
        framing::outgoing(&["event: ", name, "\ndata: ", &event.data, "\n\n"])
    }

    fn done(&self) -> Option<Bytes> {
        Some(Bytes::from_static(
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ))
    }

    fn error_frame(&self, error: &Value) -> Bytes {
        Bytes::from(format!(
            "event: error\ndata: {}\n\n",
            native_error(error, None)
        ))
    }

    /// The answer ends as one that reached `max_tokens`: a `message_delta` saying so, with
    /// the output tokens billed (what the hold covers), then `message_stop`.
    fn length_end(&self, last: Map<String, Value>, relay: &RelayFacts) -> Bytes {
        let reported = last
            .get("usage")
            .and_then(|u| u.get("output_tokens"))
            .and_then(Value::as_u64);
        let output = match (relay.completion_cap, reported) {
            (Some(cap), Some(reported)) => cap.min(reported),
            (cap, reported) => cap.or(reported).unwrap_or(0),
        };
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
            "usage": {"output_tokens": output}});
        let mut end = format!("event: message_delta\ndata: {delta}\n\n").into_bytes();
        end.extend_from_slice(
            &self
                .done()
                .expect("Anthropic streams end with message_stop"),
        );
        Bytes::from(end)
    }
}

/// Adds what a `usage` object says to what was seen: the input counts where it has them
/// (a stream's `message_start`, and its `message_delta` on newer backends), the output
/// count as the latest running total.
fn take_usage(seen: &mut Observed, usage: Option<&Json>) {
    let Some(usage) = usage.and_then(Json::as_object) else {
        return;
    };
    let count = |name: &str| usage.get(name).and_then(Json::as_u64);
    let (input, write, read) = (
        count("input_tokens"),
        count("cache_creation_input_tokens"),
        count("cache_read_input_tokens"),
    );
    let output = count("output_tokens");
    if input.is_none() && write.is_none() && read.is_none() && output.is_none() {
        return;
    }
    let mut tokens = seen.usage.unwrap_or_default();
    if input.is_some() || write.is_some() || read.is_some() {
        let (write, read) = (write.unwrap_or(0), read.unwrap_or(0));
        tokens = TokenCounts {
            prompt: input
                .unwrap_or(0)
                .saturating_add(write)
                .saturating_add(read),
            cached: read,
            cache_write: write,
            ..tokens
        };
    }
    if let Some(output) = output {
        tokens.completion = output;
    }
    seen.usage = Some(tokens);
}

/// `{"type":"error","error":{"type","message"}}` from tollgate's OpenAI-shaped error (the
/// request id beside it when there is one).
pub fn native_error(openai: &Value, request_id: Option<&str>) -> Value {
    let inner = &openai["error"];
    let kind = inner["type"].as_str().unwrap_or("api_error");
    let message = inner["message"].as_str().unwrap_or("the request failed");
    let mut error = json!({"type": "error", "error": {"type": kind, "message": message}});
    if let Some(id) = request_id {
        error["request_id"] = Value::from(id);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn usage_counts_cache_reads_and_writes_inside_the_prompt() {
        let mut seen = Observed::default();
        let start = obj(json!({"type": "message_start", "message": {"id": "msg_1",
            "type": "message", "role": "assistant", "content": [], "usage": {
            "input_tokens": 25, "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 2000, "output_tokens": 1}}}));
        Anthropic.observe(&mut seen, &Object::of(&start));
        assert!(!seen.finished);
        let delta = obj(json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 15}}));
        Anthropic.observe(&mut seen, &Object::of(&delta));
        assert!(seen.finished);
        assert_eq!(
            seen.usage,
            Some(TokenCounts {
                prompt: 3025,
                completion: 15,
                cached: 2000,
                cache_write: 1000,
                reasoning: 0,
            })
        );
        // A whole answer says the same in one object.
        let mut whole = Observed::default();
        let answer = br#"{"type": "message", "usage": {"input_tokens": 25,
            "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000,
            "output_tokens": 15}}"#;
        Anthropic.observe(&mut whole, &Object::head(answer).unwrap());
        assert_eq!(whole.usage, seen.usage);
    }

    #[test]
    fn frames_keep_their_event_names_and_errors_are_anthropic_shaped() {
        let event = Event {
            name: Some("content_block_delta".into()),
            data: r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#.into(),
        };
        let chunk = Object::parse(&event.data).unwrap();
        let facts = RelayFacts {
            created: 0,
            bare_json: false,
            sent: 0,
            completion_cap: None,
        };
        let frame = Anthropic.frame(&event, &chunk, &facts);
        assert!(frame.starts_with(b"event: content_block_delta\ndata: {"));
        let mut seen = Observed::default();
        Anthropic.deliver(&mut seen, &chunk);
        assert_eq!(seen.delivered_text, "Hi");
        let error = crate::error::openai_error("slow down", "rate_limit_error", Value::Null, None);
        let native = native_error(&error, Some("req_1"));
        assert_eq!(native["type"], "error");
        assert_eq!(native["error"]["type"], "rate_limit_error");
        assert_eq!(native["error"]["message"], "slow down");
        assert_eq!(native["request_id"], "req_1");
        assert!(Anthropic.is_done(&Event {
            name: Some("message_stop".into()),
            data: r#"{"type":"message_stop"}"#.into(),
        }));
        // Without its event line, and text that only mentions it.
        assert!(Anthropic.is_done(&Event {
            name: None,
            data: r#"{"type":"message_stop"}"#.into(),
        }));
        assert!(
            !Anthropic.is_done(&Event {
                name: None,
                data:
                    r#"{"type":"content_block_delta","delta":{"text":"\"type\":\"message_stop\""}}"#
                        .into(),
            })
        );
    }
}
