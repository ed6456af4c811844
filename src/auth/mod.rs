//! Who is calling: API keys (`keys`) and the extractor that authenticates a request.

pub mod keys;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::Utc;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store;
pub use keys::ApiKey;

/// An authenticated caller. Holds ids, never the secret.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: i64,
    pub account_id: i64,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::MissingKey)?
            .to_str()
            .map_err(|_| ApiError::InvalidKey("malformed Authorization header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(ApiError::InvalidKey(
                "malformed Authorization header: expected 'Bearer tg-...'",
            ))?;
        let key = ApiKey::parse(token.trim())?;
        authenticate(state.db(), &key).await
    }
}

/// Looks the key up by its hash and checks that it is live.
pub async fn authenticate(db: &store::Db, key: &ApiKey) -> Result<Caller, ApiError> {
    let hash = key.hash();
    let row = store::keys::find_by_hash(db, &hash)
        .await?
        .filter(|row| bool::from(row.secret_hash.as_slice().ct_eq(&hash)))
        .ok_or(ApiError::InvalidKey("invalid API key"))?;
    if row.revoked_at.is_some() {
        return Err(ApiError::InvalidKey("this API key has been revoked"));
    }
    if row.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(ApiError::InvalidKey("this API key has expired"));
    }
    Ok(Caller {
        key_id: row.id,
        account_id: row.account_id,
    })
}
