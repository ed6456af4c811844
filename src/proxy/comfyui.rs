//! GenStudio's ComfyUI task routes beside `/prompt` (which is an ordinary task submission):
//! `get_task_info` polls each task the client names, as its owner (404 for another key's),
//! billing each at its first success (`tasks::poll_task`) and answering one merged
//! `comfy_task_info` list; `cancel` is passed on for the client's own tasks (a cancelled
//! task costs nothing: its next poll says it failed, or it expires), counted against the
//! key's rpm, and needs a key allowed the run's workflow. `upload/image` is `upload`'s.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::answer::successful_body;
use super::extract::ClientBody;
use super::tasks::{poll_task, send, upstream_of};
use crate::auth::Caller;
use crate::billing::TokenCounts;
use crate::dialect::comfyui::info;
use crate::server::ApiError;
use crate::state::AppState;
use crate::store;

/// Tasks one `get_task_info` may name.
const MAX_IDS: usize = 100;

/// The task ids a body names: `comfy_task_ids` (a list), `comfy_task_id` or `prompt_id`.
fn task_ids(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let ids: Vec<Value> = match (
        body.get("comfy_task_ids"),
        body.get("comfy_task_id").or_else(|| body.get("prompt_id")),
    ) {
        (Some(Value::Array(ids)), _) => ids.clone(),
        (None, Some(id)) => vec![id.clone()],
        _ => {
            return Err(ApiError::invalid(
                "'comfy_task_ids' must list the tasks",
                "comfy_task_ids",
            ));
        }
    };
    if ids.is_empty() || ids.len() > MAX_IDS {
        return Err(ApiError::invalid(
            format!("'comfy_task_ids' must name 1 to {MAX_IDS} tasks"),
            "comfy_task_ids",
        ));
    }
    ids.into_iter()
        .map(|id| match id {
            Value::String(id) if !id.is_empty() => Ok(id),
            _ => Err(ApiError::invalid(
                "task ids must be non-empty strings",
                "comfy_task_ids",
            )),
        })
        .collect()
}

fn json_body(raw: &[u8]) -> Result<Map<String, Value>, ApiError> {
    serde_json::from_slice(raw)
        .map_err(|_| ApiError::InvalidJson("the body must be a JSON object".into()))
}

/// `POST .../get_task_info`.
pub async fn get_task_info(
    State(state): State<AppState>,
    caller: Caller,
    ClientBody(raw): ClientBody,
) -> Result<Response, ApiError> {
    let asked = json_body(&raw)?;
    let mut infos = Vec::new();
    for id in task_ids(&asked)? {
        let polled = poll_task(&state, &caller, &id, &asked).await?;
        infos.push(
            info(&polled.answer)
                .cloned()
                .map_or(Value::Null, Value::Object),
        );
    }
    let merged = json!({"code": 0, "msg": "success", "data": {"comfy_task_info": infos}});
    Ok(axum::Json(merged).into_response())
}

/// `POST .../cancel`: only the caller's own tasks, each on the backend it runs on. Every
/// id is checked first; then the backend is sent, per task, a body tollgate built from
/// that checked id (never the client's body, whose other members could name anybody's
/// task). Answers the last backend answer (all succeeded) or the first error.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ClientBody(raw): ClientBody,
) -> Result<Response, ApiError> {
    let asked = json_body(&raw)?;
    let ids = task_ids(&asked)?;
    count_against_rpm(&state, &caller).await?;
    let mut owned = Vec::new();
    for id in ids {
        let task = store::tasks::owned(state.db(), &id, caller.limit_id())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no task '{id}' of this key")))?;
        caller.check_model(&task.model)?;
        owned.push((upstream_of(&state, &task)?, task));
    }
    let mut answer = None;
    for (upstream, task) in owned {
        let request = axum::http::Request::post(upstream.url_of("/cancel")?)
            .header(header::HOST, upstream.host.clone())
            .header(header::CONTENT_TYPE, "application/json");
        let body = Bytes::from(json!({"comfy_task_id": task.task_id}).to_string());
        answer = Some(relay(&state, &upstream, send(&upstream, request, body).await?).await?);
    }
    Ok(answer.expect("task_ids names one at least"))
}

/// Counts a request that spends no tokens against the key's rpm (429 when over).
pub(super) async fn count_against_rpm(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let admission = state.limits().admit(caller, TokenCounts::default).await?;
    state.limits().settle(caller, &admission, 0);
    Ok(())
}

/// The backend's answer as it came (its errors mapped as every backend error is).
pub(super) async fn relay(
    state: &AppState,
    upstream: &crate::upstream::Upstream,
    response: crate::upstream::client::UpstreamResponse,
) -> Result<Response, ApiError> {
    let limit = state.config().server.max_response_bytes;
    let body = successful_body(upstream, response, limit).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response())
}
