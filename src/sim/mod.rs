//! A simulated LLM backend on loopback, speaking each documented wire format, for the demo,
//! the tests and the benchmark. The profile is the first path segment
//! (`/{openai|genstudio|bare|internlm}/chat/completions`, `/embeddings`, `/rerank`;
//! `/dashscope/services/aigc/text-generation/generation`; Zhipu's
//! `/zhipu/async/chat/completions`, `/zhipu/async-result/{id}` and
//! `/zhipu/images/generations`; GenStudio's `/comfyui/{prompt,get_task_info,cancel,
//! upload/image}` and `/sd/{create,get_result}`; Anthropic's `/anthropic/v1/messages`); a
//! request can steer it with an `x_sim` object in its body (see [`Knobs`]).

mod anthropic;
mod comfyui;
mod dashscope;
mod formats;
mod sd;
mod zhipu;

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

pub use formats::Profile;

/// Per-request behaviour, read from the body's `x_sim` object. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Content chunks in the answer (default 3).
    pub chunks: Option<usize>,
    /// Delay before the response head.
    pub latency_ms: u64,
    /// Delay before each streamed event.
    pub chunk_delay_ms: u64,
    /// Report usage (default true).
    pub usage: Option<bool>,
    /// Put running usage totals on every chunk (as some backends do).
    pub running_usage: bool,
    /// Reported counts; by default prompt = characters of the messages, completion = chunks.
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    /// Prompt tokens written to the prompt cache (Anthropic's answers).
    pub cache_write_tokens: Option<u64>,
    /// Reasoning tokens among the completion tokens (a thinking model's), reported in
    /// `completion_tokens_details` (DashScope: `output_tokens_details`) of the final usage.
    pub reasoning_tokens: Option<u64>,
    pub fault: Option<Fault>,
    /// Send exactly these bytes as the body (a fixture), `split` bytes per network write.
    pub raw: Option<String>,
    pub split: Option<usize>,
    /// The HTTP status the `raw` body is sent with (default 200).
    pub raw_status: Option<u16>,
    /// Polls of an asynchronous task answered `PROCESSING` before it ends (default 1).
    pub polls: Option<u32>,
    /// Images an image generation makes (default: the request's `n`, or 1).
    pub images: Option<u64>,
    /// The id an SD task's creation answers (default: a new one): a backend that reuses
    /// ids, as a misbehaving one would.
    pub task_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// HTTP 500 with an OpenAI-shaped body.
    #[serde(rename = "http_500")]
    Http500,
    /// HTTP 400 with an OpenAI-shaped body.
    #[serde(rename = "http_400")]
    Http400,
    /// HTTP 429.
    #[serde(rename = "http_429")]
    Http429,
    /// HTTP 401 with GenStudio's `{"code":60000,"msg":...}`.
    #[serde(rename = "genstudio_401")]
    Genstudio401,
    /// HTTP 200, then an error: after two chunks in a stream, as the body otherwise.
    InbandError,
    /// HTTP 200 and an error as the very first event.
    InbandErrorFirst,
    /// The connection breaks after half the chunks.
    Cut,
    /// The stream ends cleanly after half the chunks, without finish or usage.
    Truncate,
    /// The stream stops sending after half the chunks and never ends.
    Stall,
    /// Bytes that are neither SSE nor JSON.
    Garbage,
    /// Moderation stops the answer (`"blocked": true`).
    Blocked,
    /// An asynchronous task ends `FAILED`.
    TaskFailed,
    /// The first poll of an asynchronous task answers HTTP 500; later ones as usual.
    PollError,
}

/// What the last request looked like, for tests to check what tollgate forwarded.
#[derive(Default)]
struct Seen {
    last: Mutex<Value>,
    /// Zhipu's asynchronous tasks.
    tasks: zhipu::Tasks,
    /// GenStudio's ComfyUI workflow runs.
    workflows: comfyui::Workflows,
    /// GenStudio's Stable Diffusion tasks.
    images: sd::Images,
}

