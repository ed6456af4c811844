//! `GET /v1/usage` (and `/maas/v1/usage`): a key's own limits, what is left of them, and
//! its usage in the current billing month, priced exactly.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::Caller;
use crate::domain::usage;
use crate::server::ApiError;
use crate::state::AppState;

/// Limited per key (`limits.usage_rpm`): each read makes the ledger import first.
pub async fn usage_of_key(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    state.limits().admit_usage_read(&caller)?;
    let zone = state.config().billing.zone();
    let month = usage::month_to_date(
        state.usage_db().await?,
        &state.prices(),
        zone,
        caller.key.lineage_id,
    )
    .await?;
    let (rq, tq) = state.limits().peek(&caller).await?;
    let plan = state.limits().peek_plan(&caller).await?;
    let key = &caller.key;
    let mut response = Json(json!({
        "object": "usage",
        "key": {"id": key.id, "prefix": key.prefix, "name": key.name, "expires_at": key.expires_at,
                "allowed_models": key.limits.allowed_models},
        "limits": {
            "requests_per_minute": rq.limit,
            "remaining_requests": rq.remaining,
            "tokens_per_minute": tq.map(|t| t.limit),
            "remaining_tokens": tq.map(|t| t.remaining),
        },
        "plan": plan,
        "period": {"start": month.start, "end": month.end, "requests": month.requests,
                   "prompt_tokens": month.prompt_tokens, "cached_tokens": month.cached_tokens,
                   "cache_write_tokens": month.cache_write_tokens,
                   "completion_tokens": month.completion_tokens,
                   "cost": month.cost.to_string(), "currency": "CNY", "timezone": zone.name()},
    }))
    .into_response();
    crate::limits::put_headers(response.headers_mut(), &rq, tq.as_ref());
    Ok(response)
}
