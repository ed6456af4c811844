//! `GET /v1/usage` (and `/maas/v1/usage`): a key's own limits, what is left of them, and
//! its usage in the current billing month, priced exactly.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use crate::auth::Caller;
use crate::billing::invoice;
use crate::billing::period::Month;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;

/// Limited per key (`limits.usage_rpm`): each read makes the ledger import first.
pub async fn usage(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    state.limits().admit_usage_read(&caller)?;
    let zone = state.config().billing.zone();
    let (start, end) = Month::containing(Utc::now(), zone).bounds(zone);
    let scope = store::usage::Scope::Key(caller.key_id);
    let totals = store::usage::totals(
        state.usage_db().await?,
        scope,
        store::to_ms(start),
        store::to_ms(end),
        false,
    )
    .await?;
    let cost = invoice::cost_of_sums(&totals, &state.prices())?;
    let sum = |f: fn(&crate::billing::Totals) -> i64| {
        totals.iter().map(f).fold(0i64, i64::saturating_add)
    };
    let (requests, prompt) = (sum(|t| t.requests), sum(|t| t.prompt_tokens));
    let (cached, completion) = (sum(|t| t.cached_tokens), sum(|t| t.completion_tokens));
    let (rq, tq) = state.limits().peek(&caller);
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
        "period": {"start": start, "end": end, "requests": requests, "prompt_tokens": prompt,
                   "cached_tokens": cached, "completion_tokens": completion,
                   "cost": cost.to_string(), "currency": "CNY", "timezone": zone.name()},
    }))
    .into_response();
    crate::limits::put_headers(response.headers_mut(), &rq, tq.as_ref());
    Ok(response)
}
