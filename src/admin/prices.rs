//! `GET /admin/v1/prices`: every price version in the ledger, current and past.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::Viewer;
use crate::domain::prices;
use crate::server::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/v1/prices", get(list))
}

async fn list(State(state): State<AppState>, _: Viewer) -> Result<Json<Value>, ApiError> {
    let book = state.prices();
    let data: Vec<Value> = crate::store::prices::all(state.db())
        .await?
        .iter()
        .map(|v| prices::describe(v, &book))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
