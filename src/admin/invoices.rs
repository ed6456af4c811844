//! `/admin/v1/invoices`: monthly invoices per account, as JSON or CSV. Drafts are computed
//! from the ledger on each fetch; a finalized invoice is stored once and served byte for
//! byte ever after.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Duration;
use serde::Deserialize;

use super::{Admin, QueryParams, Viewer};
use crate::billing::PriceBook;
use crate::billing::period::Month;
use crate::domain::accounts;
use crate::domain::audit_log::Change;
use crate::domain::invoices::{Document, Ledger, parse_id};
use crate::server::ApiError;
use crate::state::AppState;
use crate::store::accounts::Account;
use crate::store::{self, Db};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/invoices", get(find))
        .route("/admin/v1/invoices/{id}", get(show))
        .route("/admin/v1/invoices/{id}/finalize", post(finalize))
}

/// An invoice as an HTTP answer: JSON, or CSV when asked by `?format=csv` or
/// `Accept: text/csv`.
fn respond(document: &Document, csv: bool) -> Result<Response, ApiError> {
    Ok(if csv {
        (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            document.to_csv()?,
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            document.to_json()?,
        )
            .into_response()
    })
}

async fn ledger<'a>(state: &'a AppState, prices: &'a PriceBook) -> Result<Ledger<'a>, ApiError> {
    Ok(Ledger {
        db: state.usage_db().await?,
        prices,
        zone: state.config().billing.zone(),
        finalize_grace: Duration::seconds(state.config().billing.finalize_grace_secs),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FindQuery {
    account: String,
    period: String,
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatQuery {
    format: Option<String>,
}

fn wants_csv(format: Option<&str>, headers: &HeaderMap) -> Result<bool, ApiError> {
    match format {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(ApiError::invalid(
            format!("format '{other}' is not json or csv"),
            "format",
        )),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"))),
    }
}

async fn find(
    State(state): State<AppState>,
    _: Viewer,
    headers: HeaderMap,
    QueryParams(q): QueryParams<FindQuery>,
) -> Result<Response, ApiError> {
    let account = accounts::named(state.db(), &q.account).await?;
    let month = Month::parse(&q.period).map_err(|e| ApiError::invalid(e, "period"))?;
    let document = ledger(&state, &state.prices())
        .await?
        .get(&account, month)
        .await?;
    respond(&document, wants_csv(q.format.as_deref(), &headers)?)
}

async fn account_and_month(db: &Db, id: &str) -> Result<(Account, Month), ApiError> {
    let (account_id, month) = parse_id(id)?;
    let account = store::accounts::get(db, account_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("invoice '{id}' does not exist")))?;
    Ok((account, month))
}

async fn show(
    State(state): State<AppState>,
    _: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<FormatQuery>,
) -> Result<Response, ApiError> {
    let (account, month) = account_and_month(state.db(), &id).await?;
    let document = ledger(&state, &state.prices())
        .await?
        .get(&account, month)
        .await?;
    respond(&document, wants_csv(q.format.as_deref(), &headers)?)
}

async fn finalize(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (account, month) = account_and_month(state.db(), &id).await?;
    let text = ledger(&state, &state.prices())
        .await?
        .finalize(&account, month)
        .await?;
    let change = Change::event(
        "invoice.finalize",
        format!("invoice:{id}"),
        Some(account.id),
    );
    admin.record(&state, change).await?;
    respond(&Document::Final(text), false)
}
