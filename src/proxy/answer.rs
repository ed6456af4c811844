//! Reading a backend's answer: a whole body within its limits, and a backend's HTTP error
//! mapped to what the client sees.

use std::time::Duration;

use axum::http::{StatusCode, header};
use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

use crate::billing::record::Status;
use crate::dialect::json::Object;
use crate::error::openai_error;
use crate::server::ApiError;
use crate::upstream::Upstream;
use crate::upstream::client::{UpstreamResponse, next_chunk_within};

/// A side request's answer (a task's poll, a cancel, an upload): its whole body within
/// `limit` bytes if the backend succeeded, else the backend's error as the client sees it.
pub async fn successful_body(
    upstream: &Upstream,
    response: UpstreamResponse,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if !response.status().is_success() {
        return Err(upstream_error(upstream, response).await);
    }
    read_body(response, limit, upstream.idle_timeout)
        .await
        .map_err(|(_, error)| error)
}

/// Reads a whole body within `limit` bytes, each read within `idle`. A body that comes in
/// one piece (the usual small answer) is kept as it came, without a copy.
pub async fn read_body(
    mut response: UpstreamResponse,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, (Status, ApiError)> {
    let mut first: Option<Bytes> = None;
    let mut body = BytesMut::new();
    loop {
        match next_chunk_within(&mut response, idle).await {
            Err(_) => {
                return Err((
                    Status::Timeout,
                    ApiError::GatewayTimeout("the backend stopped sending its answer".into()),
                ));
            }
            Ok(Err(_)) => {
                return Err((
                    Status::UpstreamError,
                    ApiError::BadGateway("the backend's answer was cut off".into()),
                ));
            }
            Ok(Ok(None)) if body.is_empty() => return Ok(first.unwrap_or_default()),
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(chunk))) => {
                let had = first.as_ref().map_or(0, Bytes::len) + body.len();
                if had + chunk.len() > limit {
                    let error = ApiError::BadGateway(format!(
                        "the backend's answer is larger than {limit} bytes"
                    ));
                    return Err((Status::UpstreamError, error));
                }
                match first.take() {
                    None if body.is_empty() => first = Some(chunk),
                    earlier => {
                        body.extend_from_slice(&earlier.unwrap_or_default());
                        body.extend_from_slice(&chunk);
                    }
                }
            }
        }
    }
}

/// Maps a backend's HTTP error to what the client sees. Errors that are the client's own
/// (400, 413, 429) keep their status; a backend rejecting tollgate's credentials or failing
/// is the gateway's problem (502/504). The backend's message and code are kept.
pub async fn upstream_error(upstream: &Upstream, response: UpstreamResponse) -> ApiError {
    let backend_status = response.status();
    // When to come back, as the backend said: the client is told the same.
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let body = read_body(response, 64 << 10, upstream.idle_timeout)
        .await
        .unwrap_or_default();
    let parsed = serde_json::from_slice::<Map<String, Value>>(&body).ok();
    let mapped = (parsed.as_ref()).and_then(|v| upstream.wire().error(&Object::of(v)));
    let status = match backend_status.as_u16() {
        400 | 422 => StatusCode::BAD_REQUEST,
        413 => StatusCode::PAYLOAD_TOO_LARGE,
        429 => StatusCode::TOO_MANY_REQUESTS,
        408 | 504 => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let body = mapped.unwrap_or_else(|| {
        let message = format!(
            "the backend for {}/{} answered HTTP {}",
            upstream.model,
            upstream.chip,
            backend_status.as_u16()
        );
        openai_error(
            &message,
            "upstream_error",
            Value::from(backend_status.as_u16()),
            None,
        )
    });
    ApiError::Upstream {
        status,
        body,
        retry_after,
    }
}
