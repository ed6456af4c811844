//! Asynchronous tasks (Zhipu's async chat, ComfyUI runs, SD tasks): a submission is
//! recorded as a task when the backend accepts it, keeping its spending hold, and billed
//! exactly once, by whoever first sees it end (`end`): one usage record with the
//! submission's request id, written before the task is marked ended, so that a crash in
//! between leaves it pending and the next poll writes the same record again, which the
//! ledger keeps once. Only keys of the submitting key's lineage may poll it. A task
//! nobody polls to its end is polled once more, then expires (`expiry`).

mod end;
mod expiry;
pub mod routes;

use end::end_task;
pub use expiry::{expire, spawn_expiry};

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::answer::{read_body, successful_body};
use super::settle::{Exchange, Served, fail};
use crate::auth::Caller;
use crate::billing::record::Status;
use crate::dialect::json::Object;
use crate::dialect::{self, Call, TaskState, Wire};
use crate::server::ApiError;
use crate::state::AppState;
use crate::store::{self, tasks::Task};
use crate::upstream::client::UpstreamResponse;
use crate::upstream::{Serves, Upstream};

/// A task is submitted only while the ledger answers: one the ledger could not record
/// would run on the backend unbilled, its id never given to the client.
pub(super) async fn can_record(state: &AppState) -> Result<(), ApiError> {
    // Known down: at once; otherwise asked now, briefly (the probe may be a second late).
    if state.health().is_up() && state.health().probe(state.db()).await {
        return Ok(());
    }
    Err(ApiError::Unavailable(
        "tasks cannot be recorded now, so none was submitted; retry shortly".into(),
    ))
}

/// Why a task could not be recorded.
enum NotRecorded {
    /// The ledger did not answer (for about a second).
    Ledger(store::StoreError),
    /// The backend gave an id it had given another submission already: never merged
    /// with that task (its owner would be billed for, and shown, this one's result).
    Reused,
}

/// Writes `task`, trying again briefly if the ledger does not answer: the backend runs it
/// already. A unique violation is an earlier try of this write if the row of this request
/// names the same task, and a reused task id otherwise.
async fn record_task(state: &AppState, task: &Task) -> Result<(), NotRecorded> {
    let mut wait = Duration::from_millis(50);
    loop {
        match store::tasks::insert(state.db(), task).await {
            Ok(()) => return Ok(()),
            Err(store::StoreError::Conflict(_)) => {
                let mine = store::tasks::by_request_id(state.db(), &task.request_id).await;
                return match mine {
                    Ok(Some(row)) if row.task_id == task.task_id => Ok(()),
                    Ok(_) => Err(NotRecorded::Reused),
                    Err(e) => Err(NotRecorded::Ledger(e)),
                };
            }
            Err(e) if wait > Duration::from_secs(1) => return Err(NotRecorded::Ledger(e)),
            Err(_) => tokio::time::sleep(wait).await,
        }
        wait *= 4;
    }
}

