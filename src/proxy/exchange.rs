//! One request's trip through a backend, run so that a client who leaves cannot cancel
//! the metering (`detach`): connect (with fail-over), relay, record, respond.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::answer::{read_body, upstream_error};
use super::detach::Detachable;
use super::request::ClientRequest;
use super::settle::{Exchange, Outcome, Served, fail, finish};
use super::stream;
use crate::billing::record::{Attempt, AttemptOutcome, Status};
use crate::config::Endpoint;
use crate::dialect::json::Object;
use crate::dialect::observe::Observed;
use crate::server::ApiError;
use crate::state::AppState;
use crate::upstream::Upstream;
use crate::upstream::client::UpstreamResponse;

const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Runs `exchange` so that the client cannot cancel it (`Detachable`) and returns the
/// response head as soon as it is known; a stream's relay goes on in a task of its own.
pub async fn serve(state: AppState, exchange: Exchange) -> Response {
    let request_id = HeaderValue::from_str(&exchange.request_id).ok();
    let (respond, mut response) = oneshot::channel();
    let mut work = detached(state, exchange, respond);
    let response = work.until(&mut response).await;
    drop(work); // a stream's relay, if any, continues in a task of its own
    let mut response = response.unwrap_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("the exchange ended without a response")).into_response()
    });
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

/// The exchange's work, on the heap. Made in a plain function: built in `serve`, its
/// future would be kept in `serve`'s own (which the handler's embeds) after it is moved.
fn detached(state: AppState, exchange: Exchange, respond: oneshot::Sender<Response>) -> Detachable {
    let tasks = state.tasks().clone();
    Detachable::new(run(state, exchange, respond), tasks)
}

