//! `/admin/v1/accounts`: open, list and show accounts.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, JsonBody};
use crate::app::AppState;
use crate::config::check_name;
use crate::error::ApiError;
use crate::store::{self, accounts::Account};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/accounts", get(list).post(create))
        .route("/admin/v1/accounts/{id}", get(show))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
}

async fn create(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(new): JsonBody<NewAccount>,
) -> Result<(StatusCode, Json<Account>), ApiError> {
    check_name(&new.name).map_err(|e| ApiError::invalid(format!("name: {e}"), "name"))?;
    let account = create_account(state.db(), &new.name).await?;
    Ok((StatusCode::CREATED, Json(account)))
}

/// Creates an account; 409 if the name is taken.
pub async fn create_account(db: &store::Db, name: &str) -> Result<Account, ApiError> {
    if store::accounts::find_by_name(db, name).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "an account named '{name}' already exists"
        )));
    }
    Ok(store::accounts::create(db, name).await?)
}

/// The account named `name`, or 404.
pub async fn named(db: &store::Db, name: &str) -> Result<Account, ApiError> {
    store::accounts::find_by_name(db, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account '{name}' does not exist")))
}

/// The id of the account named `name`, if a name is given.
pub async fn id_of(db: &store::Db, name: Option<&str>) -> Result<Option<i64>, ApiError> {
    match name {
        Some(name) => Ok(Some(named(db, name).await?.id)),
        None => Ok(None),
    }
}

async fn list(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let accounts = store::accounts::list(state.db()).await?;
    Ok(Json(json!({"object": "list", "data": accounts})))
}

async fn show(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Account>, ApiError> {
    store::accounts::get(state.db(), id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("account {id} does not exist")))
}
