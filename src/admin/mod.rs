//! `/admin/v1`: operator endpoints behind JWT (`auth::jwt`). Each module brings its own
//! router, parses, authorises, calls a `domain` service, writes each change to the audit
//! log (`Admin::record`) and renders;
//! `Admin` and `Viewer` extractors state in each handler's signature who may call it.

pub mod accounts;
pub mod audit;
pub mod invoices;
pub mod keys;
pub mod prices;
pub mod reports;
pub mod tasks;
pub mod usage;
pub mod webhooks;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

pub use crate::auth::jwt::{AdminAuth, Claims, Role};
use crate::domain::audit_log::{self, Actor, Change};
use crate::server::{ApiError, ClientAddr};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(accounts::router())
        .merge(audit::router())
        .merge(keys::router())
        .merge(invoices::router())
        .merge(prices::router())
        .merge(reports::router())
        .merge(usage::router())
        .merge(tasks::router())
        .merge(webhooks::router())
}

/// A caller with the `admin` role, and where the call came from (for the audit log).
pub struct Admin {
    pub claims: Claims,
    address: String,
}

impl Admin {
    /// Who the audit log names for a change this caller makes.
    pub fn actor(&self) -> Actor {
        Actor::admin(&self.claims.sub, &self.address)
    }

    /// Writes `change` to the audit log as this caller's.
    pub async fn record<B: serde::Serialize, A: serde::Serialize>(
        &self,
        state: &AppState,
        change: Change<'_, B, A>,
    ) -> Result<(), ApiError> {
        Ok(audit_log::record(state.db(), &self.actor(), change).await?)
    }
}

/// A caller with any role (`viewer` or `admin`): read-only endpoints.
pub struct Viewer(pub Claims);

fn claims(parts: &Parts, state: &AppState) -> Result<Claims, ApiError> {
    let auth = state.admin_auth().ok_or_else(|| {
        ApiError::Unavailable(
            "the admin API is off: configure admin.jwt_secret_env or admin.jwt_public_key_file"
                .into(),
        )
    })?;
    let token = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::AdminUnauthorized(
                "missing admin token: send 'Authorization: Bearer <JWT>'".into(),
            )
        })?;
    Ok(auth.verify(token.trim())?)
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = claims(parts, state)?;
        if claims.role != Role::Admin {
            return Err(ApiError::Forbidden("this needs the admin role".into()));
        }
        let address = parts
            .extensions
            .get::<ClientAddr>()
            .map(|a| a.0.ip().to_string())
            .unwrap_or_default();
        Ok(Admin { claims, address })
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        claims(parts, state).map(Viewer)
    }
}

/// Query parameters whose errors are OpenAI-shaped like every other error.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::InvalidRequest {
                message: e.body_text(),
                param: None,
            })
    }
}

/// A JSON body whose errors are OpenAI-shaped like every other error.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(1 << 20))?;
        let bytes = if bytes.is_empty() {
            &b"{}"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidJson(e.to_string()))
    }
}
