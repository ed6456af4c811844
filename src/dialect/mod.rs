//! Backend dialects: what differs between the wire formats tollgate meters. Each upstream
//! names its `dialect`; one file per dialect says what its backends expect and send (the
//! path of each endpoint, headers, stream framing, where usage, the answer's end and
//! errors are found) and how its streams reach the client. What most dialects share is
//! the OpenAI shape: `framing` cuts streams into events, `json` reads each event (or a
//! whole answer) into a tree that borrows its text, `observe` reads usage and errors in
//! every shape OpenAI-like backends use, and `openai` relays chunks as OpenAI's SDKs
//! expect. Adding a dialect is a file here, its line in `DIALECTS` and a simulator
//! profile.

pub mod framing;
pub mod json;
pub mod observe;
pub mod request;

mod anthropic;
pub mod comfyui;
pub mod dashscope;
mod openai;
pub mod sd;
mod zhipu;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::billing::Units;
use crate::config::{Endpoint, StreamFormat};
use crate::error::Error;
use framing::Event;
use json::Object;
use observe::Observed;
use request::{Members, ModelAt, PROMPT_MEMBERS};

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

    /// The client routes it serves (paths with `{name}` segments). Every dialect's routes are
    /// served by one router; a path belongs to one dialect.
    fn routes(&self) -> &'static [Route] {
        &[]
    }

    /// The shape of the request bodies its routes take: a request reaches only the
    /// upstreams whose dialect takes the same shape (OpenAI's, by default).
    fn takes(&self) -> &'static str {
        "openai"
    }

    /// Where a request body names the model.
    fn model_at(&self) -> ModelAt {
        ModelAt::member("model")
    }

    /// Whether bodies name the model as its backends know it (an upstream's
    /// `upstream_model`) rather than as tollgate does.
    fn names_backend_model(&self) -> bool {
        false
    }

    /// The member holding `max_tokens`, `max_completion_tokens` and `n`, when they are not
    /// at the top level (DashScope's `parameters`).
    fn limits_in(&self) -> Option<&'static str> {
        None
    }

    /// The results a request asks for (`n`), at least 1 when given.
    fn results(&self, body: &dyn Members) -> Result<Option<u64>, Error> {
        request::limit(body, self.limits_in(), "n")
    }

    /// The member an error about too many results names.
    fn results_member(&self) -> &'static str {
        "n"
    }

    /// The members that carry the prompt: what bounds a request's tokens before it is
    /// sent, and what estimates count.
    fn prompt_members(&self) -> &'static [&'static str] {
        PROMPT_MEMBERS
    }

    /// Estimated prompt tokens of a request's prompt members (`metering::estimate`).
    fn prompt_tokens(&self, endpoint: Endpoint, prompt: &Map<String, Value>) -> u64 {
        crate::metering::estimate::prompt_tokens(endpoint, prompt)
    }

    /// Whether the client asked for a stream in its headers rather than in the body
    /// (`None`: the headers do not say).
    fn stream_asked(&self, _headers: &http::HeaderMap) -> Option<bool> {
        None
    }

    /// How errors on its routes are shaped for its SDKs, from tollgate's OpenAI-shaped
    /// error and the request id; `None` keeps OpenAI's shape.
    fn client_error(&self) -> Option<fn(&Value, Option<&str>) -> Value> {
        None
    }

    /// The tasks a poll or a cancellation names in its body.
    fn task_ids(&self, _asked: &Map<String, Value>) -> Result<Vec<String>, Error> {
        Err(Error::invalid("this route names no tasks", "task_id"))
    }

    /// The answer to a poll of several tasks, from the backend's answer for each; `None`
    /// if polls are answered one by one, with the backend's answer as it came.
    fn merge_polls(&self, _answers: &[&Map<String, Value>]) -> Option<Value> {
        None
    }

    /// How a task is cancelled (its path under the upstream's `base_url`, a POST of
    /// `body`); `None` if it cannot be.
    fn task_cancel(&self, _task_id: &str) -> Option<TaskPoll> {
        None
    }

    /// Where files for its tasks' inputs are uploaded, under the upstream's `base_url`.
    fn upload_path(&self) -> Option<&'static str> {
        None
    }

    /// The path under an upstream's `base_url` for `endpoint`; `None` if the dialect has
    /// no such endpoint.
    fn path(&self, endpoint: Endpoint) -> Option<&'static str> {
        openai::path(endpoint)
    }

    /// Where a task of `endpoint` is submitted, under an upstream's `base_url`; `None` if
    /// the dialect runs no such tasks.
    fn task_path(&self, _endpoint: Endpoint) -> Option<&'static str> {
        None
    }

    /// The header the backend's credential goes in, and what precedes the credential
    /// there (`Authorization: Bearer ...` by default).
    fn credential(&self) -> (&'static str, &'static str) {
        ("authorization", "Bearer ")
    }

    /// Headers of the client's request passed on to the backend as they came (the
    /// features a client opts into); every other header of the client's stays here.
    fn passed_headers(&self) -> &'static [&'static str] {
        &[]
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
    fn error(&self, v: &Object) -> Option<Value> {
        observe::as_error(v)
    }

    /// Notes usage, the answer's end and moderation verdicts from an answer or event.
    fn observe(&self, seen: &mut Observed, v: &Object) {
        seen.observe(v);
    }

    /// Adds the text of an answer or event the client received (the basis of estimates).
    fn deliver(&self, seen: &mut Observed, v: &Object) {
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
    fn frame(&self, event: &Event, chunk: &Object, relay: &RelayFacts) -> Bytes {
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

/// A client route: its path and what it does.
pub struct Route {
    pub path: &'static str,
    pub does: Does,
}

/// What a request of a route is: its kind, whether it runs as a task, and the name its
/// records give the endpoint (the kind's, or the dialect's own name kept from before:
/// `generation`, `async_chat`, `workflow`, `image_task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub endpoint: Endpoint,
    /// Submitted as a task (`Wire::task_path`), then polled to its end and billed once.
    pub task: bool,
    pub records: &'static str,
}

impl Call {
    pub const fn of(endpoint: Endpoint) -> Call {
        Call {
            endpoint,
            task: false,
            records: endpoint.as_str(),
        }
    }

    /// Whether answers may be streamed: a task's never are.
    pub fn streams(self) -> bool {
        self.endpoint.streams() && !self.task
    }
}

impl From<Endpoint> for Call {
    fn from(endpoint: Endpoint) -> Call {
        Call::of(endpoint)
    }
}

/// What a client route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Does {
    /// Sends a request of `Call` to the backends `To` says.
    Send(Call, To),
    /// Polls the caller's tasks: the one the path's `{id}` names (a GET), or those the
    /// body names (a POST; `Wire::task_ids`).
    Poll,
    /// Cancels the caller's tasks the body names (`Wire::task_cancel`).
    Cancel,
    /// Passes a file on to the dialect's `upload_path`, billed per upload.
    Upload,
}

/// Which backends a request may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// The model the body names, on the chips its routing policy orders.
    Named,
    /// Exactly the model and chip the path names (`{model}`, `{chip}`).
    Pair,
    /// The dedicated deployment the path names (`{id}`).
    Deployment,
}

