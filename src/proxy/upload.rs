//! An upload route (`Does::Upload`; ComfyUI's `upload/image`): a file for a task's input,
//! sent to the dialect's `upload_path` with the operator's credential, so metered like any
//! request. It counts against the key's rpm, needs a key allowed a model of that dialect
//! (the first such backend it may run takes the file), is checked as multipart
//! (`multipart`) within
//! `server.max_upload_bytes`, is held against a spending limit, and gets one usage record:
//! one upload, priced `per_upload` (and `per_request`) by the workflow's price in force,
//! when the backend took it; nothing when it did not.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;

use super::multipart;
use super::request::ClientRequest;
use super::settle::{Exchange, Outcome, Served, finish};
use super::tasks::routes::{count_against_rpm, relay};
use super::tasks::send;
use crate::auth::Caller;
use crate::billing::record::Status;
use crate::billing::{TokenCounts, Units, cost::worst_cost_of};
use crate::dialect::Wire;
use crate::dialect::observe::Observed;
use crate::limits::Admission;
use crate::server::ApiError;
use crate::state::AppState;
use crate::upstream::Upstream;

/// One upload: what it bills.
const ONE: Units = Units {
    images: 0,
    tasks: 0,
    compute_ms: 0,
    uploads: 1,
};

pub async fn upload(
    wire: &'static dyn Wire,
    state: AppState,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let (upstream, path) = takes_uploads(wire, &state, &caller)?;
    count_against_rpm(&state, &caller).await?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .ok_or_else(|| ApiError::invalid("a multipart body is expected", "source_file"))?;
    let boundary = content_type
        .to_str()
        .map_err(|_| ApiError::invalid("the content type is not text", "source_file"))
        .and_then(multipart::boundary)?
        .to_owned();
    let server = &state.config().server;
    let limit = server.max_upload_bytes.min(server.max_request_bytes);
    let body = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    multipart::check(&body, &boundary)?;

    let (started, started_at) = (Instant::now(), Utc::now());
    let buyer = upstream.buyer(&caller.key.account);
    let price = state
        .prices()
        .for_buyer(&upstream.model, &upstream.chip, buyer, started_at)
        .ok_or_else(|| {
            ApiError::Unavailable(format!("{} has no price in force", upstream.model))
        })?;
    let request_id = Exchange::new_id(started_at);
    let hold = hold(&state, &caller, &request_id, price.first()).await?;
    let ex = Exchange {
        request_id,
        route: "upload",
        caller,
        request: ClientRequest::parse(wire, upstream.endpoint, Bytes::from_static(b"{}"))?,
        candidates: vec![upstream.clone()],
        started,
        started_at,
        admission: Admission::nothing(),
        hold,
        prompt_estimate: Some(0),
    };
    let served = Served::new(upstream, price);
    let forward = axum::http::Request::post(served.upstream.url_of(path)?)
        .header(header::HOST, served.upstream.host.clone())
        .header(header::CONTENT_TYPE, content_type);
    let answered = match send(&served.upstream, forward, body).await {
        Ok(response) => relay(&state, &served.upstream, response).await,
        Err(e) => Err(e),
    };
    let (outcome, response) = match answered {
        Ok(response) => {
            let observed = Observed {
                // An upload's answer has no tokens.
                usage: Some(TokenCounts::default()),
                units: ONE,
                ..Observed::default()
            };
            (Outcome::completed(observed), response)
        }
        Err(error) => (
            Outcome::failed(Status::UpstreamError, &error),
            error.into_response(),
        ),
    };
    let mut response = finish(&state, &ex, &served, outcome, response).await;
    if let Ok(id) = HeaderValue::from_str(&ex.request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    Ok(response)
}

/// The first backend of `wire`'s dialect (serving what it serves by default: ComfyUI's
/// workflows) whose model the key may call, and its upload path: 403 if it may call none,
/// 404 if none is configured.
fn takes_uploads(
    wire: &'static dyn Wire,
    state: &AppState,
    caller: &Caller,
) -> Result<(Arc<Upstream>, &'static str), ApiError> {
    let takes = |u: &&Arc<Upstream>| u.endpoint == wire.serves() && u.wire().name() == wire.name();
    let upstreams = state.upstreams();
    let first = upstreams
        .all()
        .filter(takes)
        .find(|u| caller.may_call(&u.model));
    match (first, wire.upload_path()) {
        (Some(upstream), Some(path)) => Ok((upstream.clone(), path)),
        (None, Some(_)) if upstreams.all().any(|u| takes(&u)) => Err(ApiError::Forbidden(format!(
            "this API key is not allowed to call any {} model, so it may not upload",
            wire.name()
        ))),
        _ => Err(ApiError::NotFound(format!(
            "no {} backend that takes uploads is configured",
            wire.name()
        ))),
    }
}

/// Holds what one upload costs against the account's spending limit, if it has one and
/// uploads cost anything.
async fn hold(
    state: &AppState,
    caller: &Caller,
    request_id: &str,
    price: &crate::billing::PriceVersion,
) -> Result<Option<crate::limits::spending::Hold>, ApiError> {
    let worst = worst_cost_of(price, TokenCounts::default(), ONE)?;
    let spending = state.spending();
    if worst.is_zero() || !spending.limited(state.db(), caller.account_id).await? {
        return Ok(None);
    }
    let none = TokenCounts::default();
    Ok(spending
        .hold(state.db(), request_id, caller.account_id, worst, none, None)
        .await?)
}
