//! `/admin/v1/webhooks/deliveries`: the newest webhook deliveries, each with its attempts
//! (what was sent where, what each try got).

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
    Router::new().route("/admin/v1/webhooks/deliveries", get(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    /// `pending`, `delivered` or `failed`.
    state: Option<String>,
    /// At most this many (100 by default, 1,000 at most).
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    _: Viewer,
    QueryParams(q): QueryParams<DeliveriesQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(s) = &q.state
        && !["pending", "delivered", "failed"].contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "state must be pending, delivered or failed",
            "state",
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let data = store::webhooks::deliveries(state.db(), q.state.as_deref(), limit).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}
