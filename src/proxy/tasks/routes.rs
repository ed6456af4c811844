//! The task routes every dialect shares, as its `Route`s declare them: a poll of the task
//! the path names (Zhipu's `async-result/{id}`), a poll of the tasks the body names
//! (ComfyUI's `get_task_info`, SD's `get_result`; answered by the backend's answer as it
//! came, or one merged answer where the dialect merges them), and a cancellation (passed
//! on for the client's own tasks: a cancelled task costs nothing, its next poll says it
//! failed, or it expires). Each task is the caller's own (404 for another key's) and is
//! billed at its first success (`poll_task`).

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::{poll_task, send, upstream_of};
use crate::auth::Caller;
use crate::billing::TokenCounts;
use crate::dialect::Wire;
use crate::proxy::answer::successful_body;
use crate::server::ApiError;
use crate::state::AppState;
use crate::store;
use crate::upstream::Upstream;
use crate::upstream::client::UpstreamResponse;

/// `GET .../{id}`: the backend's answer for the caller's task, passed on.
pub async fn poll_one(
    state: &AppState,
    caller: &Caller,
    task_id: &str,
) -> Result<Response, ApiError> {
    let polled = poll_task(state, caller, task_id, &Map::new()).await?;
    Ok(polled.passed_on())
}

/// `POST` of a body naming tasks (`Wire::task_ids`): each polled; one merged answer where
/// the dialect merges them, the backend's answer as it came otherwise.
pub async fn poll_named(
    wire: &'static dyn Wire,
    state: &AppState,
    caller: &Caller,
    raw: &[u8],
) -> Result<Response, ApiError> {
    let asked = json_body(raw)?;
    let mut polled = Vec::new();
    for id in wire.task_ids(&asked)? {
        polled.push(poll_task(state, caller, &id, &asked).await?);
    }
    let answers: Vec<&Map<String, Value>> = polled.iter().map(|p| &p.answer).collect();
    if let Some(merged) = wire.merge_polls(&answers) {
        return Ok(axum::Json(merged).into_response());
    }
    match polled.pop() {
        Some(one) if polled.is_empty() => Ok(one.passed_on()),
        _ => Err(ApiError::invalid("name one task per poll", "task_id")),
    }
}

/// `POST` of a body naming tasks to cancel: only the caller's own, each on the backend it
/// runs on. Every id is checked first; then the backend is sent, per task, what its
/// dialect builds from that checked id (never the client's body, whose other members
/// could name anybody's task). Answers the last backend answer (all succeeded) or the
/// first error. Counted against the key's rpm; needs a key allowed the task's model.
pub async fn cancel(
    wire: &'static dyn Wire,
    state: &AppState,
    caller: &Caller,
    raw: &[u8],
) -> Result<Response, ApiError> {
    let asked = json_body(raw)?;
    let ids = wire.task_ids(&asked)?;
    count_against_rpm(state, caller).await?;
    let mut owned = Vec::new();
    for id in ids {
        let task = store::tasks::owned(state.db(), &id, caller.limit_id())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no task '{id}' of this key")))?;
        caller.check_model(&task.model)?;
        let upstream = upstream_of(state, &task)?;
        let how = upstream.wire().task_cancel(&task.task_id).ok_or_else(|| {
            ApiError::NotFound(format!(
                "task '{id}' runs on a backend that cannot cancel it"
            ))
        })?;
        owned.push((upstream, how));
    }
    let mut answer = None;
    for (upstream, how) in owned {
        let request = axum::http::Request::post(upstream.url_of(&how.path)?)
            .header(header::HOST, upstream.host.clone())
            .header(header::CONTENT_TYPE, "application/json");
        let body = Bytes::from(how.body.unwrap_or_default().to_string());
        answer = Some(relay(state, &upstream, send(&upstream, request, body).await?).await?);
    }
    answer.ok_or_else(|| ApiError::invalid("name a task to cancel", "task_id"))
}

fn json_body(raw: &[u8]) -> Result<Map<String, Value>, ApiError> {
    serde_json::from_slice(raw)
        .map_err(|_| ApiError::InvalidJson("the body must be a JSON object".into()))
}

/// Counts a request that spends no tokens against the key's rpm (429 when over).
pub async fn count_against_rpm(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let admission = state.limits().admit(caller, TokenCounts::default).await?;
    state.limits().settle(caller, &admission, 0);
    Ok(())
}

/// The backend's answer as it came (its errors mapped as every backend error is).
pub async fn relay(
    state: &AppState,
    upstream: &Upstream,
    response: UpstreamResponse,
) -> Result<Response, ApiError> {
    let limit = state.config().server.max_response_bytes;
    let body = successful_body(upstream, response, limit).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response())
}
