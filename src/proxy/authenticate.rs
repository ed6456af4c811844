//! The `Caller` extractor of the client routes: the bearer key, checked (`auth`) and
//! counted in the key cache's metrics.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::auth::{ApiKey, Caller, authenticate};
use crate::server::ApiError;
use crate::state::AppState;

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
        let (caller, hit) = authenticate(state.keys(), state.db(), &key).await?;
        let [hits, misses] = &state.metrics().key_cache;
        if hit { hits } else { misses }.inc();
        Ok(caller)
    }
}
