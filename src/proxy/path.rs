//! `ClientPath`: axum's `Path` for the client routes, its rejections (a segment that is not
//! UTF-8 once decoded, say `%FF`) answered as OpenAI-shaped 400s like every other error
//! there, not axum's plain text.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

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
