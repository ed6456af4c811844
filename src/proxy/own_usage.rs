//! `GET /v1/usage` (and `/maas/v1/usage`): a key's own limits, what is left of them, and
//! its usage in the current calendar month (UTC), priced exactly.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::Caller;
use crate::billing::{TokenCounts, cost_of_totals};
use crate::error::ApiError;
use crate::store;

/// The calendar month containing `now`, as `[start, end)`.
pub fn month_of(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    (start, Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap())
}

pub async fn usage(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let (start, end) = month_of(Utc::now());
    let totals = store::usage::key_totals(
        state.db(),
        caller.key_id,
        store::to_ms(start),
        store::to_ms(end),
    )
    .await?;
    let (mut requests, mut prompt, mut cached, mut completion, mut cost) =
        (0, 0, 0, 0, Decimal::ZERO);
    for t in &totals {
        let price = state
            .prices()
            .version(t.price_version_id)
            .ok_or_else(|| anyhow::anyhow!("price version {} is not loaded", t.price_version_id))?;
        let tokens = TokenCounts {
            prompt: t.prompt_tokens as u64,
            completion: t.completion_tokens as u64,
            cached: t.cached_tokens as u64,
        };
        cost += cost_of_totals(price, tokens, t.ok_requests as u64);
        requests += t.requests;
        prompt += t.prompt_tokens;
        cached += t.cached_tokens;
        completion += t.completion_tokens;
    }
    let (rq, tq) = state.limits().peek(&caller);
    let key = &caller.key;
    Ok(Json(json!({
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
                   "cost": cost.normalize().to_string(), "currency": "CNY"},
    })))
}