/// The backend accepted a submission: the task is recorded and its answer goes to the
/// client. The submission itself costs nothing; its record comes with the task's end.
pub(super) async fn submitted(
    state: &AppState,
    ex: &Exchange,
    served: &Served,
    response: UpstreamResponse,
) -> Response {
    let upstream = &served.upstream;
    let limit = state.config().server.max_response_bytes;
    let body = match read_body(response, limit, upstream.idle_timeout).await {
        Ok(body) => body,
        Err((status, error)) => {
            return fail(state, ex, served, status, error).await;
        }
    };
    let parsed = serde_json::from_slice::<Map<String, Value>>(&body).ok();
    let error = match &parsed {
        None => Some(ApiError::BadGateway(
            "the backend answered the submission with a body that is not JSON".into(),
        )),
        Some(v) => (upstream.wire().error(&Object::of(v))).map(|body| ApiError::Upstream {
            status: StatusCode::BAD_GATEWAY,
            body,
            retry_after: None,
        }),
    };
    let task_id = parsed.as_ref().and_then(|v| upstream.wire().task_id(v));
    let task_id = match (error, task_id) {
        (None, Some(id)) if is_task_id(&id) => id,
        (error, _) => {
            let error = error.unwrap_or_else(|| {
                ApiError::BadGateway("the backend accepted the task without a usable id".into())
            });
            return fail(state, ex, served, Status::UpstreamError, error).await;
        }
    };
    let task = Task {
        request_id: ex.request_id.clone(),
        task_id,
        account_id: ex.caller.account_id,
        key_id: ex.caller.key_id,
        model: upstream.model.clone(),
        chip: upstream.chip.clone(),
        endpoint: ex.request.call.records.to_owned(),
        submitted_at: ex.started_at,
        state: "pending".into(),
        ended_at: None,
        held: ex.hold.map_or(Decimal::ZERO, |h| h.amount),
        prompt_estimate: prompt_estimate(ex).await,
    };
    match record_task(state, &task).await {
        Ok(()) => {}
        Err(NotRecorded::Reused) => {
            tracing::error!(request_id = %ex.request_id, task_id = %task.task_id, "the backend reused a task id");
            let error = ApiError::BadGateway(format!(
                "the backend answered with task id '{}', which it gave an earlier submission; this submission is not recorded as a task",
                task.task_id
            ));
            return fail(state, ex, served, Status::UpstreamError, error).await;
        }
        Err(NotRecorded::Ledger(e)) => {
            ex.release(state);
            tracing::error!(request_id = %ex.request_id, error = %e, "task not recorded");
            return ApiError::Unavailable(
                "the task could not be recorded, so it could not be billed; submit it again".into(),
            )
            .into_response();
        }
    }
    // No tokens are spent until the task ends: the key's reservation goes back now. The
    // spending hold stays with the task until its record (or its expiry) settles it.
    state.limits().settle(&ex.caller, &ex.admission, 0);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// tollgate's count of a text task's prompt (0 for other tasks: they are not billed by
/// their prompt), off the async workers.
async fn prompt_estimate(ex: &Exchange) -> u64 {
    if !ex.request.call.endpoint.completes() {
        return 0;
    }
    let prompt = ex.request.prompt();
    tokio::task::spawn_blocking(move || prompt.estimate())
        .await
        .unwrap_or_else(|_| ex.request.prompt_bound())
}

/// Backend task ids go into URLs: only plain ones are kept.
fn is_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.')
}

/// What one poll of one task brought back.
pub struct Polled {
    pub task: Task,
    pub body: Bytes,
    pub answer: Map<String, Value>,
}

impl Polled {
    /// The backend's answer as it came, with the submission's request id.
    pub fn passed_on(self) -> Response {
        let mut response =
            ([(header::CONTENT_TYPE, "application/json")], self.body).into_response();
        if let Ok(id) = HeaderValue::from_str(&self.task.request_id) {
            response.headers_mut().insert("x-request-id", id);
        }
        response
    }
}

/// Polls the task `task_id` of `caller`'s key lineage (404 for anybody else's) once, and
/// writes its record when the answer is its end and nobody wrote it before. `asked` is
/// what the client's poll asked besides the task. A task's result is handed out only once
/// it is billed: an expired task's poll is refused (410) without asking the backend, and
/// so is an answer of success for a task that ended otherwise meanwhile.
pub async fn poll_task(
    state: &AppState,
    caller: &Caller,
    task_id: &str,
    asked: &Map<String, Value>,
) -> Result<Polled, ApiError> {
    state.limits().admit_poll(caller)?;
    let not_found = || ApiError::NotFound(format!("no task '{task_id}' of this key"));
    let task = store::tasks::owned(state.db(), task_id, caller.limit_id())
        .await?
        .ok_or_else(not_found)?;
    if task.state == "expired" {
        return Err(expired(&task));
    }
    let upstream = upstream_of(state, &task)?;
    let (body, answer) = ask_once(state, &upstream, &task, asked).await?;
    let end = upstream.wire().task_state(&answer);
    let task = match end {
        Some(end @ (TaskState::Succeeded | TaskState::Failed)) if task.state == "pending" => {
            end_task(state, &upstream, &task, &answer, end).await?
        }
        _ => task,
    };
    if end == Some(TaskState::Succeeded) && task.state != "succeeded" {
        return Err(match task.state.as_str() {
            "expired" => expired(&task),
            _ => ApiError::BadGateway(format!(
                "the backend reports success for task '{task_id}', which it reported {} before",
                task.state
            )),
        });
    }
    Ok(Polled { task, body, answer })
}

