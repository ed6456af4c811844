//! One request's trip through a backend, run so that a client who leaves cannot cancel
//! the metering (`detach`): connect (with fail-over), relay, record, respond.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use http_body_util::Full;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::client::{UpstreamResponse, next_chunk_within};
use super::detach::Detachable;
use super::observe::{self, Observed};
use super::request::ClientRequest;
use super::stream;
use super::upstreams::Upstream;
use crate::auth::Caller;
use crate::billing::{PriceVersion, TokenCounts, cost_of};
use crate::error::{ApiError, openai_error};
use crate::limits::Admission;
use crate::limits::spending::Hold;
use crate::metering::LedgerError;
use crate::metering::estimate;
use crate::metering::record::{Status, UsageRecord, UsageSource};
use crate::state::AppState;

const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Everything known about a request before it goes upstream.
pub struct Exchange {
    pub request_id: String,
    /// Which kind of client route it came by (a metric label).
    pub route: &'static str,
    pub caller: Caller,
    pub request: ClientRequest,
    /// Backends to try, in order; later ones only if earlier ones refuse the connection.
    pub candidates: Vec<Arc<Upstream>>,
    pub started: Instant,
    pub started_at: DateTime<Utc>,
    /// What the limits granted; settled against the real usage at the end.
    pub admission: Admission,
    /// What the account's spending limit holds for this request; released at the end.
    pub hold: Option<Hold>,
}

/// How a request ended, before it is priced.
pub struct Outcome {
    pub status: Status,
    pub http_status: u16,
    pub error: Option<String>,
    pub observed: Observed,
    pub ttft: Option<Duration>,
}

impl Outcome {
    /// Whether the request produced anything billable: it completed, or text reached the
    /// client.
    pub fn produced(&self) -> bool {
        self.status == Status::Ok || !self.observed.delivered_text.is_empty()
    }

    pub fn failed(status: Status, error: &ApiError) -> Outcome {
        Outcome {
            status,
            http_status: error.status().as_u16(),
            error: Some(error.to_string()),
            observed: Observed::default(),
            ttft: None,
        }
    }
}

/// The backend chosen for a request and the price it is billed at.
pub struct Served {
    pub upstream: Arc<Upstream>,
    pub price: Arc<PriceVersion>,
}