/// Its future is moved onto the heap whole (`Detachable`), and a stream keeps it for its
/// whole length: the rarer branches (failures, tasks, the stream's relay) are boxed where
/// they start, so that it has room for the common path's state only (3.8 KB in a release
/// build, where it took 14.5 KB with every branch inline).
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
            let response = Box::pin(fail(&state, &ex, &served, status, error));
            let _ = respond.send(response.await);
            return;
        }
    };
    if upstream_response.status().is_success() && ex.request.call.task {
        let response = Box::pin(super::tasks::submitted(
            &state,
            &ex,
            &served,
            upstream_response,
        ));
        let _ = respond.send(response.await);
        return;
    }
    if !upstream_response.status().is_success() {
        let error = Box::pin(upstream_error(&served.upstream, upstream_response)).await;
        let response = Box::pin(fail(&state, &ex, &served, Status::UpstreamError, error));
        let _ = respond.send(response.await);
        return;
    }
    if ex.request.stream {
        Box::pin(stream::relay(state, ex, served, upstream_response, respond)).await;
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
    let mut last: Option<Served> = None;
    // The soonest one of the backends over their own limit takes another request.
    let mut soonest: Option<Duration> = None;
    // The backends passed over so far, kept on the record of the one that serves.
    let mut passed_over = Vec::new();
    for upstream in &ex.candidates {
        if let Err(wait) = admit_outbound(state, upstream).await {
            soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            passed_over.push(Attempt {
                chip: upstream.chip.clone(),
                outcome: AttemptOutcome::AtItsLimit,
            });
            continue; // the next chip, if the model has one
        }
        let buyer = upstream.buyer(&ex.caller.key.account);
        let price = state
            .prices()
            .for_buyer(&upstream.model, &upstream.chip, buyer, ex.started_at)
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
            passed_over: passed_over.clone(),
        };
        let url = upstream.url_for(ex.request.call).map_err(|e| (None, e))?;
        let body = ex.request.upstream_body(upstream, ex.completion_limit());
        let request = upstream_request(url, body, upstream, &ex.request_id, &ex.request)
            .map_err(|e| (None, ApiError::Internal(e)))?;
        // Only errors name the backend: no formatting on the way through.
        let what = || format!("{}/{}", upstream.model, upstream.chip);
        let sent = Instant::now();
        let sending = upstream.client.send(request, upstream.first_byte_timeout);
        match sending.await {
            Ok(response) => {
                let pair = upstream.metrics(state.metrics());
                pair.upstream_latency.observe(sent.elapsed().as_secs_f64());
                return Ok((served, response));
            }
            Err(e) if e.is_timeout() => {
                let error = ApiError::GatewayTimeout(format!(
                    "the backend for {} did not answer in time",
                    what()
                ));
                return Err((Some((served, Status::Timeout)), error));
            }
            Err(e) if e.is_connect() => {
                tracing::warn!(request_id = %ex.request_id, upstream = %what(), error = %e, "no connection to the backend; trying the next chip");
                passed_over.push(Attempt {
                    chip: upstream.chip.clone(),
                    outcome: AttemptOutcome::Refused,
                });
                last = Some(served);
            }
            Err(e) => {
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
    if let (None, Some(wait)) = (&last, soonest) {
        return Err((None, over_backend_limit(model, wait)));
    }
    let error = ApiError::BadGateway(format!("no backend for '{model}' accepted the connection"));
    Err((last.map(|s| (s, Status::Unreachable)), error))
}

/// The request to `upstream`: its headers set on the request made, not through
/// `http`'s builder (which moves the whole head at every header).
fn upstream_request(
    url: axum::http::Uri,
    body: Bytes,
    upstream: &Upstream,
    request_id: &str,
    request: &ClientRequest,
) -> anyhow::Result<axum::http::Request<Bytes>> {
    let mut sent = axum::http::Request::post(url).body(body)?;
    let headers = sent.headers_mut();
    headers.insert(header::HOST, upstream.host.clone());
    let json = HeaderValue::from_static("application/json");
    headers.insert(header::CONTENT_TYPE, json);
    headers.insert(REQUEST_ID, HeaderValue::try_from(request_id)?);
    if let Some((name, value)) = upstream.credential() {
        headers.append(name.clone(), value.clone());
    }
    for &(name, value) in upstream.wire().headers(request.stream) {
        headers.append(HeaderName::try_from(name)?, HeaderValue::try_from(value)?);
    }
    for (name, value) in &request.passed_headers {
        headers.append(name.clone(), value.clone());
    }
    Ok(sent)
}

/// Counts a request to `upstream` against its own limit (`upstreams[].rpm`): in Redis
/// for every replica when the limits are shared there, else in this process.
async fn admit_outbound(state: &AppState, upstream: &Upstream) -> Result<(), Duration> {
    let Some((name, rpm)) = upstream.own_limit() else {
        return Ok(());
    };
    // Boxed: only backends with a limit of their own take this path.
    match Box::pin(state.limits().admit_backend(&name, rpm)).await {
        Some(verdict) => verdict,
        None => upstream.admit_outbound(),
    }
}

/// The non-streamed path: read the whole body, meter it, commit, then answer.
async fn complete(
    state: &AppState,
    ex: &Exchange,
    served: &Served,
    response: UpstreamResponse,
) -> Response {
    let (outcome, response) = match answered(state, ex, served, response).await {
        Ok((body, outcome)) => {
            let response = ([(header::CONTENT_TYPE, "application/json")], body);
            (outcome, response.into_response())
        }
        Err((status, error)) => (Outcome::failed(status, &error), error.into_response()),
    };
    // One commit for every way it ends: its future is the largest part of this one.
    finish(state, ex, served, outcome, response).await
}

/// The whole answer read and metered: its body and what was seen of it, or why it fails.
async fn answered(
    state: &AppState,
    ex: &Exchange,
    served: &Served,
    response: UpstreamResponse,
) -> Result<(Bytes, Outcome), (Status, ApiError)> {
    let limit = state.config().server.max_response_bytes;
    let body = read_body(response, limit, served.upstream.idle_timeout).await?;
    let Some(parsed) = Object::head(&body) else {
        let error =
            ApiError::BadGateway("the backend answered with a body that is not JSON".into());
        return Err((Status::UpstreamError, error));
    };
    let wire = served.upstream.wire();
    if let Some(error) = wire.error(&parsed) {
        // An error sent with HTTP 200: the client gets it as an error, and pays nothing.
        let error = ApiError::Upstream {
            status: StatusCode::BAD_GATEWAY,
            body: error,
            retry_after: None,
        };
        return Err((Status::UpstreamError, error));
    }
    let mut observed = Observed::default();
    wire.observe(&mut observed, &parsed);
    let endpoint = ex.request.call.endpoint;
    // Only an estimate, or units counted in the answer's long part (an image generation's
    // `data`), need all of it: only then is all of it parsed.
    if (observed.usage.is_none() || endpoint == Endpoint::Images)
        && let Ok(whole) = serde_json::from_slice::<Map<String, Value>>(&body)
    {
        if observed.usage.is_none() {
            wire.deliver(&mut observed, &Object::of(&whole));
        }
        observed.units = wire.units(endpoint, &whole);
    }
    Ok((body, Outcome::completed(observed)))
}

/// Every backend of `model` is at its own limit (`upstreams[].rpm`): tollgate answers the
/// 429 itself, with when to retry, and nothing reaches a backend.
fn over_backend_limit(model: &str, wait: Duration) -> ApiError {
    crate::limits::retry_later(wait, Default::default(), |seconds| {
        format!("the backends of '{model}' are at their own request limit; retry after {seconds} s")
    })
    .into()
}
