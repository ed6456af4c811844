//! Backend dialects: what differs between the wire formats tollgate meters. Each upstream
//! names its `dialect`; one file per dialect says what its backends expect and send (the
//! path of each endpoint, headers, stream framing, where usage, the answer's end and
//! errors are found) and how its streams reach the client. What most dialects share is
//! the OpenAI shape: `framing` cuts streams into events, `observe` reads usage and errors
//! in every shape OpenAI-like backends use, and `openai` relays chunks as OpenAI's SDKs
//! expect. Adding a dialect is a file here, its line in `DIALECTS` and a simulator
//! profile.

pub mod framing;
pub mod observe;

pub mod comfyui;
pub mod dashscope;
mod openai;
pub mod sd;
mod zhipu;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::billing::Units;
use crate::config::{Endpoint, StreamFormat};
use framing::Event;
use observe::Observed;

/// What one dialect says. Every method has the OpenAI shape as its default.
pub trait Wire: Sync {
    /// The name an upstream's `dialect` gives it.
    fn name(&self) -> &'static str;

    /// Other names accepted for it.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// What an upstream of this dialect serves when its configuration does not say.
    fn serves(&self) -> Endpoint {
        Endpoint::Chat
    }

    /// The path under an upstream's `base_url` for `endpoint`; `None` if the dialect has
    /// no such endpoint.
    fn path(&self, endpoint: Endpoint) -> Option<&'static str> {
        openai::path(endpoint)
    }

    /// Headers the backend needs besides the body's type and the credential.
    fn headers(&self, _streamed: bool) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// How its streams are framed when the upstream's `stream_format` is `auto`.
    fn stream_format(&self) -> StreamFormat {
        StreamFormat::Auto
    }

    /// If a JSON answer or stream event is an error, that error in OpenAI's shape.
    fn error(&self, v: &Map<String, Value>) -> Option<Value> {
        observe::as_error(v)
    }

    /// Notes usage, the answer's end and moderation verdicts from an answer or event.
    fn observe(&self, seen: &mut Observed, v: &Map<String, Value>) {
        seen.observe(v);
    }

    /// Adds the text of an answer or event the client received (the basis of estimates).
    fn deliver(&self, seen: &mut Observed, v: &Map<String, Value>) {
        seen.deliver(v);
    }

    /// Whether the event ends the stream (OpenAI's `[DONE]`).
    fn is_done(&self, event: &Event) -> bool {
        event.data.trim() == "[DONE]"
    }

    /// Whether a stream that closes cleanly has ended its answer even without a finish
    /// reason (dialects whose end of stream is the end of the answer).
    fn closing_ends_answer(&self) -> bool {
        false
    }

    /// The frame the client gets for an event the backend sent (`chunk` is its JSON).
    fn frame(&self, event: &Event, chunk: &mut Map<String, Value>, relay: &RelayFacts) -> Bytes {
        openai::frame(event, chunk, relay)
    }

    /// What follows the last event of an answer that ended well.
    fn done(&self) -> Option<Bytes> {
        Some(Bytes::from_static(b"data: [DONE]\n\n"))
    }

    /// An error that ends a stream, as its last frame.
    fn error_frame(&self, error: &Value) -> Bytes {
        openai::error_frame(error)
    }

    /// The end of an answer stopped because it passed what its spending hold covers, made
    /// from the event that passed it: what the SDKs show for `max_tokens`.
    fn length_end(&self, last: Map<String, Value>, relay: &RelayFacts) -> Bytes {
        openai::length_end(last, relay)
    }

    /// What a whole answer bills besides tokens: an image generation's `data` entries.
    fn units(&self, endpoint: Endpoint, answer: &Map<String, Value>) -> Units {
        let images = match endpoint {
            Endpoint::Images => answer
                .get("data")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            _ => 0,
        };
        Units {
            images: images as u64,
            ..Units::default()
        }
    }

    /// How a task submitted to this dialect is polled (its path under the upstream's
    /// `base_url`); `None` if it has no tasks. `asked` is what the client's poll asked
    /// besides the task (e.g. how long result URLs should last).
    fn task_poll(&self, _task_id: &str, _asked: &Map<String, Value>) -> Option<TaskPoll> {
        None
    }

    /// The task id a submission's answer gives.
    fn task_id(&self, _submitted: &Map<String, Value>) -> Option<String> {
        None
    }

    /// Where a task stands, from a poll's answer; `None` if the answer does not say.
    fn task_state(&self, _result: &Map<String, Value>) -> Option<TaskState> {
        None
    }
}

/// One poll of one task: a GET of `path`, or a POST of `body` to it.
pub struct TaskPoll {
    pub path: String,
    pub body: Option<Value>,
}

/// Where an asynchronous task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Succeeded,
    Failed,
}

/// What a relay knows that a frame may need.
pub struct RelayFacts {
    /// `created` for chunks that lack one.
    pub created: i64,
    /// The stream arrived as bare JSON: every chunk gets the same `created`.
    pub bare_json: bool,
    /// Events framed so far (an SSE `id`).
    pub sent: u64,
}

/// Every dialect tollgate speaks: the one list an upstream's `dialect` is looked up in.
static DIALECTS: [&dyn Wire; 5] = [
    &openai::OpenAi,
    &dashscope::DashScope,
    &zhipu::Zhipu,
    &comfyui::ComfyUi,
    &sd::Sd,
];

/// Every dialect, in `DIALECTS` order.
pub fn all() -> &'static [&'static dyn Wire] {
    &DIALECTS
}

/// The dialect called `name` (or one of its aliases).
pub fn named(name: &str) -> Option<&'static dyn Wire> {
    DIALECTS
        .iter()
        .copied()
        .find(|w| w.name() == name || w.aliases().contains(&name))
}

/// The names `named` knows, for an error that lists them.
pub fn names() -> String {
    let names: Vec<&str> = DIALECTS.iter().map(|w| w.name()).collect();
    names.join(", ")
}
