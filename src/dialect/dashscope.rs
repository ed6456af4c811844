//! DashScope's native API (Qwen): `POST /services/aigc/text-generation/generation` under
//! a base URL like `https://dashscope.aliyuncs.com/api/v1`, with `input.messages` or
//! `input.prompt` and `parameters`; answers in `output.text` or `output.choices`; usage as
//! `input_tokens` / `output_tokens` (running totals in streams: the last wins). Streams
//! are asked for with `X-DashScope-SSE: enable` and come as SSE `event:result` events with
//! no `[DONE]`: the stream's end is the answer's end. Errors are
//! `{"code","message","request_id"}`, with a 4xx status or with 200, and never billed as ok.
//! Its OpenAI-compatible mode (`/compatible-mode/v1`) is the `openai` dialect.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::framing::{self, Event};
use super::json::{Json, Object};
use super::observe::{self, Observed, collect};
use super::{RelayFacts, Route, Wire};
use crate::config::{Endpoint, StreamFormat};
use crate::error::openai_error;
use crate::metering::estimate::Counter;

pub struct DashScope;

impl Wire for DashScope {
    fn name(&self) -> &'static str {
        "dashscope"
    }

    fn routes(&self) -> &'static [Route] {
        const ROUTES: &[Route] = &[Route::recorded_as(
            "/api/v1/services/aigc/text-generation/generation",
            Endpoint::Chat,
            "generation",
        )];
        ROUTES
    }

    fn takes(&self) -> &'static str {
        "dashscope"
    }

    /// The native body keeps its limits in `parameters`.
    fn limits_in(&self) -> Option<&'static str> {
        Some("parameters")
    }

    /// `input.messages` in OpenAI's accounting, or `input.prompt` (one user turn).
    fn prompt_tokens(&self, _endpoint: Endpoint, prompt: &Map<String, Value>) -> u64 {
        let mut count = Counter::default();
        let input = prompt.get("input");
        match input.and_then(|i| i.get("prompt")) {
            Some(text) => 6u64.saturating_add(count.content(Some(text))),
            None => count.messages(input.and_then(|i| i.get("messages"))),
        }
    }

    /// The DashScope SDK asks for a stream with headers, not in the body.
    fn stream_asked(&self, headers: &http::HeaderMap) -> Option<bool> {
        let has = |name: &str, value: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.to_ascii_lowercase().contains(value))
        };
        Some(has("x-dashscope-sse", "enable") || has("accept", "text/event-stream"))
    }

    /// Errors carry DashScope's `code`, `message` and `request_id` beside OpenAI's
    /// `error`: the DashScope SDK shows only those.
    fn client_error(&self) -> Option<fn(&Value, Option<&str>) -> Value> {
        Some(native_error)
    }

    fn path(&self, endpoint: Endpoint) -> Option<&'static str> {
        (endpoint == Endpoint::Chat).then_some("/services/aigc/text-generation/generation")
    }

    fn headers(&self, streamed: bool) -> &'static [(&'static str, &'static str)] {
        if streamed {
            &[
                ("x-dashscope-sse", "enable"),
                ("accept", "text/event-stream"),
            ]
        } else {
            &[]
        }
    }

    fn stream_format(&self) -> StreamFormat {
        StreamFormat::Sse
    }

    fn error(&self, v: &Object) -> Option<Value> {
        let code = v.str("code").filter(|c| !c.is_empty());
        match code {
            Some(code) if !v.has("output") => {
                let message = v.str("message");
                Some(openai_error(
                    message.unwrap_or("the backend reported an error"),
                    "upstream_error",
                    Value::from(code),
                    None,
                ))
            }
            _ => observe::as_error(v),
        }
    }

    fn observe(&self, seen: &mut Observed, v: &Object) {
        seen.observe(v);
        let Some(output) = v.get("output") else {
            return;
        };
        let finished = |reason: Option<&Json>| {
            reason
                .and_then(Json::as_str)
                .is_some_and(|r| !r.is_empty() && r != "null")
        };
        let choices = output.get("choices").and_then(Json::as_array);
        seen.finished |= finished(output.get("finish_reason"))
            || choices
                .into_iter()
                .flatten()
                .any(|c| finished(c.get("finish_reason")));
    }

    /// Without `incremental_output` each event repeats the answer so far: an event longer
    /// than everything delivered that starts with it replaces it rather than adding to it.
    /// (Only estimates read this text, when a backend sends no usage at all.)
    fn deliver(&self, seen: &mut Observed, v: &Object) {
        let Some(output) = v.get("output") else {
            return;
        };
        let mut text = String::new();
        collect(output.get("text"), &mut text);
        for choice in output
            .get("choices")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            collect(
                choice.get("message").and_then(|m| m.get("content")),
                &mut text,
            );
        }
        let delivered = &mut seen.delivered_text;
        if !delivered.is_empty()
            && text.len() > delivered.len()
            && text.starts_with(delivered.as_str())
        {
            *delivered = text;
        } else {
            delivered.push_str(&text);
        }
    }

    fn closing_ends_answer(&self) -> bool {
        true
    }

    fn frame(&self, event: &Event, _chunk: &Object, relay: &RelayFacts) -> Bytes {
        result_event(relay.sent + 1, &event.data)
    }

    fn done(&self) -> Option<Bytes> {
        None
    }

    fn error_frame(&self, error: &Value) -> Bytes {
        let native = native_error(error, None);
        Bytes::from(format!("event:error\n:HTTP_STATUS/500\ndata:{native}\n\n"))
    }

    fn length_end(&self, mut last: Map<String, Value>, relay: &RelayFacts) -> Bytes {
        let output = last.entry("output").or_insert_with(|| json!({}));
        if output.get("choices").is_some() {
            output["choices"] = json!([{
                "finish_reason": "length",
                "message": {"role": "assistant", "content": ""}
            }]);
        } else {
            output["text"] = json!("");
            output["finish_reason"] = json!("length");
        }
        let data = serde_json::to_string(&last).expect("a JSON map always serializes");
        result_event(relay.sent + 1, &data)
    }
}

