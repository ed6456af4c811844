//! The console's pages, one module per section. Each handler checks who may see what it
//! shows (another account's id in a URL is 404, as if it did not exist), calls a `domain`
//! service, and renders a template.

pub mod accounts;
pub mod audit;
pub mod catalog;
pub mod invoices;
pub mod keys;
pub mod me;
pub mod overview;
pub mod people;
pub mod sign_in;
pub mod usage;

use askama::Template;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use super::web::{Failure, Signed};

use crate::domain;
use crate::error::Error;
use crate::state::AppState;
use crate::store::accounts::Account;

/// The page `template` renders, never cached (it may hold figures or a secret).
pub fn render(template: &impl Template) -> Result<Response, Failure> {
    let html = template
        .render()
        .map_err(|e| Failure::from(Error::Internal(e.into())))?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response())
}

/// A form's page shown again with why it was refused (`error`): answered 400 then, so
/// that the refusal is not a success to whatever reads the status.
pub fn render_form(template: &impl Template, error: &Option<String>) -> Result<Response, Failure> {
    let mut response = render(template)?;
    if error.is_some() {
        *response.status_mut() = axum::http::StatusCode::BAD_REQUEST;
    }
    Ok(response)
}

/// The account a page shows: a person's own (asking for another is 404); for an operator,
/// the one asked for, or `None` for all.
pub async fn visible_account(
    state: &AppState,
    signed: &Signed,
    asked: Option<i64>,
) -> Result<Option<Account>, Failure> {
    let person = &signed.session.person;
    let id = match (person.account_id, asked) {
        (Some(own), Some(asked)) if asked != own => return Err(Failure::not_found()),
        (Some(own), _) => own,
        (None, Some(asked)) => asked,
        (None, None) => return Ok(None),
    };
    Ok(Some(domain::accounts::get(state.db(), id).await?))
}

/// Only operators may see this page (others get 404).
pub fn operators_only(signed: &Signed) -> Result<(), Failure> {
    if signed.session.person.role.is_operator() {
        Ok(())
    } else {
        Err(Failure::not_found())
    }
}

/// Each account's time zone (the billing time zone where it names none), for pages that
/// list several accounts' things: every time is shown in its account's zone.
pub struct Zones {
    accounts: Vec<Account>,
    billing: chrono_tz::Tz,
}

impl Zones {
    pub async fn load(state: &AppState) -> Result<Zones, Failure> {
        Ok(Zones {
            accounts: domain::accounts::list(state.db()).await?,
            billing: state.config().billing.zone(),
        })
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.iter()
    }

    pub fn account(&self, id: i64) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }

    pub fn of(&self, account_id: i64) -> chrono_tz::Tz {
        self.account(account_id)
            .map_or(self.billing, |a| domain::accounts::zone_of(a, self.billing))
    }
}
