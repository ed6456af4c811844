//! Who is calling: API key secrets (`keys`), their life cycle (`lifecycle`), the in-memory
//! cache (`cache`) and the extractor that authenticates a request.

pub mod cache;
pub mod keys;
pub mod lifecycle;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::Utc;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store;
use crate::store::keys::KeyState;
pub use keys::ApiKey;

/// An authenticated caller: the key's row (hash and metadata), never the secret.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: i64,
    pub account_id: i64,
    pub key: Arc<store::keys::KeyRow>,
}

impl Caller {
    /// What rate limits count against: the key's lineage, shared by a rotated key's old
    /// and new secrets.
    pub fn limit_id(&self) -> i64 {
        self.key.lineage_id
    }

    /// Whether the key's allow-list (if any) includes `model`.
    pub fn may_call(&self, model: &str) -> bool {
        self.key
            .limits
            .allowed_models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }

    /// 403 unless the key may call `model`.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.may_call(model) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this API key is not allowed to call model '{model}'"
            )))
        }
    }
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
        authenticate(state, &key).await
    }
}

/// Looks the key up by its hash (cache first) and checks that it is live.
pub async fn authenticate(state: &AppState, key: &ApiKey) -> Result<Caller, ApiError> {
    let hash = key.hash();
    let (row, hit) = state.keys().lookup(state.db(), &hash).await?;
    let [hits, misses] = &state.metrics().key_cache;
    if hit { hits } else { misses }.inc();
    let row = row
        .filter(|row| bool::from(row.secret_hash.as_slice().ct_eq(&hash)))
        .ok_or(ApiError::InvalidKey("invalid API key"))?;
    match row.state(Utc::now()) {
        KeyState::Revoked => Err(ApiError::InvalidKey("this API key has been revoked")),
        KeyState::Expired => Err(ApiError::InvalidKey("this API key has expired")),
        KeyState::Active | KeyState::Rotating => Ok(Caller {
            key_id: row.id,
            account_id: row.account_id,
            key: row,
        }),
    }
}
