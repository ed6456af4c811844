//! Accounts (operators only): every account with its billing and money, opening one
//! (prepaid, or postpaid with an optional credit limit; a display name in any script; a
//! time zone), and crediting a prepaid account's top-up, once per form shown.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::{operators_only, render_form};
use crate::console::frame::{Frame, count, money, time};
use crate::console::web::{Failure, Posted, Signed};
use crate::domain::accounts;
use crate::domain::audit_log::{self, Change};
use crate::error::Error;
use crate::state::AppState;
use crate::store::accounts::BillingMode;

struct AccountLine {
    id: i64,
    name: String,
    display_name: String,
    mode: &'static str,
    credit_limit: String,
    zone: String,
    balance: String,
    prepaid: bool,
    /// A fresh idempotency key for this account's top-up form.
    topup_key: String,
}

#[derive(Template)]
#[template(path = "accounts.html")]
struct AccountsPage {
    frame: Frame,
    accounts: Vec<AccountLine>,
    error: Option<String>,
}

fn fresh_key() -> String {
    format!("console-{}", uuid::Uuid::now_v7())
}

async fn page(
    state: &AppState,
    signed: &Signed,
    error: Option<String>,
) -> Result<Response, Failure> {
    operators_only(signed)?;
    let t = signed.prefs.t();
    let db = state.usage_db().await?;
    let mut lines = Vec::new();
    for account in crate::domain::accounts::list(db).await? {
        let view = accounts::view(db, state.spending(), account).await?;
        let a = &view.account;
        lines.push(AccountLine {
            id: a.id,
            name: a.name.clone(),
            display_name: a.display_name.clone(),
            mode: match a.billing_mode {
                BillingMode::Prepaid => "account.prepaid",
                BillingMode::Postpaid => "account.postpaid",
            },
            credit_limit: match (a.billing_mode, a.credit_limit) {
                (BillingMode::Postpaid, Some(limit)) => money(limit),
                (BillingMode::Postpaid, None) => t.get("account.no_limit").to_owned(),
                (BillingMode::Prepaid, _) => "—".into(),
            },
            zone: a
                .time_zone
                .clone()
                .unwrap_or_else(|| state.config().billing.zone().name().to_owned()),
            balance: money(view.balance),
            prepaid: a.billing_mode == BillingMode::Prepaid,
            topup_key: fresh_key(),
        });
    }
    let page = AccountsPage {
        frame: Frame::signed(signed, "nav.accounts"),
        accounts: lines,
        error,
    };
    render_form(&page, &page.error)
}

pub async fn list(State(state): State<AppState>, signed: Signed) -> Result<Response, Failure> {
    page(&state, &signed, None).await
}

#[derive(Deserialize)]
pub struct OpenForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    credit_limit: String,
    #[serde(default)]
    time_zone: String,
}

/// The billing form field: `prepaid`, else postpaid.
fn billing_mode(text: &str) -> BillingMode {
    if text == "prepaid" {
        BillingMode::Prepaid
    } else {
        BillingMode::Postpaid
    }
}

fn amount(text: &str, field: &'static str) -> Result<Option<Decimal>, Error> {
    match text.trim() {
        "" => Ok(None),
        text => crate::billing::money::parse_plain(text)
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("{field} must be an amount like 100.00"), field)),
    }
}

