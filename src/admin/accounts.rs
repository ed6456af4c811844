//! `/admin/v1/accounts`: open, list and show accounts, set how they are billed, top them
//! up, issue credit and debit notes and credit grants (idempotently).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, JsonBody};
use crate::billing::prices::Money;
use crate::domain::accounts::{self, AccountView};
use crate::domain::audit_log::Change;
use crate::domain::grants;
use crate::server::ApiError;
use crate::state::AppState;
use crate::store;
use crate::store::accounts::{Account, BillingMode, Topup};
use crate::store::grants::Grant;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/accounts", get(list).post(create))
        .route("/admin/v1/accounts/{id}", get(show).patch(update))
        .route("/admin/v1/accounts/{id}/topups", post(top_up))
        .route("/admin/v1/accounts/{id}/notes", post(issue_note))
        .route(
            "/admin/v1/accounts/{id}/grants",
            get(list_grants).post(issue_grant),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
    billing_mode: Option<BillingMode>,
    credit_limit: Option<Money>,
}

async fn view(state: &AppState, account: Account) -> Result<AccountView, ApiError> {
    let db = state.usage_db().await?;
    Ok(accounts::view(db, state.spending(), account).await?)
}

async fn create(
    State(state): State<AppState>,
    admin: Admin,
    JsonBody(new): JsonBody<NewAccount>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let mode = new.billing_mode.unwrap_or(BillingMode::Postpaid);
    let credit_limit = new.credit_limit.map(|m| m.0);
    let account = accounts::open(state.db(), &new.name, mode, credit_limit).await?;
    admin.record(&state, accounts::opened(&account)).await?;
    let welcome = state.config().billing.welcome_grant.as_ref();
    let spending = Some(state.spending());
    if let Some(grant) = grants::welcome(state.db(), spending, account.id, welcome).await? {
        admin.record(&state, grants::issued(&grant)).await?;
    }
    Ok((StatusCode::CREATED, Json(view(&state, account).await?)))
}

async fn list(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let mut data = Vec::new();
    for account in store::accounts::list(state.db()).await? {
        data.push(view(&state, account).await?);
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn show(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> Result<Json<AccountView>, ApiError> {
    let account = accounts::get(state.db(), id).await?;
    Ok(Json(view(&state, account).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BillingPatch {
    billing_mode: Option<BillingMode>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    credit_limit: Option<Option<Money>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Money>>, D::Error> {
    Option::<Money>::deserialize(d).map(Some)
}

async fn update(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
    JsonBody(patch): JsonBody<BillingPatch>,
) -> Result<Json<AccountView>, ApiError> {
    let credit = patch.credit_limit.map(|c| c.map(|m| m.0));
    let before = accounts::get(state.db(), id).await?;
    let account = accounts::set_billing(state.db(), id, patch.billing_mode, credit).await?;
    let change = Change::updated(
        "account.billing",
        format!("account:{id}"),
        Some(id),
        &before,
        &account,
    );
    admin.record(&state, change).await?;
    state.spending().set_allowance(id, account.allowance());
    Ok(Json(view(&state, account).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopup {
    amount: Money,
    #[serde(default)]
    note: String,
}

/// Credits the account once per `Idempotency-Key`: a retry returns the first top-up (200)
/// instead of crediting again; the same key with another amount is refused (409).
async fn top_up(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewTopup>,
) -> Result<(StatusCode, Json<Topup>), ApiError> {
    let key = idempotency_key(&headers)?;
    accounts::get(state.db(), id).await?;
    let (topup, created) = accounts::top_up(state.db(), id, new.amount.0, key, &new.note).await?;
    if !created {
        return Ok((StatusCode::OK, Json(topup)));
    }
    state.spending().credit(id, topup.id, topup.amount);
    admin.record(&state, accounts::credited(&topup)).await?;
    Ok((StatusCode::CREATED, Json(topup)))
}

fn idempotency_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| {
            ApiError::invalid(
                "an Idempotency-Key header (1-200 characters) is required",
                "Idempotency-Key",
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    /// `credit` or `debit`.
    kind: String,
    amount: Money,
    /// The month it corrects, `2026-11`.
    period: String,
    reason: String,
}

/// Issues a credit or debit note once per `Idempotency-Key` (a retry returns the first,
/// 200): counted in the balance at once, listed on the invoice of this month.
async fn issue_note(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewNote>,
) -> Result<(StatusCode, Json<Topup>), ApiError> {
    let key = idempotency_key(&headers)?;
    accounts::get(state.db(), id).await?;
    let actor = admin.actor();
    let asked = accounts::NoteRequest {
        note: accounts::Note::parse(&new.kind)?,
        amount: new.amount.0,
        period: &new.period,
        reason: &new.reason,
        actor: &actor.name,
        idempotency_key: key,
    };
    let zone = state.config().billing.zone();
    let (note, created) = accounts::issue_note(state.db(), id, zone, &asked).await?;
    if !created {
        return Ok((StatusCode::OK, Json(note)));
    }
    state.spending().credit(id, note.id, note.amount);
    admin.record(&state, accounts::noted(&note)).await?;
    Ok((StatusCode::CREATED, Json(note)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGrant {
    /// CNY; or `tokens` of a `model` instead.
    amount: Option<Money>,
    tokens: Option<u64>,
    model: Option<String>,
    /// `paid` or `promotional` (the default).
    kind: Option<String>,
    /// 0 (burned first) to 100; 50 by default.
    priority: Option<i32>,
    effective_at: Option<chrono::DateTime<chrono::Utc>>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    reason: String,
}

/// Issues a credit grant once per `Idempotency-Key` (a retry returns the first, 200):
/// burned by the account's usage before its balance, from its effective time to its expiry.
async fn issue_grant(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewGrant>,
) -> Result<(StatusCode, Json<Grant>), ApiError> {
    let key = idempotency_key(&headers)?;
    accounts::get(state.db(), id).await?;
    let actor = admin.actor();
    let asked = grants::GrantRequest {
        amount: new.amount.map(|m| m.0),
        tokens: new.tokens,
        model: new.model.as_deref(),
        kind: new.kind.as_deref().unwrap_or("promotional"),
        priority: new.priority,
        effective_at: new.effective_at,
        expires_at: new.expires_at,
        reason: &new.reason,
        actor: &actor.name,
        idempotency_key: key,
    };
    let spending = Some(state.spending());
    let (grant, created) = grants::issue(state.db(), spending, id, &asked).await?;
    if !created {
        return Ok((StatusCode::OK, Json(grant)));
    }
    state.grant_issued();
    admin.record(&state, grants::issued(&grant)).await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

/// The account's grants, newest first, with what each has left.
async fn list_grants(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    accounts::get(state.db(), id).await?;
    let data = grants::of_account(state.db(), id).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}
