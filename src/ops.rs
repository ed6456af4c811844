//! Operations endpoints: `/metrics` (Prometheus text, optionally behind a bearer token),
//! `/healthz` (the process is up) and `/readyz` (the database answers and the ledger writer
//! runs). Also counts client requests refused before they reached a backend.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(var) = &state.config().metrics.bearer_token_env {
        let expected = std::env::var(var).unwrap_or_default();
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if expected.is_empty() || !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(ApiError::AdminUnauthorized(
                "the metrics endpoint needs its bearer token".into(),
            ));
        }
    }
    let metrics = state.metrics();
    metrics
        .ledger_queue_depth
        .set(state.ledger().queue_depth() as i64);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response())
}

async fn ready(State(state): State<AppState>) -> Response {
    let database = sqlx::query("SELECT 1").execute(state.db()).await.is_ok();
    let ledger = state.ledger().is_running();
    let status = if database && ledger {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"database": database, "ledger_writer": ledger})),
    )
        .into_response()
}

/// Counts client-route errors that never reached a backend (they carry no `x-request-id`),
/// by reason.
pub async fn count_rejections(State(state): State<AppState>, response: Response) -> Response {
    let status = response.status();
    if status.is_client_error() && !response.headers().contains_key("x-request-id") {
        let reason = match status.as_u16() {
            401 => "unauthorized",
            402 => "spending_limit",
            403 => "forbidden",
            404 => "not_found",
            408 => "timeout",
            413 => "too_large",
            429 => "rate_limit",
            _ => "bad_request",
        };
        state.metrics().rejected.with_label_values(&[reason]).inc();
    }
    response
}