/// Runs `exchange` so that the client cannot cancel it (`Detachable`) and returns the
/// response head as soon as it is known; a stream's relay goes on in a task of its own.
pub async fn serve(state: AppState, exchange: Exchange) -> Response {
    let request_id = HeaderValue::from_str(&exchange.request_id).ok();
    let (respond, response) = oneshot::channel();
    let tasks = state.tasks().clone();
    let mut work = Detachable::new(run(state, exchange, respond), tasks);
    let response = work.until(response).await;
    drop(work); // a stream's relay, if any, continues in a task of its own
    let mut response = response.unwrap_or_else(|_| {
        ApiError::Internal(anyhow::anyhow!("the exchange ended without a response")).into_response()
    });
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

async fn run(state: AppState, ex: Exchange, respond: oneshot::Sender<Response>) {
    let (served, upstream_response) = match connect(&state, &ex).await {
        Ok(connected) => connected,
        Err((None, error)) => {
            // Nothing reached a backend, so there is no record: give back what admission took.
            ex.release(&state);
            let _ = respond.send(error.into_response());
            return;
        }
        Err((Some((served, status)), error)) => {
            let outcome = Outcome::failed(status, &error);
            let response = finish(&state, &ex, &served, outcome, error.into_response()).await;
            let _ = respond.send(response);
            return;
        }
    };
    if !upstream_response.status().is_success() {
        let error = upstream_error(&served.upstream, upstream_response).await;
        let outcome = Outcome::failed(Status::UpstreamError, &error);
        let response = finish(&state, &ex, &served, outcome, error.into_response()).await;
        let _ = respond.send(response);
        return;
    }
    if ex.request.stream {
        stream::relay(state, ex, served, upstream_response, respond).await;
    } else {
        let response = complete(&state, &ex, &served, upstream_response).await;
        let _ = respond.send(response);
    }
}

type ConnectError = (Option<(Served, Status)>, ApiError);

/// Sends the request to the first candidate that accepts a connection.
async fn connect(
    state: &AppState,
    ex: &Exchange,
) -> Result<(Served, UpstreamResponse), ConnectError> {
    let mut last = None;
    for upstream in &ex.candidates {
        let price = state
            .prices()
            .in_force(&upstream.model, &upstream.chip, ex.started_at)
            .ok_or_else(|| {
                let what = format!("{}/{}", upstream.model, upstream.chip);
                (
                    None,
                    ApiError::Unavailable(format!(
                        "{what} has no price in force; it cannot be billed, so it is not served"
                    )),
                )
            })?;
        let served = Served {
            upstream: upstream.clone(),
            price,
        };
        let mut request = axum::http::Request::post(upstream.url.clone())
            .header(header::HOST, upstream.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(REQUEST_ID, &ex.request_id);
        if let Some(authorization) = upstream.authorization() {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Full::new(
                ex.request.upstream_body(upstream, ex.completion_limit()),
            ))
            .map_err(|e| (None, ApiError::Internal(e.into())))?;
        // Only errors name the backend: no formatting on the way through.
        let what = || format!("{}/{}", upstream.model, upstream.chip);
        let sent = Instant::now();
        let sending = upstream.client.send(request);
        match tokio::time::timeout(upstream.first_byte_timeout, sending).await {
            Ok(Ok(response)) => {
                let pair = upstream.metrics(state.metrics());
                pair.upstream_latency.observe(sent.elapsed().as_secs_f64());
                return Ok((served, response));
            }
            Err(_) => {
                let error = ApiError::GatewayTimeout(format!(
                    "the backend for {} did not answer in time",
                    what()
                ));
                return Err((Some((served, Status::Timeout)), error));
            }
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(request_id = %ex.request_id, upstream = %what(), error = %e, "no connection to the backend; trying the next chip");
                last = Some(served);
            }
            Ok(Err(e)) => {
                let what = what();
                let error =
                    ApiError::BadGateway(format!("the backend for {what} failed before answering"));
                tracing::warn!(request_id = %ex.request_id, upstream = %what, error = %e, "backend request failed");
                return Err((Some((served, Status::UpstreamError)), error));
            }
        }
    }
    let model = ex
        .candidates
        .first()
        .map(|u| u.model.as_str())
        .unwrap_or("?");
    let error = ApiError::BadGateway(format!("no backend for '{model}' accepted the connection"));
    Err((last.map(|s| (s, Status::Unreachable)), error))
}

/// The non-streamed path: read the whole body, meter it, commit, then answer.
async fn complete(
    state: &AppState,
    ex: &Exchange,
    served: &Served,
    response: UpstreamResponse,
) -> Response {
    let limit = state.config().server.max_response_bytes;
    let body = match read_body(response, limit, served.upstream.idle_timeout).await {
        Ok(body) => body,
        Err((status, error)) => {
            let outcome = Outcome::failed(status, &error);
            return finish(state, ex, served, outcome, error.into_response()).await;
        }
    };
    let Some(parsed) = observe::answer_head(&body) else {
        let error =
            ApiError::BadGateway("the backend answered with a body that is not JSON".into());
        let outcome = Outcome::failed(Status::UpstreamError, &error);
        return finish(state, ex, served, outcome, error.into_response()).await;
    };
    if let Some(error) = observe::as_error(&parsed) {
        // An error sent with HTTP 200: the client gets it as an error, and pays nothing.
        let error = ApiError::Upstream {
            status: StatusCode::BAD_GATEWAY,
            body: error,
        };
        let outcome = Outcome::failed(Status::UpstreamError, &error);
        return finish(state, ex, served, outcome, error.into_response()).await;
    }
    let mut observed = Observed::default();
    observed.observe(&parsed);
    if observed.usage.is_none() {
        // Only an estimate needs the answer's text, so only then is all of it parsed.
        if let Ok(whole) = serde_json::from_slice::<Map<String, Value>>(&body) {
            observed.deliver(&whole);
        }
    }
    let outcome = Outcome {
        status: Status::Ok,
        http_status: 200,
        error: None,
        observed,
        ttft: None,
    };
    let response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    finish(state, ex, served, outcome, response).await
}

/// Prices the outcome, settles the key's token reservation, and commits the record.
pub(super) async fn commit(
    state: &AppState,
    ex: &Exchange,
    served: &Served,
    outcome: Outcome,
) -> Result<(), LedgerError> {
    let ttft = outcome.ttft;
    let max_reported = state.config().metering.max_reported_tokens;
    let estimate = ex.estimate_if_needed(&outcome, max_reported).await;
    let record = ex.record(served, outcome, estimate, max_reported);
    let duration = ex.started.elapsed();
    let pair = served.upstream.metrics(state.metrics());
    state
        .metrics()
        .observe(pair, ex.route, &record, duration, ttft);
    let used = record
        .tokens
        .prompt
        .saturating_add(record.tokens.completion);
    state.limits().settle(&ex.caller, &ex.admission, used);
    state
        .spending()
        .settle(ex.caller.account_id, ex.hold, record.cost);
    let committed = state.ledger().commit(record).await;
    if let Err(e) = &committed {
        tracing::error!(request_id = %ex.request_id, error = %e, "usage record not written");
    }
    committed
}

/// Commits the outcome's record, and only then lets `response` go. If the record cannot be
/// written the client gets a 503 instead: nothing is served unbilled.
pub(super) async fn finish(
    state: &AppState,
    ex: &Exchange,
    served: &Served,
    outcome: Outcome,
    response: Response,
) -> Response {
    match commit(state, ex, served, outcome).await {
        Ok(()) => response,
        Err(_) => ApiError::Unavailable(
            "the usage of this request could not be recorded; it was not billed".into(),
        )
        .into_response(),
    }
}

impl Exchange {
    /// Returns the key's token reservation and the account's spending hold unused, for a
    /// request that ends without a record.
    pub fn release(&self, state: &AppState) {
        state.limits().settle(&self.caller, &self.admission, 0);
        state
            .spending()
            .settle(self.caller.account_id, self.hold, Decimal::ZERO);
    }

    /// The `max_tokens` a backend is sent when the client set none: what the spending
    /// hold covers per answer. `None` without a hold (nothing to protect) or off chat.
    pub fn completion_limit(&self) -> Option<u64> {
        let hold = self.hold?;
        (self.request.endpoint == crate::config::Endpoint::Chat)
            .then(|| hold.tokens.completion / self.request.choices.max(1))
    }

    /// tollgate's own count of the request's tokens, when the record will need it (no usage
    /// reported, or usage beyond belief), counted on a blocking thread: tokenizing a long
    /// prompt takes far longer than an async worker may be held.
    pub async fn estimate_if_needed(
        &self,
        outcome: &Outcome,
        max_reported: u64,
    ) -> Option<TokenCounts> {
        let needed = match outcome.observed.usage {
            Some(usage) => is_suspect(usage, max_reported),
            None => outcome.produced(),
        };
        if !needed {
            return None;
        }
        let prompt = self.request.prompt();
        let delivered = outcome.observed.delivered_text.clone();
        let count = move || TokenCounts {
            prompt: prompt.estimate(),
            completion: estimate::count_text(&delivered),
            cached: 0,
        };
        match tokio::task::spawn_blocking(count).await {
            Ok(tokens) => Some(tokens),
            Err(e) => {
                tracing::error!(request_id = %self.request_id, error = %e, "token estimate failed");
                Some(TokenCounts {
                    prompt: self.request.prompt_bound(),
                    completion: outcome.observed.delivered_text.len() as u64,
                    cached: 0,
                })
            }
        }
    }

    /// Prices an outcome into the ledger record. `estimate` is `estimate_if_needed`'s.
    /// What is billed: the reported usage; the estimate when none was reported or the
    /// reported one is beyond `max_reported`; and never more than the spending hold covers.
    pub fn record(
        &self,
        served: &Served,
        outcome: Outcome,
        estimate: Option<TokenCounts>,
        max_reported: u64,
    ) -> UsageRecord {
        let produced = outcome.produced();
        let Outcome {
            status,
            http_status,
            mut error,
            observed,
            ttft,
        } = outcome;
        let estimate = estimate.unwrap_or_default();
        let (mut tokens, mut usage_source) = match observed.usage {
            Some(tokens) if is_suspect(tokens, max_reported) => {
                error.get_or_insert_with(|| {
                    usage_note(
                        "the backend reported",
                        tokens,
                        "more than one request can have",
                    )
                });
                (estimate, UsageSource::Suspect)
            }
            Some(tokens) => (tokens, UsageSource::Reported),
            None if produced => (estimate, UsageSource::Estimated),
            None => (TokenCounts::default(), UsageSource::None),
        };
        if let Some(hold) = self.hold {
            let capped = tokens.capped(hold.tokens);
            if capped != tokens {
                let who = match usage_source {
                    UsageSource::Reported => "the backend reported",
                    _ => "tollgate estimated",
                };
                error.get_or_insert_with(|| {
                    usage_note(who, tokens, "more than the spending hold covers")
                });
                if usage_source == UsageSource::Reported {
                    usage_source = UsageSource::Capped;
                }
                tokens = capped;
            }
        }
        let cost = cost_of(&served.price, tokens, status == Status::Ok).unwrap_or_else(|_| {
            // Only prices beyond the bounds checked at start-up get here.
            tracing::error!(request_id = %self.request_id, "cost out of range; billed nothing");
            Decimal::ZERO
        });
        let ended_at = Utc::now();
        let up = &served.upstream;
        UsageRecord {
            request_id: self.request_id.clone(),
            account_id: self.caller.account_id,
            key_id: self.caller.key_id,
            model: up.model.clone(),
            chip: up.chip.clone(),
            deployment: up.deployment.clone(),
            endpoint: self.request.endpoint,
            stream: self.request.stream,
            status,
            http_status,
            error,
            tokens,
            usage_source,
            price_version_id: served.price.id,
            cost,
            blocked: observed.blocked,
            moderation: observed.moderation,
            started_at: self.started_at,
            ended_at,
            latency_ms: self.started.elapsed().as_millis() as i64,
            ttft_ms: ttft.map(|t| t.as_millis() as i64),
        }
    }
}

/// Reported usage beyond what one request can have.
fn is_suspect(tokens: TokenCounts, max_reported: u64) -> bool {
    tokens.prompt > max_reported || tokens.completion > max_reported
}

/// The note a record keeps of counts it did not bill as they were.
fn usage_note(who: &str, tokens: TokenCounts, why: &str) -> String {
    format!(
        "{who} {} prompt ({} cached) and {} completion tokens, {why}",
        tokens.prompt, tokens.cached, tokens.completion
    )
}

/// Reads a whole body within `limit` bytes, each read within `idle`. A body that comes in
/// one piece (the usual small answer) is kept as it came, without a copy.
async fn read_body(
    mut response: UpstreamResponse,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, (Status, ApiError)> {
    let mut first: Option<Bytes> = None;
    let mut body = BytesMut::new();
    loop {
        match next_chunk_within(&mut response, idle).await {
            Err(_) => {
                return Err((
                    Status::Timeout,
                    ApiError::GatewayTimeout("the backend stopped sending its answer".into()),
                ));
            }
            Ok(Err(_)) => {
                return Err((
                    Status::UpstreamError,
                    ApiError::BadGateway("the backend's answer was cut off".into()),
                ));
            }
            Ok(Ok(None)) if body.is_empty() => return Ok(first.unwrap_or_default()),
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(chunk))) => {
                let had = first.as_ref().map_or(0, Bytes::len) + body.len();
                if had + chunk.len() > limit {
                    let error = ApiError::BadGateway(format!(
                        "the backend's answer is larger than {limit} bytes"
                    ));
                    return Err((Status::UpstreamError, error));
                }
                match first.take() {
                    None if body.is_empty() => first = Some(chunk),
                    earlier => {
                        body.extend_from_slice(&earlier.unwrap_or_default());
                        body.extend_from_slice(&chunk);
                    }
                }
            }
        }
    }
}