impl Route {
    pub const fn send(path: &'static str, endpoint: Endpoint, to: To) -> Route {
        Route {
            path,
            does: Does::Send(Call::of(endpoint), to),
        }
    }

    /// A route to the model the body names.
    pub const fn named(path: &'static str, endpoint: Endpoint) -> Route {
        Route::send(path, endpoint, To::Named)
    }

    /// A route to the model the body names whose records name the endpoint `records`.
    pub const fn recorded_as(
        path: &'static str,
        endpoint: Endpoint,
        records: &'static str,
    ) -> Route {
        Route {
            path,
            does: Does::Send(
                Call {
                    endpoint,
                    task: false,
                    records,
                },
                To::Named,
            ),
        }
    }

    /// A route submitting tasks of `endpoint` to the model the body names, recorded as
    /// `records`.
    pub const fn submit(path: &'static str, endpoint: Endpoint, records: &'static str) -> Route {
        Route {
            path,
            does: Does::Send(
                Call {
                    endpoint,
                    task: true,
                    records,
                },
                To::Named,
            ),
        }
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
    /// The completion tokens the spending hold covers, if there is one: what an answer
    /// stopped by its hold is billed.
    pub completion_cap: Option<u64>,
}

/// Every dialect tollgate speaks: the one list an upstream's `dialect` is looked up in.
static DIALECTS: [&dyn Wire; 6] = [
    &openai::OpenAi,
    &dashscope::DashScope,
    &zhipu::Zhipu,
    &comfyui::ComfyUi,
    &sd::Sd,
    &anthropic::Anthropic,
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

/// Every call a route of a dialect sends, with its dialect.
fn calls() -> impl Iterator<Item = (&'static dyn Wire, Call)> {
    DIALECTS.iter().flat_map(|&wire| {
        wire.routes()
            .iter()
            .filter_map(move |route| match route.does {
                Does::Send(call, _) => Some((wire, call)),
                _ => None,
            })
    })
}

/// The task call whose records name the endpoint `records` (what a task row keeps), and
/// the dialect that submits it.
pub fn task_call(records: &str) -> Option<(&'static dyn Wire, Call)> {
    calls().find(|(_, call)| call.task && call.records == records)
}

/// Every name records give endpoints: each kind's, then the routes' own.
pub fn recorded_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = Endpoint::ALL.iter().map(|e| e.as_str()).collect();
    for (_, call) in calls() {
        if !names.contains(&call.records) {
            names.push(call.records);
        }
    }
    names
}

/// The endpoint name of records that `name` is, if records give it (per imported line:
/// nothing allocated).
pub fn recorded_name(name: &str) -> Option<&'static str> {
    let kinds = Endpoint::ALL.iter().map(|e| e.as_str());
    kinds
        .chain(calls().map(|(_, call)| call.records))
        .find(|&known| known == name)
}

/// The names `named` knows, for an error that lists them.
pub fn names() -> String {
    let names: Vec<&str> = DIALECTS.iter().map(|w| w.name()).collect();
    names.join(", ")
}
