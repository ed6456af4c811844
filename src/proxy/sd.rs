//! GenStudio's SD task poll beside `/create` (which is an ordinary task submission):
//! `get_result` with `{"task_id"}` polls the caller's own task (404 for another key's),
//! bills it at its first success (`tasks::poll_task`) and passes the backend's answer on,
//! with the submission's request id in `x-request-id`.

use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value};

use super::extract::ClientBody;
use super::tasks::poll_task;
use crate::auth::Caller;
use crate::server::ApiError;
use crate::state::AppState;

/// `POST .../get_result`.
pub async fn get_result(
    State(state): State<AppState>,
    caller: Caller,
    ClientBody(raw): ClientBody,
) -> Result<Response, ApiError> {
    let asked: Map<String, Value> = serde_json::from_slice(&raw)
        .map_err(|_| ApiError::InvalidJson("the body must be a JSON object".into()))?;
    let task_id = match asked.get("task_id").or_else(|| asked.get("taskId")) {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => {
            return Err(ApiError::invalid("'task_id' must name the task", "task_id"));
        }
    };
    Ok(poll_task(&state, &caller, &task_id, &asked)
        .await?
        .passed_on())
}
