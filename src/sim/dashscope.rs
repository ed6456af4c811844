//! DashScope's native text generation, as its documentation and SDK show it:
//! `POST /dashscope/services/aigc/text-generation/generation` with `input.messages` or
//! `input.prompt` and `parameters` (`result_format` `text` or `message`,
//! `incremental_output`); a stream when `X-DashScope-SSE: enable` is sent, as SSE
//! `id:` / `event:result` / `:HTTP_STATUS/200` / `data:` events with running usage totals
//! and no `[DONE]`; errors as `{"code","message","request_id"}`, with a 4xx status or
//! with 200 (`inband_error`), and `event:error` inside a stream.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::formats::Answer;
use super::{Ending, Fault, Knobs, paced, replay};

/// Answers one call (already accepted: knobs read, latency waited).
pub fn generation(headers: &HeaderMap, body: &Value, knobs: &Knobs) -> Response {
    let streamed = headers
        .get("x-dashscope-sse")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enable"));
    if let Some(replayed) = replay(knobs, streamed) {
        return replayed;
    }
    let request_id = "3f8e0c1a-sim-dashscope";
    let error = |code: &str, message: &str| json!({"code": code, "message": message, "request_id": request_id});
    match knobs.fault {
        Some(Fault::Http400) => {
            let body = error(
                "InvalidParameter",
                "Range of input length should be [1, 30720]",
            );
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
        Some(Fault::Http429) => {
            let body = error("Throttling.RateQuota", "Requests rate limit exceeded");
            return (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        }
        Some(Fault::Http500) => {
            let body = error("InternalError", "An internal error has occured");
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
        }
        _ => {}
    }
    let inband = error(
        "DataInspectionFailed",
        "Output data may contain inappropriate content.",
    );
    let parameters = &body["parameters"];
    let messages = parameters["result_format"].as_str() == Some("message");
    let incremental = parameters["incremental_output"].as_bool() == Some(true);
    let answer = dashscope_answer(body, knobs);
    let output = |text: String, reason: &str| {
        if messages {
            json!({"choices": [{"finish_reason": reason,
                "message": {"role": "assistant", "content": text}}]})
        } else {
            json!({"text": text, "finish_reason": reason})
        }
    };
    let usage = |completion: u64| {
        let mut usage = json!({"input_tokens": answer.prompt, "output_tokens": completion,
            "total_tokens": answer.prompt + completion});
        if answer.reasoning > 0 && completion == answer.completion {
            usage["output_tokens_details"] = json!({"reasoning_tokens": answer.reasoning});
        }
        usage
    };
    if !streamed {
        if matches!(
            knobs.fault,
            Some(Fault::InbandError | Fault::InbandErrorFirst)
        ) {
            return axum::Json(inband).into_response(); // HTTP 200, and an error
        }
        let mut reply = json!({"output": output(answer.pieces.concat(), "stop"),
            "request_id": request_id});
        if knobs.usage != Some(false) {
            reply["usage"] = usage(answer.completion);
        }
        return axum::Json(reply).into_response();
    }
    let n = answer.pieces.len();
    let stop_at = match knobs.fault {
        Some(Fault::Cut | Fault::Truncate | Fault::Stall) => n / 2,
        Some(Fault::InbandError) => 2.min(n),
        Some(Fault::InbandErrorFirst) => 0,
        _ => n,
    };
    let mut frames = Vec::new();
    let mut so_far = String::new();
    for (i, piece) in answer.pieces.iter().take(stop_at).enumerate() {
        so_far.push_str(piece);
        let last = i + 1 == n;
        let text = if incremental {
            piece.clone()
        } else {
            so_far.clone()
        };
        let mut event = json!({"output": output(text, if last { "stop" } else { "null" }),
            "request_id": request_id});
        if knobs.usage != Some(false) {
            // Running totals: the completion so far, in proportion.
            event["usage"] = usage(answer.completion * (i as u64 + 1) / n as u64);
        }
        frames.push(result(i + 1, &event));
    }
    let ending = match knobs.fault {
        Some(Fault::InbandError | Fault::InbandErrorFirst) => {
            frames.push(Bytes::from(format!(
                "id:{}\nevent:error\n:HTTP_STATUS/400\ndata:{inband}\n\n",
                stop_at + 1
            )));
            None
        }
        Some(Fault::Cut) => Some(Ending::Break),
        Some(Fault::Stall) => Some(Ending::Hang),
        _ => None,
    };
    paced(frames, knobs.chunk_delay_ms, ending, "text/event-stream")
}

fn result(id: usize, event: &Value) -> Bytes {
    Bytes::from(format!(
        "id:{id}\nevent:result\n:HTTP_STATUS/200\ndata:{event}\n\n"
    ))
}

/// The answer, its prompt counted from `input.messages` or `input.prompt`.
fn dashscope_answer(body: &Value, knobs: &Knobs) -> Answer {
    let input = &body["input"];
    let as_chat = match input.get("prompt") {
        Some(prompt) => json!({"model": body["model"],
            "messages": [{"role": "user", "content": prompt}]}),
        None => json!({"model": body["model"], "messages": input["messages"]}),
    };
    Answer::new(&as_chat, knobs)
}
