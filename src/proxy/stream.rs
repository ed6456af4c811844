//! The streamed path. Events go to the client as they arrive, normalised to standard SSE
//! (complete chunks, `data: [DONE]` at the end) while usage is collected on the side. The
//! backend's `[DONE]` is held back until the usage record is committed, and if the client
//! leaves, the backend is drained (bounded) so that its reported usage can still be billed.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::settle::{Exchange, Outcome, Served, commit, fail};
use crate::billing::record::Status;
use crate::config::{DisconnectPolicy, MeteringConfig};
use crate::dialect::framing::{Event, Framer};
use crate::dialect::json::{Json, Object};
use crate::dialect::observe::Observed;
use crate::dialect::{RelayFacts, Wire};
use crate::error::openai_error;
use crate::server::ApiError;
use crate::state::AppState;
use crate::upstream::client::{UpstreamResponse, next_chunk, next_chunk_within};

/// Counts a stream in `tollgate_active_streams` for as long as it lives.
struct ActiveStream(AppState);

impl ActiveStream {
    fn start(state: &AppState) -> ActiveStream {
        state.metrics().active_streams.inc();
        ActiveStream(state.clone())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.metrics().active_streams.dec();
    }
}

/// Frames buffered between the relay and a slow client.
const CLIENT_BUFFER: usize = 64;

/// After the backend's `[DONE]`, how long the rest of its body (the end of its chunks,
/// usually sent with it) is waited for, so that its connection goes back to the pool
/// instead of being closed. The client has its whole answer by then.
const AFTER_DONE: Duration = Duration::from_secs(1);

/// Why the relay stopped reading the backend.
enum End {
    /// `data: [DONE]`.
    Done,
    /// The backend closed the stream.
    Eof,
    /// The backend sent an error inside the stream.
    InBand(Value),
    /// A stall, a read error or bytes that do not parse.
    Broken(Status, String),
    /// The client left and draining ended (limit reached or policy `abort`).
    StoppedDraining,
    /// The backend's running usage passed what the spending hold covers: the client gets
    /// the answer so far, ended as if by `max_tokens` (`finish_reason: "length"`). Carries
    /// the chunk that passed it, as a template for the closing one.
    OverHold(Map<String, Value>),
}

struct Relay {
    /// The backend's dialect: what its events mean and how the client gets them.
    wire: &'static dyn Wire,
    framer: Framer,
    events: Vec<Event>,
    observed: Observed,
    /// Hide the usage-only chunk: tollgate asked for it, the client did not.
    strip_usage_chunk: bool,
    /// What frames need: `created` for chunks that lack one (bare-JSON chips put it on
    /// the last chunk only), events sent so far, the completion tokens the spending hold
    /// covers (if the account has a limit).
    facts: RelayFacts,
    started: Instant,
    ttft: Option<Duration>,
    /// Where the client's frames go; `None` once the client has gone.
    client: Option<mpsc::Sender<Result<Bytes, Infallible>>>,
    /// What to do when the client leaves, and how far to drain.
    metering: MeteringConfig,
    drain_until: Option<Instant>,
    drained_events: usize,
}