pub async fn open(
    State(state): State<AppState>,
    Posted { signed, form }: Posted<OpenForm>,
) -> Result<Response, Failure> {
    operators_only(&signed)?;
    let db = state.db();
    let opened = async {
        let mode = billing_mode(&form.mode);
        let limit = amount(&form.credit_limit, "credit_limit")?;
        // Checked before the account exists, so a bad zone opens nothing.
        accounts::check_profile(&form.display_name, &form.time_zone)?;
        let account = accounts::open(db, form.name.trim(), mode, limit).await?;
        accounts::set_profile(db, account.id, &form.display_name, &form.time_zone).await
    }
    .await;
    match opened {
        Ok(account) => {
            audit_log::record(db, &signed.actor(), accounts::opened(&account)).await?;
            let welcome = state.config().billing.welcome_grant.as_ref();
            let spending = Some(state.spending());
            let granted = crate::domain::grants::welcome(db, spending, account.id, welcome).await?;
            if let Some(grant) = granted {
                let issued = crate::domain::grants::issued(&grant);
                audit_log::record(db, &signed.actor(), issued).await?;
            }
            Ok(Redirect::to("/console/accounts").into_response())
        }
        Err(e @ (Error::InvalidRequest { .. } | Error::Conflict(_))) => {
            page(&state, &signed, Some(e.to_string())).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct TopUpForm {
    #[serde(default)]
    account_id: i64,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    note: String,
}

pub async fn top_up(
    State(state): State<AppState>,
    Posted { signed, form }: Posted<TopUpForm>,
) -> Result<Response, Failure> {
    operators_only(&signed)?;
    let db = state.db();
    let account = accounts::get(db, form.account_id).await?;
    let credited = async {
        let amount = amount(&form.amount, "amount")?
            .ok_or_else(|| Error::invalid("amount is required", "amount"))?;
        let key = form.idempotency_key.trim();
        accounts::top_up(db, account.id, amount, key, form.note.trim()).await
    }
    .await;
    match credited {
        Ok((topup, created)) => {
            if created {
                state.spending().credit(account.id, topup.id, topup.amount);
                audit_log::record(db, &signed.actor(), accounts::credited(&topup)).await?;
            }
            Ok(Redirect::to("/console/accounts").into_response())
        }
        Err(e @ (Error::InvalidRequest { .. } | Error::Conflict(_))) => {
            page(&state, &signed, Some(e.to_string())).await
        }
        Err(e) => Err(e.into()),
    }
}

/// A credit grant as the account's page lists it.
struct GrantLine {
    id: i64,
    kind: String,
    /// "50.00 CNY" or "1,000,000 tokens of qwen-plus".
    granted: String,
    left: String,
    priority: i32,
    expires: String,
    state: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    frame: Frame,
    grants: Vec<GrantLine>,
    id: i64,
    name: String,
    display_name: String,
    prepaid: bool,
    credit_limit: String,
    time_zone: String,
    error: Option<String>,
}

async fn account_page(
    state: &AppState,
    signed: &Signed,
    account: &crate::store::accounts::Account,
    error: Option<String>,
) -> Result<Response, Failure> {
    let zone = accounts::zone_of(account, state.config().billing.zone());
    let grants = crate::domain::grants::of_account(state.db(), account.id).await?;
    let grants = (grants.into_iter())
        .map(|g| {
            let (granted, left) = match (&g.model, g.tokens, g.remaining_tokens) {
                (Some(model), Some(all), Some(left)) => {
                    (format!("{} tokens · {model}", count(all)), count(left))
                }
                _ => (money(g.amount), money(g.remaining)),
            };
            GrantLine {
                id: g.id,
                kind: g.kind,
                granted,
                left,
                priority: g.priority,
                expires: g.expires_at.map_or_else(|| "—".into(), |e| time(e, zone)),
                state: g.state,
            }
        })
        .collect();
    let page = AccountPage {
        frame: Frame::signed(signed, "nav.accounts"),
        grants,
        id: account.id,
        name: account.name.clone(),
        display_name: account.display_name.clone(),
        prepaid: account.billing_mode == BillingMode::Prepaid,
        credit_limit: account
            .credit_limit
            .map(|l| l.normalize().to_string())
            .unwrap_or_default(),
        time_zone: account.time_zone.clone().unwrap_or_default(),
        error,
    };
    render_form(&page, &page.error)
}

pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Result<Response, Failure> {
    operators_only(&signed)?;
    let account = accounts::get(state.db(), id).await?;
    account_page(&state, &signed, &account, None).await
}

#[derive(Deserialize)]
pub struct EditForm {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    credit_limit: String,
    #[serde(default)]
    time_zone: String,
}

pub async fn edit(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<i64>,
    Posted { signed, form }: Posted<EditForm>,
) -> Result<Response, Failure> {
    operators_only(&signed)?;
    let db = state.db();
    let before = accounts::get(db, id).await?;
    let edited = async {
        let mode = billing_mode(&form.mode);
        let limit = amount(&form.credit_limit, "credit_limit")?;
        accounts::check_credit(limit)?;
        accounts::set_profile(db, id, &form.display_name, &form.time_zone).await?;
        accounts::set_billing(db, id, Some(mode), Some(limit)).await
    }
    .await;
    match edited {
        Ok(after) => {
            state.spending().set_allowance(id, after.allowance());
            audit_log::record(
                db,
                &signed.actor(),
                Change::updated(
                    "account.update",
                    format!("account:{id}"),
                    Some(id),
                    &before,
                    &after,
                ),
            )
            .await?;
            Ok(Redirect::to("/console/accounts").into_response())
        }
        Err(e @ Error::InvalidRequest { .. }) => {
            account_page(&state, &signed, &before, Some(e.to_string())).await
        }
        Err(e) => Err(e.into()),
    }
}