pub fn router() -> Router {
    Router::new()
        .route("/{profile}/chat/completions", post(chat))
        .route("/{profile}/embeddings", post(embeddings))
        .route("/{profile}/rerank", post(rerank))
        .route(
            "/dashscope/services/aigc/text-generation/generation",
            post(dashscope_generation),
        )
        .route("/zhipu/async/chat/completions", post(zhipu_submit))
        .route("/zhipu/async-result/{id}", get(zhipu_poll))
        .route("/zhipu/images/generations", post(zhipu_images))
        .route("/comfyui/prompt", post(comfy_prompt))
        .route("/comfyui/get_task_info", post(comfy_task_info))
        .route("/comfyui/cancel", post(comfy_cancel))
        .route("/comfyui/upload/image", post(comfy_upload))
        .route("/sd/create", post(sd_create))
        .route("/sd/get_result", post(sd_result))
        .route("/anthropic/v1/messages", post(anthropic_messages))
        .route("/_sim/last", get(last))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20)) // long prompts, as real backends take
        .with_state(Arc::new(Seen::default()))
}

/// Serves the simulator on `addr` until the returned task is aborted.
pub async fn spawn(addr: SocketAddr) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::server::raise_open_file_limit(); // a connection per stream, thousands of them
    let listener = crate::server::listen(addr)?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(crate::server::nodelay(listener), router()).await {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok((local, task))
}

async fn last(State(seen): State<Arc<Seen>>) -> Json<Value> {
    Json(seen.last.lock().clone())
}

struct Call {
    /// `None` for DashScope, which answers its faults in its own shape.
    profile: Option<Profile>,
    body: Value,
    knobs: Knobs,
}

