//! `GET /admin/v1/usage`: usage records for audits, filtered and paginated (newest first).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{QueryParams, Viewer};
use crate::domain::{accounts, usage};
use crate::server::ApiError;
use crate::state::AppState;
use crate::store::{self, listing::UsageFilter};

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/v1/usage", get(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// Account name.
    account: Option<String>,
    key: Option<i64>,
    model: Option<String>,
    chip: Option<String>,
    status: Option<String>,
    /// A private deployment's id.
    deployment: Option<String>,
    endpoint: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<i64>,
    /// A `next_cursor` of a previous page.
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    _: Viewer,
    QueryParams(q): QueryParams<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    let account_id = accounts::id_of(state.db(), q.account.as_deref()).await?;
    let filter = UsageFilter {
        account_id,
        key_id: q.key,
        model: q.model,
        chip: q.chip,
        status: q.status,
        deployment: q.deployment,
        endpoint: q.endpoint,
        from_ms: q.from.map(store::to_ms),
        to_ms: q.to.map(store::to_ms),
        before: q.cursor.as_deref().map(usage::parse_cursor).transpose()?,
    };
    let limit = q.limit.unwrap_or(100);
    let (data, next_cursor) = usage::page(state.usage_db().await?, &filter, limit).await?;
    Ok(Json(
        json!({"object": "list", "data": data, "next_cursor": next_cursor}),
    ))
}
