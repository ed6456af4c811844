//! `GET /admin/v1/tasks`: asynchronous tasks, newest first; `?state=pending` lists those
//! not yet polled to their end (they expire after `limits.task_expiry_secs`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{QueryParams, Viewer};
use crate::server::ApiError;
use crate::state::AppState;
use crate::store;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/v1/tasks", get(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TasksQuery {
    /// `pending`, `succeeded`, `failed` or `expired`.
    state: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    _: Viewer,
    QueryParams(q): QueryParams<TasksQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(s) = &q.state
        && !["pending", "succeeded", "failed", "expired"].contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "state must be pending, succeeded, failed or expired",
            "state",
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let data = store::tasks::list(state.db(), q.state.as_deref(), limit).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}
