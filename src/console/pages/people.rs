//! People: who may sign in to an account (operators: everyone). Owners add owners,
//! members and viewers to their account; operators add anyone, operators too.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Zones, render_form};
use crate::console::frame::{Frame, time};
use crate::console::web::{Failure, Posted, Signed};
use crate::domain::accounts;
use crate::domain::audit_log::{self, Change};
use crate::domain::people::{self, Role};
use crate::error::Error;
use crate::state::AppState;

struct PersonLine {
    id: i64,
    /// Whether the viewer may disable or enable this person (not oneself).
    may_change: bool,
    email: String,
    role: &'static str,
    account: String,
    created: String,
    disabled: bool,
}

#[derive(Template)]
#[template(path = "people.html")]
struct PeoplePage {
    frame: Frame,
    people: Vec<PersonLine>,
    /// Roles this person may give.
    roles: Vec<&'static str>,
    /// Accounts to choose from (operators only).
    accounts: Vec<String>,
    created: Option<String>,
    error: Option<String>,
}

async fn page(
    state: &AppState,
    signed: &Signed,
    created: Option<String>,
    error: Option<String>,
) -> Result<Response, Failure> {
    let person = &signed.session.person;
    if !person.role.manages_account() {
        return Err(Failure::not_found());
    }
    let db = state.db();
    let zones = Zones::load(state).await?;
    let name_of = |id: Option<i64>| match id {
        None => "—".to_owned(),
        Some(id) => zones.account(id).map_or(id.to_string(), |a| a.name.clone()),
    };
    let zone_of = |id: Option<i64>| id.map_or(state.config().billing.zone(), |id| zones.of(id));
    let list = people::list(db, person.account_id).await?;
    let roles = if person.role.is_operator() {
        Role::ALL.to_vec()
    } else {
        vec![Role::Owner, Role::Member, Role::Viewer]
    };
    let page = PeoplePage {
        frame: Frame::signed(signed, "nav.people"),
        people: list
            .iter()
            .map(|p| PersonLine {
                id: p.id,
                may_change: p.id != person.id
                    && (person.role.is_operator() || p.role != Role::Operator),
                email: p.email.clone(),
                role: p.role.as_str(),
                account: name_of(p.account_id),
                created: time(p.created_at, zone_of(p.account_id)),
                disabled: p.disabled,
            })
            .collect(),
        roles: roles.into_iter().map(Role::as_str).collect(),
        accounts: if person.role.is_operator() {
            zones.accounts().map(|a| a.name.clone()).collect()
        } else {
            Vec::new()
        },
        created,
        error,
    };
    render_form(&page, &page.error)
}

pub async fn list(State(state): State<AppState>, signed: Signed) -> Result<Response, Failure> {
    page(&state, &signed, None, None).await
}

#[derive(Deserialize)]
pub struct NewPersonForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    account: String,
}

pub async fn create(
    State(state): State<AppState>,
    Posted { signed, form }: Posted<NewPersonForm>,
) -> Result<Response, Failure> {
    let me = &signed.session.person;
    if !me.role.manages_account() {
        return Err(Failure::not_found());
    }
    let db = state.db();
    let made = async {
        let role = Role::parse(&form.role)?;
        if role == Role::Operator && !me.role.is_operator() {
            return Err(Error::invalid("only operators add operators", "role"));
        }
        let account_id = match (me.account_id, role) {
            (Some(own), _) => Some(own),
            (None, Role::Operator) => None,
            (None, _) => Some(accounts::named(db, form.account.trim()).await?.id),
        };
        people::create(db, &form.email, &form.password, role, account_id).await
    }
    .await;
    match made {
        Ok(person) => {
            audit_log::record(
                db,
                &signed.actor(),
                Change::created(
                    "user.create",
                    format!("user:{}", person.id),
                    person.account_id,
                    &person,
                ),
            )
            .await?;
            page(&state, &signed, Some(person.email), None).await
        }
        Err(e @ (Error::InvalidRequest { .. } | Error::Conflict(_) | Error::NotFound(_))) => {
            page(&state, &signed, None, Some(e.to_string())).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct NoFields {}

/// Disables (`disable`) or enables (`enable`) person `id`: operators anyone but themselves,
/// owners their account's people.
pub async fn set_disabled(
    State(state): State<AppState>,
    axum::extract::Path((id, action)): axum::extract::Path<(i64, String)>,
    Posted { signed, .. }: Posted<NoFields>,
) -> Result<Response, Failure> {
    let me = &signed.session.person;
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return Err(Failure::not_found()),
    };
    let db = state.db();
    let before = people::get(db, id).await?;
    let allowed = me.role.manages_account()
        && before.id != me.id
        && (me.role.is_operator() || before.account_id == me.account_id);
    if !allowed {
        return Err(Failure::not_found());
    }
    let after = people::set_disabled(db, id, disabled).await?;
    audit_log::record(
        db,
        &signed.actor(),
        Change::updated(
            if disabled {
                "user.disable"
            } else {
                "user.enable"
            },
            format!("user:{id}"),
            after.account_id,
            &before,
            &after,
        ),
    )
    .await?;
    Ok(axum::response::Redirect::to("/console/people").into_response())
}
