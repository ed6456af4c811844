//! The client routes of DESIGN.md. Each handler authenticates, reads the body within the
//! limit, picks the backends, and hands the request to an exchange.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use chrono::Utc;
use serde_json::{Value, json};

use super::exchange;
use super::extract::{ClientBody, ClientPath};
use super::own_usage;
use super::request::ClientRequest;
use super::settle::Exchange;
use super::tasks;
use super::tasks::routes as task_routes;
use super::upload;
use crate::auth::Caller;
use crate::billing::cost::worst_cost_of;
use crate::dialect::{self, Call, Does, To, Wire};
use crate::limits;
use crate::limits::spending::Hold;
use crate::server::ApiError;
use crate::state::AppState;
use crate::upstream::{Serves, Upstream};

pub fn router() -> Router<AppState> {
    let mut router = Router::new()
        .route("/maas/{model}/{chip}/models", get(models))
        .route("/maas/v1/models", get(models))
        .route("/v1/models", get(models))
        .route("/maas/v1/usage", get(own_usage::usage_of_key))
        .route("/v1/usage", get(own_usage::usage_of_key));
    for &wire in dialect::all() {
        for route in wire.routes() {
            let mut method = match route.does {
                Does::Send(call, to) => send(wire, call, to),
                Does::Poll if route.path.ends_with("{id}") => get(
                    |state: State<AppState>, caller: Caller, ClientPath(id): ClientPath<String>| async move {
                        task_routes::poll_one(&state, &caller, &id).await
                    },
                ),
                Does::Poll => post(
                    move |state: State<AppState>, caller: Caller, ClientBody(raw): ClientBody| async move {
                        task_routes::poll_named(wire, &state, &caller, &raw).await
                    },
                ),
                Does::Cancel => post(
                    move |state: State<AppState>, caller: Caller, ClientBody(raw): ClientBody| async move {
                        task_routes::cancel(wire, &state, &caller, &raw).await
                    },
                ),
                Does::Upload => post(
                    move |State(state): State<AppState>, caller: Caller, request: Request| async move {
                        upload::upload(wire, state, caller, request).await
                    },
                ),
            };
            if let Some(shape) = wire.client_error() {
                method = method.layer(axum::middleware::map_response(move |r: Response| {
                    errors_shaped(r, shape)
                }));
            }
            router = router.route(route.path, method);
        }
    }
    router
}

/// Which backends a route allows.
enum Target {
    /// Exactly this model on this chip.
    Pair(String, String),
    /// The model named in the body, on the chips its routing policy orders.
    Policy,
    /// A dedicated deployment.
    Deployment(String),
}

impl Target {
    /// The route's kind, without its names (the metric label).
    fn route_label(&self, call: Call) -> &'static str {
        match (self, call.records) {
            (Target::Pair(..), "chat") => "chat_mxn",
            (Target::Policy, "chat") => "chat_model",
            (Target::Deployment(_), "chat") => "chat_deployment",
            (_, records) => records,
        }
    }
}

/// A route's request as it arrived: its dialect, what it asks for, and the headers.
struct Asked {
    wire: &'static dyn Wire,
    call: Call,
    target: Target,
    headers: HeaderMap,
}

/// A `Does::Send` route: `call` to the backends `to` names.
fn send(wire: &'static dyn Wire, call: Call, to: To) -> MethodRouter<AppState> {
    let asked = move |target, headers| Asked {
        wire,
        call,
        target,
        headers,
    };
    match to {
        To::Named => post(
            move |state: State<AppState>, caller: Caller, headers: HeaderMap, body: Body| async move {
                proxy(state, caller, asked(Target::Policy, headers), body).await
            },
        ),
        To::Pair => post(
            move |state: State<AppState>,
                  caller: Caller,
                  ClientPath((model, chip)): ClientPath<(String, String)>,
                  headers: HeaderMap,
                  body: Body| async move {
                proxy(
                    state,
                    caller,
                    asked(Target::Pair(model, chip), headers),
                    body,
                )
                .await
            },
        ),
        To::Deployment => post(
            move |state: State<AppState>,
                  caller: Caller,
                  ClientPath(id): ClientPath<String>,
                  headers: HeaderMap,
                  body: Body| async move {
                proxy(state, caller, asked(Target::Deployment(id), headers), body).await
            },
        ),
    }
}

/// Errors on a dialect's routes in the shape its SDKs read (`Wire::client_error`).
async fn errors_shaped(response: Response, shape: fn(&Value, Option<&str>) -> Value) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if response.status().is_success() || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return ApiError::Internal(anyhow::anyhow!("an error body could not be read"))
            .into_response();
    };
    let Ok(error) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    let shaped = shape(&error, request_id);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(shaped.to_string()))
}