fn result_event(id: u64, data: &str) -> Bytes {
    let id = id.to_string();
    let head = "\nevent:result\n:HTTP_STATUS/200\ndata:";
    framing::outgoing(&["id:", &id, head, data, "\n\n"])
}

/// An error in OpenAI's shape with DashScope's `code`, `message` and `request_id` beside
/// it, so that the DashScope SDK shows the code and message (it reads only those).
pub fn native_error(openai: &Value, request_id: Option<&str>) -> Value {
    let inner = &openai["error"];
    let code = match &inner["code"] {
        Value::String(code) if !code.is_empty() => code.clone(),
        _ => inner["type"].as_str().unwrap_or("InternalError").to_owned(),
    };
    let mut body = match openai {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    body.insert("code".into(), Value::from(code));
    body.insert("message".into(), inner["message"].clone());
    if let Some(id) = request_id {
        body.insert("request_id".into(), Value::from(id));
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn errors_are_found_with_any_status_and_answers_are_not_errors() {
        let error = obj(json!({"code": "InvalidParameter", "message": "bad input",
            "request_id": "r1"}));
        let mapped = DashScope.error(&Object::of(&error)).unwrap();
        assert_eq!(mapped["error"]["code"], "InvalidParameter");
        assert_eq!(mapped["error"]["message"], "bad input");
        let answer = obj(json!({"output": {"text": "hi", "finish_reason": "stop"},
            "usage": {"input_tokens": 3, "output_tokens": 1}, "request_id": "r2"}));
        assert!(DashScope.error(&Object::of(&answer)).is_none());
        let empty_code = obj(json!({"code": "", "output": {}}));
        assert!(DashScope.error(&Object::of(&empty_code)).is_none());
    }

    #[test]
    fn running_usage_and_the_end_are_read_from_output() {
        let mut seen = Observed::default();
        for (n, reason) in [(1, "null"), (2, "null"), (3, "stop")] {
            let event = obj(
                json!({"output": {"choices": [{"message": {"role": "assistant",
                "content": "x"}, "finish_reason": reason}]},
                "usage": {"input_tokens": 7, "output_tokens": n, "total_tokens": 7 + n}}),
            );
            assert!(!seen.finished);
            let text = Value::Object(event).to_string();
            let event = Object::parse(&text).unwrap();
            DashScope.observe(&mut seen, &event);
            DashScope.deliver(&mut seen, &event);
        }
        assert!(seen.finished);
        let usage = seen.usage.unwrap();
        assert_eq!((usage.prompt, usage.completion), (7, 3));
        assert_eq!(seen.delivered_text, "xxx");
        // Without incremental output every event repeats the answer so far.
        let mut seen = Observed::default();
        for text in ["我", "我是", "我是千问"] {
            let event = obj(json!({"output": {"text": text}}));
            DashScope.deliver(&mut seen, &Object::of(&event));
        }
        assert_eq!(seen.delivered_text, "我是千问");
    }

    #[test]
    fn a_native_error_keeps_openais_shape_beside_dashscopes() {
        let openai = openai_error("slow down", "rate_limit_exceeded", Value::Null, None);
        let native = native_error(&openai, Some("req_1"));
        assert_eq!(native["code"], "rate_limit_exceeded");
        assert_eq!(native["message"], "slow down");
        assert_eq!(native["request_id"], "req_1");
        assert_eq!(native["error"]["message"], "slow down");
    }
}
