//! `GET /admin/v1/prices`: every price version in the ledger, current and past.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{Value, json};

use super::Viewer;
use crate::billing::{PriceBook, PriceVersion};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/v1/prices", get(list))
}

/// A version as listed: its prices, and whether it is the one in force now.
pub fn describe(version: &PriceVersion, book: &PriceBook) -> Value {
    let e = &version.entry;
    let in_force = book
        .in_force(&e.model, &e.chip, Utc::now())
        .is_some_and(|v| v.id == version.id);
    json!({
        "id": version.id, "model": e.model, "chip": e.chip, "effective_from": e.effective_from,
        "input_per_1k": e.input_per_1k, "cached_input_per_1k": version.cached_input_per_1k(),
        "output_per_1k": e.output_per_1k, "per_request": e.per_request, "currency": "CNY",
        "in_force": in_force,
    })
}

async fn list(State(state): State<AppState>, _: Viewer) -> Result<Json<Value>, ApiError> {
    let book = state.prices();
    let data: Vec<Value> = crate::store::prices::all(state.db())
        .await?
        .iter()
        .map(|v| describe(v, &book))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