pub async fn relay(
    state: AppState,
    ex: Exchange,
    served: Served,
    mut response: UpstreamResponse,
    respond: oneshot::Sender<Response>,
) {
    let upstream = served.upstream.clone();
    let _active = ActiveStream::start(&state);
    let mut relay = Relay {
        wire: upstream.wire(),
        framer: Framer::new(upstream.stream_format),
        events: Vec::new(),
        observed: Observed::default(),
        strip_usage_chunk: ex.request.injects_usage(&upstream),
        facts: RelayFacts {
            created: chrono::Utc::now().timestamp(),
            bare_json: false,
            sent: 0,
            completion_cap: ex.hold.map(|h| h.tokens.completion),
        },
        started: ex.started,
        ttft: None,
        client: None,
        metering: state.config().metering.clone(),
        drain_until: None,
        drained_events: 0,
    };

    // Wait for the first event before choosing the status code: an error that arrives
    // first becomes a proper HTTP error the SDK can raise.
    let first = relay
        .read_more(&mut response, upstream.first_byte_timeout, true)
        .await;
    if let Some(end) = first.or_else(|| relay.leading_error()) {
        let (status, error) = match end {
            End::InBand(body) => (
                Status::UpstreamError,
                ApiError::Upstream {
                    status: axum::http::StatusCode::BAD_GATEWAY,
                    body,
                    retry_after: None,
                },
            ),
            End::Broken(status, message) if status == Status::Timeout => {
                (status, ApiError::GatewayTimeout(message))
            }
            End::Broken(status, message) => (status, ApiError::BadGateway(message)),
            _ => (
                Status::UpstreamError,
                ApiError::BadGateway(
                    "the backend closed the stream without sending anything".into(),
                ),
            ),
        };
        let response = fail(&state, &ex, &served, status, error).await;
        let _ = respond.send(response);
        return;
    }

    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    if respond
        .send(event_stream(Body::from_stream(ReceiverStream::new(rx))))
        .is_ok()
    {
        relay.client = Some(tx);
    } else {
        relay.client_gone();
    }

    let end = loop {
        if relay.client.is_none() && relay.drain_until.is_none() {
            break End::StoppedDraining; // policy `abort`
        }
        if let Some(end) = relay.forward_events().await {
            break end;
        }
        if let Some(end) = relay
            .read_more(&mut response, upstream.idle_timeout, false)
            .await
        {
            // Whatever the framer still held is part of the answer.
            if let Some(end) = relay.forward_events().await {
                break end;
            }
            break end;
        }
    };
    // A backend that said it was done is read to its end afterwards; any other's answer is
    // given up here (its connection is closed).
    let mut rest = matches!(end, End::Done).then_some(response);

    let client_left = relay.client.is_none();
    let wire = relay.wire;
    let (status, error, tail) = match end {
        End::Done => (Status::Ok, None, wire.done()),
        End::Eof if relay.observed.finished || wire.closing_ends_answer() => {
            (Status::Ok, None, wire.done())
        }
        End::Eof => {
            let message = "the backend's stream ended before the answer was complete";
            (
                Status::Partial,
                Some(message.to_string()),
                Some(error_event(wire, message, "upstream_error")),
            )
        }
        // The error event itself has already been forwarded in order.
        End::InBand(body) => (Status::UpstreamError, Some(error_text(&body)), None),
        End::Broken(status, message) => {
            let event = error_event(wire, &message, "upstream_error");
            (status, Some(message), Some(event))
        }
        End::StoppedDraining => (Status::ClientDisconnected, None, None),
        End::OverHold(last) => {
            let message =
                "stopped: the answer passed the completion tokens the spending hold covers";
            (
                Status::Ok,
                Some(message.to_string()),
                Some(wire.length_end(last, &relay.facts)),
            )
        }
    };
    let status = if client_left {
        Status::ClientDisconnected
    } else {
        status
    };
    let outcome = Outcome {
        status,
        http_status: 200,
        error,
        observed: std::mem::take(&mut relay.observed),
        ttft: relay.ttft,
    };
    let committed = commit(&state, &ex, &served, outcome).await;
    if committed.is_err() {
        // Not recorded, not charged: the hold goes back.
        (state.spending()).release(&ex.request_id, ex.caller.account_id, ex.hold);
    }
    if let Some(client) = relay.client.take() {
        let tail = match committed {
            Ok(()) => tail,
            Err(_) => Some(error_event(
                wire,
                "the usage of this request could not be recorded",
                "server_error",
            )),
        };
        if let Some(tail) = tail {
            let _ = client.send(Ok(tail)).await;
        }
        // The body's end usually came with `[DONE]`: taken before the client's answer
        // ends, the connection is back in the pool for the client's next request.
        if let Some(response) = &mut rest
            && read_rest(response, Duration::ZERO).await
        {
            rest = None;
        }
    }
    drop(_active);
    if let Some(mut response) = rest {
        read_rest(&mut response, AFTER_DONE).await;
    }
}

/// Reads what is left of a body after its `[DONE]`, so that its connection can carry
/// another request: what has come already if `wait` is zero, else what comes within it
/// (a few pieces at most). True once there is nothing more to do.
async fn read_rest(response: &mut UpstreamResponse, wait: Duration) -> bool {
    let rest = async {
        for _ in 0..8 {
            if !matches!(next_chunk(response).await, Ok(Some(_))) {
                break;
            }
        }
    };
    match wait.is_zero() {
        true => rest.now_or_never().is_some(),
        false => tokio::time::timeout(wait, rest).await.is_ok(),
    }
}