/// The refusal of a poll of an expired task.
fn expired(task: &Task) -> ApiError {
    ApiError::TaskExpired(format!(
        "task '{}' was not polled to its end in time and expired unbilled: its result is not handed out; submit it again",
        task.task_id
    ))
}

/// Asks the backend once how `task` stands: its answer as it came and as JSON, or the
/// error to answer (a failed poll leaves the task as it was, to be polled again).
pub(super) async fn ask_once(
    state: &AppState,
    upstream: &Upstream,
    task: &Task,
    asked: &Map<String, Value>,
) -> Result<(Bytes, Map<String, Value>), ApiError> {
    let response = ask(upstream, task, asked).await?;
    let limit = state.config().server.max_response_bytes;
    let body = successful_body(upstream, response, limit).await?;
    let answer = serde_json::from_slice::<Map<String, Value>>(&body).map_err(|_| {
        ApiError::BadGateway("the backend answered the poll with a body that is not JSON".into())
    })?;
    if let Some(body) = upstream.wire().error(&Object::of(&answer)) {
        return Err(ApiError::Upstream {
            status: StatusCode::BAD_GATEWAY,
            body,
            retry_after: None,
        });
    }
    Ok((body, answer))
}

/// The upstream a task runs on, if it is still configured.
pub fn upstream_of(state: &AppState, task: &Task) -> Result<Arc<Upstream>, ApiError> {
    let (wire, call) = task_call(task)?;
    state
        .upstreams()
        .pair(Serves::of(wire, call.endpoint), &task.model, &task.chip)
        .map_err(|_| {
            ApiError::Unavailable(format!(
                "{}/{} is no longer configured: its tasks cannot be polled",
                task.model, task.chip
            ))
        })
}

/// What kind of task it is: the task route whose records name its endpoint, and that
/// route's dialect.
pub(super) fn task_call(task: &Task) -> Result<(&'static dyn Wire, Call), ApiError> {
    dialect::task_call(&task.endpoint).ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "task {} is of an endpoint no dialect submits: '{}'",
            task.task_id,
            task.endpoint
        ))
    })
}

/// One poll of the backend: a GET, or a POST of what the dialect asks.
async fn ask(
    upstream: &Upstream,
    task: &Task,
    asked: &Map<String, Value>,
) -> Result<UpstreamResponse, ApiError> {
    let (url, body) = upstream.task_poll(&task.task_id, asked)?;
    let method = if body.is_some() {
        axum::http::Method::POST
    } else {
        axum::http::Method::GET
    };
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(url)
        .header(header::HOST, upstream.host.clone())
        .header("x-request-id", &task.request_id);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    send(
        upstream,
        request,
        body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
    )
    .await
}

/// Sends `request` with `body` and the backend's credential, within its first-byte
/// timeout.
pub async fn send(
    upstream: &Upstream,
    mut request: axum::http::request::Builder,
    body: Bytes,
) -> Result<UpstreamResponse, ApiError> {
    if let Some((name, value)) = upstream.credential() {
        request = request.header(name, value.clone());
    }
    let request = request
        .body(body)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let what = || format!("{}/{}", upstream.model, upstream.chip);
    match (upstream.client)
        .send(request, upstream.first_byte_timeout)
        .await
    {
        Ok(response) => Ok(response),
        Err(e) if e.is_timeout() => Err(ApiError::GatewayTimeout(format!(
            "the backend for {} did not answer in time",
            what()
        ))),
        Err(_) => Err(ApiError::BadGateway(format!(
            "the backend for {} failed to answer",
            what()
        ))),
    }
}
