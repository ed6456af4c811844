//! Extractors of the client routes whose rejections are OpenAI-shaped like every other
//! error there, not axum's plain text: `ClientPath` (a segment that is not UTF-8 once
//! decoded, say `%FF`, is a 400) and `ClientBody` (a body beyond
//! `server.max_request_bytes` is a 413).

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::server::ApiError;
use crate::state::AppState;

pub struct ClientPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ClientPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ClientPath(value)),
            Err(rejection) => Err(ApiError::invalid(
                format!("the request's path is not valid: {}", rejection.body_text()),
                "path",
            )),
        }
    }
}

/// A whole request body, at most `server.max_request_bytes`.
pub struct ClientBody(pub Bytes);

impl FromRequest<AppState> for ClientBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config().server.max_request_bytes;
        axum::body::to_bytes(request.into_body(), limit)
            .await
            .map(ClientBody)
            .map_err(|_| ApiError::PayloadTooLarge(limit))
    }
}