impl Relay {
    /// Reads until at least one event is framed. `Some` when the stream ended instead.
    async fn read_more(
        &mut self,
        response: &mut UpstreamResponse,
        wait: Duration,
        first: bool,
    ) -> Option<End> {
        while self.events.is_empty() {
            let wait = match self.drain_until {
                Some(until) => until.saturating_duration_since(Instant::now()).min(wait),
                None => wait,
            };
            let closed = async {
                match &self.client {
                    Some(client) => client.closed().await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                read = next_chunk_within(response, wait) => read,
                () = closed => {
                    if !self.client_gone() {
                        return Some(End::StoppedDraining);
                    }
                    continue;
                }
            };
            match read {
                Err(_) if self.drain_until.is_some() => return Some(End::StoppedDraining),
                Err(_) => {
                    let what = if first {
                        "did not start its answer in time"
                    } else {
                        "stalled in the middle of its answer"
                    };
                    return Some(End::Broken(Status::Timeout, format!("the backend {what}")));
                }
                Ok(Err(_)) => {
                    return Some(End::Broken(
                        Status::Partial,
                        "the backend's stream was cut off".into(),
                    ));
                }
                Ok(Ok(None)) => {
                    return match self.framer.finish(&mut self.events) {
                        Ok(()) => Some(End::Eof),
                        Err(e) => Some(End::Broken(Status::Partial, e.to_string())),
                    };
                }
                Ok(Ok(Some(chunk))) => {
                    if let Err(e) = self.framer.push(&chunk, &mut self.events) {
                        return Some(End::Broken(Status::Partial, e.to_string()));
                    }
                }
            }
        }
        None
    }

    /// The first event, if it is an error: answered as an HTTP error instead of a stream.
    fn leading_error(&mut self) -> Option<End> {
        let first = self.events.first()?;
        let parsed = Object::parse(&first.data)?;
        let error = self.wire.error(&parsed)?;
        self.events.clear();
        Some(End::InBand(error))
    }

    /// Sends the framed events on, in order. `Some` when the stream is over.
    async fn forward_events(&mut self) -> Option<End> {
        let events = std::mem::take(&mut self.events);
        for event in events {
            if self.wire.is_done(&event) {
                return Some(End::Done);
            }
            let Some(chunk) = Object::parse(&event.data) else {
                let message = "the backend sent an event that is not JSON".to_string();
                return Some(End::Broken(Status::Partial, message));
            };
            if let Some(error) = self.wire.error(&chunk) {
                self.send(self.wire.error_frame(&error), None).await;
                return Some(End::InBand(error));
            }
            self.wire.observe(&mut self.observed, &chunk);
            if let (Some(cap), Some(usage)) = (self.facts.completion_cap, self.observed.usage)
                && usage.completion > cap
            {
                return Some(End::OverHold(chunk.to_map()));
            }
            if self.client.is_none() {
                self.drained_events += 1;
                if self.drained_events > self.metering.drain_max_events {
                    return Some(End::StoppedDraining);
                }
                continue;
            }
            if self.strip_usage_chunk && is_usage_only(&chunk) {
                continue;
            }
            // Re-framed bare JSON gets one `created` for every chunk (the backend puts its
            // own on the last chunk only), as an OpenAI stream has.
            self.facts.bare_json = self.framer.is_bare_json();
            let frame = self.wire.frame(&event, &chunk, &self.facts);
            self.facts.sent += 1;
            if self.send(frame, Some(&chunk)).await {
                self.ttft.get_or_insert_with(|| self.started.elapsed());
            } else if !self.client_gone() {
                return Some(End::StoppedDraining);
            }
        }
        None
    }

    /// True if the client took the frame; then its text counts as delivered.
    async fn send(&mut self, frame: Bytes, chunk: Option<&Object<'_>>) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        if client.send(Ok(frame)).await.is_err() {
            return false;
        }
        if let Some(chunk) = chunk {
            self.wire.deliver(&mut self.observed, chunk);
        }
        true
    }

    /// The client has left: returns whether to keep reading the backend for its usage.
    fn client_gone(&mut self) -> bool {
        self.client = None;
        match self.metering.on_client_disconnect {
            DisconnectPolicy::Abort => false,
            DisconnectPolicy::Drain => {
                let limit = self.metering.drain_max();
                self.drain_until
                    .get_or_insert_with(|| Instant::now() + limit);
                true
            }
        }
    }
}

/// The chunk that carries only usage (`choices: []`), sent because tollgate asked for it.
fn is_usage_only(chunk: &Object) -> bool {
    chunk
        .get("choices")
        .and_then(Json::as_array)
        .is_some_and(<[Json]>::is_empty)
        && chunk.get("usage").is_some_and(|u| !u.is_null())
}

fn error_event(wire: &dyn Wire, message: &str, kind: &str) -> Bytes {
    wire.error_frame(&openai_error(message, kind, Value::Null, None))
}

fn error_text(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or("backend error")
        .to_string()
}

/// A response whose body the caller streams from `body`.
fn event_stream(body: Body) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