async fn accept(
    seen: &Seen,
    profile: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Call, Response> {
    let profile =
        match profile {
            "dashscope" | "comfyui" | "sd" | "anthropic" => None,
            name => Some(Profile::parse(name).ok_or_else(|| {
                (StatusCode::NOT_FOUND, "unknown simulator profile").into_response()
            })?),
        };
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad JSON: {e}")).into_response())?;
    // DashScope's SDK puts arguments it does not know in `parameters`.
    let knobs = body
        .get("x_sim")
        .or_else(|| body["parameters"].get("x_sim"));
    let knobs = match knobs {
        Some(k) => Knobs::deserialize(k)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad x_sim: {e}")).into_response())?,
        None => Knobs::default(),
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    *seen.last.lock() = json!({"authorization": authorization, "body": body,
        "x_dashscope_sse": header("x-dashscope-sse"), "x_api_key": header("x-api-key"),
        "anthropic_version": header("anthropic-version"),
        "anthropic_beta": header("anthropic-beta")});
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    if let Some(response) = profile.and_then(|p| formats::http_fault(p, knobs.fault)) {
        return Err(response);
    }
    Ok(Call {
        profile,
        body,
        knobs,
    })
}

async fn chat(
    State(seen): State<Arc<Seen>>,
    Path(profile): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match accept(&seen, &profile, &headers, body).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let Some(profile) = call.profile else {
        return (
            StatusCode::NOT_FOUND,
            "DashScope has no chat completions here",
        )
            .into_response();
    };
    let stream = call.body.get("stream").and_then(Value::as_bool) == Some(true);
    let answer = formats::Answer::new(&call.body, &call.knobs);
    if let Some(replayed) = replay(&call.knobs, stream) {
        return replayed;
    }
    if !stream {
        return Json(formats::completion(profile, &answer, &call.knobs)).into_response();
    }
    let (frames, ending) = formats::stream(profile, &answer, &call.knobs, &call.body);
    paced(
        frames,
        call.knobs.chunk_delay_ms,
        ending,
        "text/event-stream",
    )
}

async fn dashscope_generation(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match accept(&seen, "dashscope", &headers, body).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    dashscope::generation(&headers, &call.body, &call.knobs)
}

async fn anthropic_messages(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match accept(&seen, "anthropic", &headers, body).await {
        Ok(call) => anthropic::messages(&call.body, &call.knobs),
        Err(response) => response,
    }
}

async fn zhipu_submit(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    match accept(&seen, "zhipu", &headers, body).await {
        Ok(call) => seen.tasks.submit(&call.body, call.knobs),
        Err(response) => response,
    }
}

async fn zhipu_poll(State(seen): State<Arc<Seen>>, Path(id): Path<String>) -> Response {
    seen.tasks.poll(&id)
}

async fn zhipu_images(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    match accept(&seen, "zhipu", &headers, body).await {
        Ok(call) => {
            replay(&call.knobs, false).unwrap_or_else(|| zhipu::images(&call.body, &call.knobs))
        }
        Err(response) => response,
    }
}

async fn comfy_prompt(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    match accept(&seen, "comfyui", &headers, body).await {
        Ok(call) => seen.workflows.prompt(&call.body, call.knobs),
        Err(response) => response,
    }
}

async fn sd_create(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    match accept(&seen, "sd", &headers, body).await {
        Ok(call) => seen.images.create(&call.body, call.knobs),
        Err(response) => response,
    }
}

async fn sd_result(State(seen): State<Arc<Seen>>, body: Json<Value>) -> Response {
    seen.images.result(&body)
}

async fn comfy_task_info(State(seen): State<Arc<Seen>>, body: Json<Value>) -> Response {
    seen.workflows.task_info(&body)
}

async fn comfy_cancel(State(seen): State<Arc<Seen>>, body: Json<Value>) -> Response {
    seen.workflows.cancel(&body)
}

async fn comfy_upload(headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    comfyui::upload(content_type, &body)
}

async fn embeddings(
    State(seen): State<Arc<Seen>>,
    Path(profile): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match accept(&seen, &profile, &headers, body).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    if let Some(replayed) = replay(&call.knobs, false) {
        return replayed;
    }
    let tokens = call.knobs.prompt_tokens.unwrap_or(9);
    let mut reply = json!({"object": "list", "model": call.body["model"],
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0123, -0.0456, 0.0789]}]});
    if call.knobs.usage != Some(false) {
        reply["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    }
    Json(reply).into_response()
}

async fn rerank(
    State(seen): State<Arc<Seen>>,
    Path(profile): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match accept(&seen, &profile, &headers, body).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    if let Some(replayed) = replay(&call.knobs, false) {
        return replayed;
    }
    let tokens = call.knobs.prompt_tokens.unwrap_or(57);
    let mut reply = json!({"id": "rerank-sim", "model": call.body["model"],
        "results": [{"index": 1, "relevance_score": 0.93}, {"index": 0, "relevance_score": 0.12}]});
    if call.knobs.usage != Some(false) {
        reply["usage"] = json!({"total_tokens": tokens});
    }
    Json(reply).into_response()
}

/// The `raw` body the knobs ask for (a fixture), `split` bytes per write, if they do.
fn replay(knobs: &Knobs, stream: bool) -> Option<Response> {
    let raw = knobs.raw.as_ref()?;
    let frames = split(raw.as_bytes(), knobs.split.unwrap_or(usize::MAX));
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut response = paced(frames, knobs.chunk_delay_ms, None, content_type);
    if let Some(status) = knobs.raw_status.and_then(|s| StatusCode::from_u16(s).ok()) {
        *response.status_mut() = status;
    }
    Some(response)
}

fn split(bytes: &[u8], size: usize) -> Vec<Bytes> {
    bytes
        .chunks(size.max(1))
        .map(Bytes::copy_from_slice)
        .collect()
}

/// How a simulated stream ends after its frames.
pub enum Ending {
    /// The connection breaks.
    Break,
    /// Nothing more is sent, and the stream never ends.
    Hang,
}

fn paced(
    frames: Vec<Bytes>,
    delay_ms: u64,
    ending: Option<Ending>,
    content_type: &'static str,
) -> Response {
    let delay = Duration::from_millis(delay_ms);
    let frames = futures_util::stream::iter(frames).then(move |frame| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(frame)
    });
    let tail = futures_util::stream::once(async move {
        match ending {
            Some(Ending::Break) => {
                // Let what was sent reach the wire first, as on a real broken connection.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(std::io::Error::other("simulated cut"))
            }
            Some(Ending::Hang) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Bytes::new())
            }
            None => Ok(Bytes::new()),
        }
    });
    let body = Body::from_stream(frames.chain(tail));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
