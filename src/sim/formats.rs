//! The wire formats the simulator speaks, modelled on `tests/fixtures/`.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Ending, Fault, Knobs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// OpenAI: SSE, usage only when `stream_options.include_usage` asks, in a last
    /// `choices: []` chunk, cached tokens in `prompt_tokens_details`.
    OpenAi,
    /// GenStudio: SSE, usage on the final content chunk, `blocked` on moderation.
    GenStudio,
    /// GenStudio chip3/4/5: bare JSON objects separated by blank lines, no `data:`, no
    /// `[DONE]`, `object`/`created` on the last chunk only, no trailing blank line.
    Bare,
    /// LMDeploy/InternLM: SSE with `moderation`, `finish_reason: ""` until the end, flat errors.
    InternLm,
    /// Zhipu GLM (`/api/paas/v4`): SSE, usage on the last chunk always, errors as
    /// `{"error":{"code":"1301","message":...}}` with a numeric code in a string.
    Zhipu,
}

impl Profile {
    pub fn parse(name: &str) -> Option<Profile> {
        match name {
            "openai" => Some(Profile::OpenAi),
            "genstudio" => Some(Profile::GenStudio),
            "bare" => Some(Profile::Bare),
            "internlm" => Some(Profile::InternLm),
            "zhipu" => Some(Profile::Zhipu),
            _ => None,
        }
    }
}

const WORDS: [&str; 5] = ["我是", "无问", "天权。", " Hello", " world"];

/// The answer to give: its pieces and the usage to report.
pub struct Answer {
    pub model: Value,
    pub pieces: Vec<String>,
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub reasoning: u64,
}

impl Answer {
    pub fn new(body: &Value, knobs: &Knobs) -> Answer {
        let chunks = knobs.chunks.unwrap_or(3);
        let pieces: Vec<String> = (0..chunks)
            .map(|i| WORDS[i % WORDS.len()].to_string())
            .collect();
        let prompt_chars: usize = body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["content"].as_str())
            .map(|c| c.chars().count())
            .sum();
        Answer {
            model: body["model"].clone(),
            prompt: knobs.prompt_tokens.unwrap_or(prompt_chars as u64),
            completion: knobs.completion_tokens.unwrap_or(chunks as u64),
            cached: knobs.cached_tokens.unwrap_or(0),
            reasoning: knobs.reasoning_tokens.unwrap_or(0),
            pieces,
        }
    }

    fn usage(&self, completion: u64) -> Value {
        let mut usage = json!({"prompt_tokens": self.prompt, "completion_tokens": completion,
            "total_tokens": self.prompt.saturating_add(completion)});
        if self.cached > 0 {
            usage["prompt_tokens_details"] = json!({"cached_tokens": self.cached});
        }
        if self.reasoning > 0 && completion == self.completion {
            usage["completion_tokens_details"] = json!({"reasoning_tokens": self.reasoning});
        }
        usage
    }
}

/// An HTTP-level fault, answered before any body.
pub fn http_fault(profile: Profile, fault: Option<Fault>) -> Option<Response> {
    let error = |message: &str, kind: &str| json!({"error": {"message": message, "type": kind, "code": null, "param": null}});
    let (status, body) = match fault? {
        Fault::Http500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error("simulated backend failure", "server_error"),
        ),
        Fault::Http400 => (
            StatusCode::BAD_REQUEST,
            error("temperature must be at most 2", "invalid_request_error"),
        ),
        Fault::Http429 => (
            StatusCode::TOO_MANY_REQUESTS,
            error("backend is busy", "rate_limit_error"),
        ),
        Fault::Genstudio401 => (
            StatusCode::UNAUTHORIZED,
            json!({"code": 60000, "msg": "Wrong Bearer Token or Token is nil"}),
        ),
        Fault::Garbage if profile != Profile::Bare => {
            return Some((StatusCode::OK, "<html>proxy error</html>").into_response());
        }
        _ => return None,
    };
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        // As busy backends do: when to come back.
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("7"),
        );
    }
    Some(response)
}

fn inband_error(profile: Profile) -> Value {
    match profile {
        Profile::GenStudio | Profile::Bare => {
            json!({"code": 60001, "msg": "model overloaded, please retry"})
        }
        Profile::InternLm => {
            json!({"object": "error", "message": "internal inference error", "code": 500})
        }
        Profile::OpenAi => {
            json!({"error": {"message": "the model crashed", "type": "server_error", "code": 500}})
        }
        Profile::Zhipu => {
            json!({"error": {"code": "1301", "message": "系统检测到输入或生成内容可能包含不安全或敏感内容"}})
        }
    }
}