/// Maps a backend's HTTP error to what the client sees. Errors that are the client's own
/// (400, 413, 429) keep their status; a backend rejecting tollgate's credentials or failing
/// is the gateway's problem (502/504). The backend's message and code are kept.
pub async fn upstream_error(upstream: &Upstream, response: UpstreamResponse) -> ApiError {
    let backend_status = response.status();
    let body = read_body(response, 64 << 10, upstream.idle_timeout)
        .await
        .unwrap_or_default();
    let parsed = serde_json::from_slice::<Map<String, Value>>(&body).ok();
    let mapped = parsed.as_ref().and_then(observe::as_error);
    let status = match backend_status.as_u16() {
        400 | 422 => StatusCode::BAD_REQUEST,
        413 => StatusCode::PAYLOAD_TOO_LARGE,
        429 => StatusCode::TOO_MANY_REQUESTS,
        408 | 504 => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let body = mapped.unwrap_or_else(|| {
        let message = format!(
            "the backend for {}/{} answered HTTP {}",
            upstream.model,
            upstream.chip,
            backend_status.as_u16()
        );
        openai_error(
            &message,
            "upstream_error",
            Value::from(backend_status.as_u16()),
            None,
        )
    });
    ApiError::Upstream { status, body }
}

/// A response whose body the caller streams from `body`.
pub fn event_stream(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
