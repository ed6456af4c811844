//! `/admin/v1/keys`: issue, list, show, change limits, revoke and rotate API keys. A key's
//! secret appears once, in the response that creates it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, JsonBody, QueryParams};
use crate::domain::accounts;
use crate::domain::keys::{self, Issued, KeyPatch, KeyView, NewKeyRequest};
use crate::server::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/keys", get(list).post(create))
        .route("/admin/v1/keys/{id}", get(show).patch(update))
        .route("/admin/v1/keys/{id}/revoke", post(revoke))
        .route("/admin/v1/keys/{id}/rotate", post(rotate))
}

async fn create(
    State(state): State<AppState>,
    admin: Admin,
    JsonBody(request): JsonBody<NewKeyRequest>,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
    let issued = keys::issue(state.db(), state.keys(), request).await?;
    let change = keys::change("key.create", None, &issued.view);
    admin.record(&state, change).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

#[derive(Deserialize)]
struct ListQuery {
    /// Account name.
    account: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    _: Admin,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let account_id = accounts::id_of(state.db(), query.account.as_deref()).await?;
    let data = keys::list(state.usage_db().await?, account_id).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn show(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> Result<Json<KeyView>, ApiError> {
    let row = keys::get(state.db(), id).await?;
    Ok(Json(keys::view(state.usage_db().await?, row).await?))
}

async fn update(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
    JsonBody(patch): JsonBody<KeyPatch>,
) -> Result<Json<KeyView>, ApiError> {
    let db = state.usage_db().await?;
    let before = keys::view(db, keys::get(db, id).await?).await?;
    let after = keys::update(db, state.keys(), id, patch).await?;
    admin
        .record(&state, keys::change("key.update", Some(&before), &after))
        .await?;
    Ok(Json(after))
}

async fn revoke(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<Json<KeyView>, ApiError> {
    let db = state.usage_db().await?;
    let before = keys::view(db, keys::get(db, id).await?).await?;
    let after = keys::revoke(db, state.keys(), id).await?;
    admin
        .record(&state, keys::change("key.revoke", Some(&before), &after))
        .await?;
    Ok(Json(after))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the old secret keeps working; the configured default when absent.
    grace_secs: Option<i64>,
}

async fn rotate(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
    JsonBody(request): JsonBody<RotateRequest>,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
    let grace = keys::grace(
        request
            .grace_secs
            .unwrap_or(state.config().admin.rotation_grace_secs),
    )?;
    let db = state.usage_db().await?;
    let before = keys::view(db, keys::get(db, id).await?).await?;
    let issued = keys::rotate(db, state.keys(), id, grace).await?;
    admin
        .record(
            &state,
            keys::change("key.rotate", Some(&before), &issued.view),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(issued)))
}
