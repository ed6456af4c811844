//! `/admin/v1/audit`: the audit log, newest first, by keyset pages (`before` an entry id),
//! of one account or all.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{QueryParams, Viewer};
use crate::domain::audit_log;
use crate::server::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/v1/audit", get(list))
}

#[derive(Deserialize)]
struct AuditQuery {
    account_id: Option<i64>,
    before: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    _: Viewer,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let entries = audit_log::page(state.db(), q.account_id, q.before).await?;
    let next = (entries.len() as i64 == audit_log::PAGE)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(
        json!({"object": "list", "data": entries, "next_before": next}),
    ))
}
