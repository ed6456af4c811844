//! Operations endpoints: `/metrics` (Prometheus text, optionally behind a bearer token),
//! `/healthz` (the process is up) and `/readyz` (the database answers, the ledger writer
//! runs and admission's spending lock is free). Also counts client requests refused before
//! they reached a backend, and gives axum's plain-text rejections the OpenAI shape.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::server::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(expected) = state.metrics_token() {
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
    metrics
        .ledger_spool_age
        .set(state.ledger().spool_age().as_secs_f64());
    let limits = state.limits();
    metrics.limits_fallback.set(i64::from(limits.in_fallback()));
    metrics.live_replicas.set(i64::from(limits.live_replicas()));
    // Read from the ledger: a scrape while it is down keeps the last figures.
    if let Ok(holds) = state.spending().pending().await {
        metrics.holds_pending.set(holds as i64);
    }
    if let Ok(tasks) = crate::store::tasks::count_pending(state.db()).await {
        metrics.tasks_pending.set(tasks);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response())
}

/// Ready when the ledger writer takes records and spending answers, and the database
/// answers. A PostgreSQL ledger shared by replicas is the exception: while it is down a
/// replica stays ready but `degraded`, its records spooled in its journal (`spooled`, the
/// oldest `spool_age_seconds` old), so a database outage does not take every replica out
/// of the load balancer at once. Answered from state kept current in the background
/// (`store::health`), never by waiting on the database: a balancer's short probe timeout
/// sees the truth during an outage too.
async fn ready(State(state): State<AppState>) -> Response {
    let database = state.health().is_up();
    let ledger = state.ledger().is_running();
    let spending = state.spending().responsive();
    let spools = matches!(state.db(), crate::store::Db::Postgres(_));
    let status = if ledger && spending && (database || spools) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "database": database,
        "ledger_writer": ledger,
        "spending": spending,
        "degraded": !database,
        "spooled": state.ledger().queue_depth(),
        "spool_age_seconds": state.ledger().spool_age().as_secs_f64(),
    });
    (status, axum::Json(body)).into_response()
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

/// Gives every error response the OpenAI shape: those axum answers by itself (an
/// extractor's rejection in plain text) keep their status and get a JSON body with their
/// text as the message.
pub async fn shape_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" if status == StatusCode::METHOD_NOT_ALLOWED => "this route does not take this method",
        "" => status.canonical_reason().unwrap_or("error"),
        text => text,
    };
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_");
    let body = crate::error::openai_error(message, kind, code.into(), None).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}
