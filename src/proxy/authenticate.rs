//! The `Caller` extractor of the client routes: the key, as a bearer token or in
//! `x-api-key` (as Anthropic's SDK sends it), checked (`auth`) and counted in the key
//! cache's metrics.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::auth::{ApiKey, Caller, authenticate};
use crate::server::ApiError;
use crate::state::AppState;

/// Where Anthropic's SDK sends the key.
const X_API_KEY: &str = "x-api-key";

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = match (
            parts.headers.get(AUTHORIZATION),
            parts.headers.get(X_API_KEY),
        ) {
            (Some(header), _) => {
                let header = header
                    .to_str()
                    .map_err(|_| ApiError::InvalidKey("malformed Authorization header"))?;
                header
                    .strip_prefix("Bearer ")
                    .or_else(|| header.strip_prefix("bearer "))
                    .ok_or(ApiError::InvalidKey(
                        "malformed Authorization header: expected 'Bearer tg-...'",
                    ))?
            }
            (None, Some(header)) => header
                .to_str()
                .map_err(|_| ApiError::InvalidKey("malformed x-api-key header"))?,
            (None, None) => return Err(ApiError::MissingKey),
        };
        let key = ApiKey::parse(token.trim())?;
        let (caller, hit) = authenticate(state.keys(), state.db(), &key).await?;
        let [hits, misses] = &state.metrics().key_cache;
        if hit { hits } else { misses }.inc();
        Ok(caller)
    }
}
