//! What the domain refuses or fails with, said once for every caller (`Error`): the HTTP
//! edge renders it as an OpenAI-shaped answer (`server::ApiError`), the CLI as a message.
//! Nothing here knows HTTP but the names of its headers (`http`), which a rate limit's
//! verdict carries.

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is well formed but a field is wrong or missing (400).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// The API key is malformed, unknown, revoked or expired (401). The message says
    /// which, but never repeats the key.
    #[error("{0}")]
    InvalidKey(&'static str),
    /// The admin token is missing, malformed, expired, or not ours (401).
    #[error("{0}")]
    AdminUnauthorized(String),
    /// The key may not call this model, or the admin role may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The thing to create exists already, or a final thing cannot change (409).
    #[error("{0}")]
    Conflict(String),
    /// A per-key limit is reached (429): `headers` say when to retry (`Retry-After`) and
    /// what is left (`x-ratelimit-*`).
    #[error("{message}")]
    RateLimited {
        message: String,
        headers: Box<http::HeaderMap>,
    },
    /// The account's balance or credit cannot cover the request's worst case (402).
    #[error("{0}")]
    InsufficientQuota(String),
    /// No such account, key, invoice, model, chip, deployment or task (404).
    #[error("{0}")]
    NotFound(String),
    /// The ledger or the limits cannot answer now (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure (500); the cause is logged, never shown.
    #[error("internal error")]
    Internal(anyhow::Error),
}

impl Error {
    pub fn invalid(message: impl Into<String>, param: &'static str) -> Self {
        Error::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }
}

impl From<anyhow::Error> for Error {
    /// Money out of range is the one failure below that the client is told about.
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<Overflow>() {
            Ok(overflow) => overflow.into(),
            Err(e) => Error::Internal(e),
        }
    }
}

/// A sum or product of money left the range of exact decimals: only reachable with data
/// that bypassed the bounds of `billing::money` (e.g. written by an older version);
/// reported, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an amount of money is out of range; check the account's top-ups, limits and prices")]
pub struct Overflow;

impl From<Overflow> for Error {
    fn from(e: Overflow) -> Self {
        Error::Unavailable(e.to_string())
    }
}

/// Builds `{"error":{"message","type","code","param"}}`.
pub fn openai_error(message: &str, kind: &str, code: Value, param: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "code": code, "param": param}})
}
