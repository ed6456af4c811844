//! Anthropic's Messages API, as its documentation and the `anthropic` SDK show it:
//! `POST /anthropic/v1/messages` answers a `message` with its `content` blocks and `usage`
//! (`input_tokens` without the cache's tokens, `cache_creation_input_tokens`,
//! `cache_read_input_tokens`, `output_tokens`); with `stream: true`, SSE events
//! `message_start`, `content_block_start`, `ping`, one `content_block_delta` per piece,
//! `content_block_stop`, `message_delta` (`stop_reason`, the output count; with the
//! `running_usage` knob the input counts too, as newer backends send) and `message_stop`.
//! Errors are `{"type":"error","error":{"type","message"}}`: HTTP 400, 429, 500 or 529,
//! or an `error` event in a stream (`inband_error`). The prompt's total is the
//! `prompt_tokens` knob (by default the characters of the messages), of which
//! `cached_tokens` were read from the cache and `cache_write_tokens` written to it.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::formats::Answer;
use super::{Ending, Fault, Knobs, paced, replay};

/// Answers one call (already accepted: knobs read, latency waited).
pub fn messages(body: &Value, knobs: &Knobs) -> Response {
    let streamed = body.get("stream").and_then(Value::as_bool) == Some(true);
    if let Some(replayed) = replay(knobs, streamed) {
        return replayed;
    }
    let error = |kind: &str, message: &str| json!({"type": "error", "error": {"type": kind, "message": message}});
    let refused = match knobs.fault {
        Some(Fault::Http400) => Some((
            400,
            error("invalid_request_error", "max_tokens: Field required"),
        )),
        Some(Fault::Http429) => Some((
            429,
            error(
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
            ),
        )),
        Some(Fault::Http500) => Some((529, error("overloaded_error", "Overloaded"))),
        _ => None,
    };
    if let Some((status, body)) = refused {
        let status = StatusCode::from_u16(status).expect("a valid status");
        return (status, axum::Json(body)).into_response();
    }
    let answer = Answer::new(body, knobs);
    let write = knobs.cache_write_tokens.unwrap_or(0);
    let input = answer
        .prompt
        .saturating_sub(answer.cached)
        .saturating_sub(write);
    let usage = |output: u64| {
        json!({"input_tokens": input, "cache_creation_input_tokens": write,
               "cache_read_input_tokens": answer.cached, "output_tokens": output})
    };
    let reported = knobs.usage != Some(false);
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    if !streamed {
        let text: String = answer.pieces.concat();
        let mut message = json!({"id": id, "type": "message", "role": "assistant",
            "model": answer.model, "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null});
        if reported {
            message["usage"] = usage(answer.completion);
        }
        return axum::Json(message).into_response();
    }
    let event = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut start = json!({"id": id, "type": "message", "role": "assistant", "content": [],
        "model": answer.model, "stop_reason": null, "stop_sequence": null});
    if reported {
        start["usage"] = usage(1);
    }
    let mut frames = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": start}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let pieces = answer.pieces.len();
    let cut_at = match knobs.fault {
        Some(Fault::Cut | Fault::Truncate | Fault::Stall) => pieces / 2,
        Some(Fault::InbandError) => 2.min(pieces),
        _ => pieces,
    };
    for piece in &answer.pieces[..cut_at] {
        frames.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    match knobs.fault {
        Some(Fault::Cut) => return paced(frames, knobs.chunk_delay_ms, Some(Ending::Break), SSE),
        Some(Fault::Stall) => return paced(frames, knobs.chunk_delay_ms, Some(Ending::Hang), SSE),
        Some(Fault::Truncate) => return paced(frames, knobs.chunk_delay_ms, None, SSE),
        Some(Fault::InbandError) => {
            frames.push(event("error", error("overloaded_error", "Overloaded")));
            return paced(frames, knobs.chunk_delay_ms, None, SSE);
        }
        _ => {}
    }
    frames.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut end_usage = json!({"output_tokens": answer.completion});
    if knobs.running_usage {
        end_usage = usage(answer.completion);
    }
    let mut delta = json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}});
    if reported {
        delta["usage"] = end_usage;
    }
    frames.push(event("message_delta", delta));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    paced(frames, knobs.chunk_delay_ms, None, SSE)
}

const SSE: &str = "text/event-stream";