/// A non-streamed chat completion.
pub fn completion(profile: Profile, answer: &Answer, knobs: &Knobs) -> Value {
    if matches!(
        knobs.fault,
        Some(Fault::InbandError | Fault::InbandErrorFirst)
    ) {
        return inband_error(profile);
    }
    let blocked = knobs.fault == Some(Fault::Blocked);
    let content = if blocked {
        String::new()
    } else {
        answer.pieces.concat()
    };
    let completion = if blocked { 0 } else { answer.completion };
    let mut reply = json!({"id": "chatcmpl-sim", "object": "chat.completion", "created": 1708497105,
        "model": answer.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]});
    if knobs.usage != Some(false) {
        reply["usage"] = answer.usage(completion);
    }
    if blocked {
        reply["blocked"] = json!(true);
    }
    if profile == Profile::InternLm {
        reply["moderation"] = json!({"sensitive": false, "category": ""});
    }
    reply
}

/// The frames of a streamed answer, and how the stream ends if not cleanly.
pub fn stream(
    profile: Profile,
    answer: &Answer,
    knobs: &Knobs,
    body: &Value,
) -> (Vec<Bytes>, Option<Ending>) {
    let usage_on = knobs.usage != Some(false);
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let last_pieces = answer.pieces.len();
    let stop_at = match knobs.fault {
        Some(Fault::Cut | Fault::Truncate | Fault::Stall) => last_pieces / 2,
        Some(Fault::InbandError) => last_pieces.min(2),
        _ => last_pieces,
    };
    let mut events: Vec<Value> = Vec::new();
    if knobs.fault == Some(Fault::InbandErrorFirst) {
        events.push(inband_error(profile));
    }
    let unfinished = if profile == Profile::InternLm {
        json!("")
    } else {
        Value::Null
    };
    for (i, piece) in answer.pieces[..stop_at].iter().enumerate() {
        let delta = if i == 0 {
            json!({"role": "assistant", "content": piece})
        } else {
            json!({"content": piece})
        };
        let mut chunk = json!({"id": "chatcmpl-sim", "model": answer.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": unfinished}]});
        if knobs.running_usage && usage_on {
            let so_far = answer.completion * (i as u64 + 1) / last_pieces.max(1) as u64;
            chunk["usage"] = answer.usage(so_far);
        }
        events.push(chunk);
    }
    let ending = match knobs.fault {
        Some(Fault::Cut) => Some(Ending::Break),
        Some(Fault::Stall) => Some(Ending::Hang),
        _ => None,
    };
    let cut_short = matches!(
        knobs.fault,
        Some(Fault::Cut | Fault::Truncate | Fault::Stall)
    );
    if knobs.fault == Some(Fault::InbandError) {
        events.push(inband_error(profile));
    } else if !cut_short {
        let blocked = knobs.fault == Some(Fault::Blocked);
        let mut last = json!({"id": "chatcmpl-sim", "model": answer.model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        if blocked {
            last["blocked"] = json!(true);
        }
        match profile {
            Profile::OpenAi => {
                events.push(last);
                if include_usage {
                    let mut usage_chunk =
                        json!({"id": "chatcmpl-sim", "model": answer.model, "choices": []});
                    usage_chunk["usage"] = if usage_on {
                        answer.usage(answer.completion)
                    } else {
                        Value::Null
                    };
                    events.push(usage_chunk);
                }
            }
            _ => {
                if usage_on {
                    last["usage"] = answer.usage(answer.completion);
                }
                events.push(last);
            }
        }
    }
    (
        render(
            profile,
            knobs,
            events,
            !cut_short && knobs.fault != Some(Fault::InbandError),
        ),
        ending,
    )
}

fn render(profile: Profile, knobs: &Knobs, mut events: Vec<Value>, done: bool) -> Vec<Bytes> {
    let created = 1708486029;
    let count = events.len();
    for (i, event) in events.iter_mut().enumerate() {
        let is_chunk = event.get("choices").is_some();
        // Bare-JSON chips put object/created on the last chunk only.
        if is_chunk && (profile != Profile::Bare || i + 1 == count) {
            event["object"] = json!("chat.completion.chunk");
            event["created"] = json!(created);
        }
        if profile == Profile::InternLm && is_chunk {
            event["moderation"] = json!({"sensitive": false, "category": ""});
        }
    }
    let mut frames: Vec<Bytes> = Vec::new();
    if knobs.fault == Some(Fault::Garbage) {
        frames.push(Bytes::from_static(b"\x00\x01garbage{{{\n\n"));
        return frames;
    }
    for (i, event) in events.iter().enumerate() {
        let frame = match profile {
            Profile::Bare if i + 1 == count => event.to_string(),
            Profile::Bare => format!("{event}\n\n"),
            _ => format!("data: {event}\n\n"),
        };
        frames.push(Bytes::from(frame));
    }
    if done && profile != Profile::Bare {
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    frames
}