async fn proxy(
    State(state): State<AppState>,
    caller: Caller,
    asked: Asked,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let limit = state.config().server.max_request_bytes;
    let Asked {
        wire,
        call,
        target,
        headers,
    } = asked;
    let mut request = ClientRequest::read(wire, call, body, limit).await?;
    if let Some(streamed) = wire.stream_asked(&headers) {
        request.stream = streamed;
    }
    for &name in wire.passed_headers() {
        for value in headers.get_all(name) {
            let name = header::HeaderName::from_static(name);
            request.passed_headers.push((name, value.clone()));
        }
    }
    let upstreams = state.upstreams();
    let route = target.route_label(call);
    // A body reaches only backends whose dialect takes its shape.
    let serves = Serves::of(wire, call.endpoint);
    let candidates = match target {
        Target::Pair(model, chip) => vec![upstreams.pair(serves, &model, &chip)?],
        Target::Policy => {
            let named = request.model()?;
            let model = match wire.names_backend_model() {
                true => upstreams.model_by_backend_name(serves, named),
                false => named,
            };
            let prices = state.prices();
            let account = &caller.key.account;
            let mut served = upstreams.candidates(serves, model, &prices, account, started_at)?;
            // A task runs on the upstreams whose dialect has such tasks.
            served.retain(|u| !call.task || u.wire().task_path(call.endpoint).is_some());
            if served.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "model '{model}' does not run as {} tasks here",
                    call.records
                )));
            }
            served
        }
        Target::Deployment(id) => {
            let upstream = upstreams.deployment(&id, &caller.key.account)?;
            if upstream.serves() != serves {
                return Err(ApiError::NotFound(format!(
                    "deployment '{id}' does not serve {} {} requests",
                    serves.shape,
                    call.endpoint.as_str()
                )));
            }
            vec![upstream]
        }
    };
    caller.check_model(&candidates[0].model)?;
    if call.task {
        tasks::can_record(&state).await?;
    }
    let reserve = state.config().limits.reserve_max_tokens;
    let admission = state
        .limits()
        .admit(&caller, || request.worst_case(reserve))
        .await?;
    let request_id = Exchange::new_id(started_at);
    let hold = match hold_worst_case(
        &state,
        &caller,
        &request,
        &candidates,
        &request_id,
        started_at,
    )
    .await
    {
        Ok(hold) => hold,
        Err(e) => {
            state.limits().settle(&caller, &admission, 0);
            return Err(e);
        }
    };
    let exchange = Exchange {
        request_id,
        route,
        caller,
        request,
        candidates,
        started,
        started_at,
        admission,
        hold,
        prompt_estimate: None,
    };
    let mut response = exchange::serve(state, exchange).await;
    let (requests, tokens) = admission.shown();
    limits::put_headers(response.headers_mut(), &requests, tokens.as_ref());
    Ok(response)
}

/// Holds the request's worst-case cost against the account's spending limit, if it has one.
async fn hold_worst_case(
    state: &AppState,
    caller: &Caller,
    request: &ClientRequest,
    candidates: &[Arc<Upstream>],
    request_id: &str,
    at: chrono::DateTime<Utc>,
) -> Result<Option<Hold>, ApiError> {
    let prices = state.prices();
    let spending = state.spending();
    if !spending.limited(state.db(), caller.account_id).await? {
        return Ok(None);
    }
    // Priced at the dearest chip it may fail over to, and the dearest tier its prompt may
    // reach: the hold covers whichever serves it.
    let tokens = request.worst_case(state.config().limits.reserve_max_tokens);
    let units = request.worst_units();
    let mut worst = None;
    for upstream in candidates {
        let buyer = upstream.buyer(&caller.key.account);
        let Some(tiers) = prices.for_buyer(&upstream.model, &upstream.chip, buyer, at) else {
            continue;
        };
        for price in tiers.reachable(tokens.prompt) {
            let cost = worst_cost_of(price, tokens, units)?;
            worst = Some(worst.map_or(cost, |w: rust_decimal::Decimal| w.max(cost)));
        }
    }
    let Some(worst) = worst else {
        return Ok(None); // not served anyway: the exchange answers 503
    };
    Ok(spending
        .hold(
            state.db(),
            request_id,
            caller.account_id,
            worst,
            tokens,
            // A task's hold lasts until the task ends, or expires.
            request
                .call
                .task
                .then(|| std::time::Duration::from_secs(state.config().limits.task_expiry_secs)),
        )
        .await?)
}

/// `GET /v1/models`: the models this key may call, with the chips that serve them, and
/// the private deployments of its account (by their ids, as they are called).
async fn models(State(state): State<AppState>, caller: Caller) -> Json<Value> {
    let upstreams = state.upstreams();
    let shared = upstreams.catalog().into_iter();
    let shared = shared
        .filter(|entry| caller.may_call(&entry.model))
        .map(|entry| {
            json!({"id": entry.model, "object": "model", "created": 0, "owned_by": "tollgate",
               "endpoint": entry.endpoint.as_str(), "chips": entry.chips,
               "apis": entry.shapes})
        });
    let account = &caller.key.account;
    let private = (upstreams.deployments_of(account).into_iter())
        .filter(|up| caller.may_call(&up.model))
        .map(|up| {
            json!({"id": up.deployment, "object": "model", "created": 0, "owned_by": account,
                   "endpoint": up.endpoint.as_str(), "model": up.model, "chips": [up.chip],
                   "deployment": true})
        });
    let data: Vec<Value> = shared.chain(private).collect();
    Json(json!({"object": "list", "data": data}))
}

/// A known route asked with a method it does not take: OpenAI-shaped too.
pub async fn method_not_allowed() -> Response {
    let body = crate::error::openai_error(
        "this route does not take this method",
        "invalid_request_error",
        "method_not_allowed".into(),
        None,
    );
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// Unknown routes get an OpenAI-shaped 404 too.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see GET /v1/models and the README for the routes".into())
}
