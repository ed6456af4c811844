//! The one error type clients ever see, rendered as an OpenAI-shaped body:
//! `{"error":{"message","type","code","param"}}`. Internal details are logged, never shown.
//! What the floors below refuse or fail with (`crate::error::Error`, `StoreError`,
//! `LedgerError`) becomes an `ApiError` here, once.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::{Error, Overflow, openai_error};
use crate::metering::writer::LedgerError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not valid JSON or not a JSON object.
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    /// 400: the JSON is well formed but a field is wrong or missing.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// 401: no API key in the request.
    #[error("missing API key: send it as 'Authorization: Bearer tg-...' (or 'x-api-key: tg-...')")]
    MissingKey,
    /// 401: the key is malformed, unknown, revoked or expired. The message says which,
    /// but never repeats the key.
    #[error("{0}")]
    InvalidKey(&'static str),
    /// 401: the admin token is missing, malformed, expired, or not ours.
    #[error("{0}")]
    AdminUnauthorized(String),
    /// 403: the key may not call this model, or the admin role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 409: the thing to create exists already.
    #[error("{0}")]
    Conflict(String),
    /// 429: a per-key limit is reached; `headers` carry `Retry-After` and `x-ratelimit-*`.
    #[error("{message}")]
    RateLimited {
        message: String,
        headers: Box<axum::http::HeaderMap>,
    },
    /// 402: the account's balance or credit cannot cover the request's worst case.
    #[error("{0}")]
    InsufficientQuota(String),
    /// 404: no such model, chip, deployment or route.
    #[error("{0}")]
    NotFound(String),
    /// 410: the task expired unbilled: its result is not handed out.
    #[error("{0}")]
    TaskExpired(String),
    /// 408: the request body stopped arriving (`server.body_idle_timeout_ms`,
    /// `server.body_timeout_ms`).
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 413: the request body is over `server.max_request_bytes`.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 502: the backend refused the connection, sent garbage or failed.
    #[error("{0}")]
    BadGateway(String),
    /// 503: the request cannot be priced or the ledger cannot record it, so it is not served.
    #[error("{0}")]
    Unavailable(String),
    /// 504: the backend did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// An error the backend returned, already mapped to the OpenAI shape, with the status
    /// tollgate chose for it, and the backend's `Retry-After` if it sent one.
    #[error("backend error: {}", body["error"]["message"].as_str().unwrap_or("unknown"))]
    Upstream {
        status: StatusCode,
        body: Value,
        retry_after: Option<HeaderValue>,
    },
    /// 500: a bug or an unexpected failure; the cause is logged, the client sees a generic message.
    #[error("internal error")]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for ApiError {
    /// Money out of range is the one failure below that the client is told about.
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<Overflow>() {
            Ok(overflow) => overflow.into(),
            Err(e) => ApiError::Internal(e),
        }
    }
}

impl From<Overflow> for ApiError {
    fn from(e: Overflow) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidRequest { message, param } => ApiError::InvalidRequest { message, param },
            Error::InvalidKey(why) => ApiError::InvalidKey(why),
            Error::AdminUnauthorized(why) => ApiError::AdminUnauthorized(why),
            Error::Forbidden(why) => ApiError::Forbidden(why),
            Error::Conflict(why) => ApiError::Conflict(why),
            Error::RateLimited { message, headers } => ApiError::RateLimited { message, headers },
            Error::InsufficientQuota(why) => ApiError::InsufficientQuota(why),
            Error::NotFound(why) => ApiError::NotFound(why),
            Error::Unavailable(why) => ApiError::Unavailable(why),
            Error::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Error::from(e).into()
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        Error::from(e).into()
    }
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: &'static str) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::MissingKey | ApiError::InvalidKey(_) | ApiError::AdminUnauthorized(_) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::InsufficientQuota(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TaskExpired(_) => StatusCode::GONE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Upstream { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI-shaped JSON body for this error.
    pub fn body(&self) -> Value {
        let (kind, code, param) = match self {
            ApiError::Upstream { body, .. } => return body.clone(),
            ApiError::InvalidJson(_) => ("invalid_request_error", "invalid_json", None),
            ApiError::InvalidRequest { param, .. } => {
                ("invalid_request_error", "invalid_value", *param)
            }
            ApiError::MissingKey => ("authentication_error", "missing_api_key", None),
            ApiError::InvalidKey(_) => ("authentication_error", "invalid_api_key", None),
            ApiError::AdminUnauthorized(_) => ("authentication_error", "invalid_admin_token", None),
            ApiError::Forbidden(_) => ("permission_error", "forbidden", None),
            ApiError::InsufficientQuota(_) => ("insufficient_quota", "insufficient_quota", None),
            ApiError::Conflict(_) => ("invalid_request_error", "conflict", None),
            ApiError::RateLimited { .. } => ("rate_limit_error", "rate_limit_exceeded", None),
            ApiError::NotFound(_) => ("invalid_request_error", "not_found", None),
            ApiError::TaskExpired(_) => ("invalid_request_error", "task_expired", None),
            ApiError::RequestTimeout => ("invalid_request_error", "request_timeout", None),
            ApiError::PayloadTooLarge(_) => ("invalid_request_error", "payload_too_large", None),
            ApiError::BadGateway(_) => ("upstream_error", "bad_gateway", None),
            ApiError::Unavailable(_) => ("server_error", "service_unavailable", None),
            ApiError::GatewayTimeout(_) => ("upstream_error", "upstream_timeout", None),
            ApiError::Internal(_) => ("server_error", "internal_error", None),
        };
        openai_error(&self.to_string(), kind, Value::from(code), param)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = %format!("{cause:#}"), "internal error");
        }
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        match self {
            ApiError::RateLimited { headers, .. } => response.headers_mut().extend(*headers),
            ApiError::Upstream {
                retry_after: Some(wait),
                ..
            } => {
                response.headers_mut().insert(header::RETRY_AFTER, wait);
            }
            _ => {}
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
