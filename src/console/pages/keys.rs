//! Keys: the account's keys (prefix, name, state, limits, last use), issuing one (its
//! secret shown once, with a copy button), revoking, rotating with a grace period, and
//! changing a key's limits, models and expiry. Owners and operators manage keys; members
//! issue keys; viewers read.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{Duration, Utc};
use serde::Deserialize;

use super::{Zones, render_form, visible_account};
use crate::console::frame::{Frame, time};
use crate::console::web::{Failure, Posted, Signed};
use crate::domain::accounts;
use crate::domain::audit_log;
use crate::domain::keys::{self, Issued, KeyPatch, KeyView, NewKeyRequest};
use crate::error::Error;
use crate::state::AppState;
use crate::store::keys::KeyLimits;

/// A key as a row of the list.
struct KeyLine {
    id: i64,
    account: String,
    name: String,
    prefix: String,
    state: &'static str,
    rpm: String,
    tpm: String,
    models: String,
    expires: String,
    last_used: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    frame: Frame,
    keys: Vec<KeyLine>,
    /// Account names an operator may issue a key for (empty: the person's own account).
    accounts: Vec<String>,
    may_issue: bool,
    may_manage: bool,
    /// The secret just issued, shown this once.
    issued: Option<(String, String)>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    frame: Frame,
    key: KeyLine,
    may_manage: bool,
    models_value: String,
    rpm_value: String,
    tpm_value: String,
    expires_value: String,
    error: Option<String>,
}

fn state_word(view: &KeyView) -> &'static str {
    match view.state {
        crate::store::keys::KeyState::Active => "key.active",
        crate::store::keys::KeyState::Rotating => "key.rotating",
        crate::store::keys::KeyState::Revoked => "key.revoked",
        crate::store::keys::KeyState::Expired => "key.expired",
    }
}

fn line(
    view: &KeyView,
    account: &str,
    zone: chrono_tz::Tz,
    t: &crate::console::i18n::Words,
) -> KeyLine {
    let default = t.get("key.default");
    KeyLine {
        id: view.id,
        account: account.to_owned(),
        name: view.name.clone(),
        prefix: view.prefix.clone(),
        state: state_word(view),
        rpm: view
            .limits
            .rpm
            .map_or(default.to_owned(), |n| n.to_string()),
        tpm: view
            .limits
            .tpm
            .map_or(default.to_owned(), |n| n.to_string()),
        models: view
            .limits
            .allowed_models
            .as_ref()
            .map_or(t.get("key.all_models").to_owned(), |m| m.join(", ")),
        expires: view.expires_at.map_or("—".into(), |e| time(e, zone)),
        last_used: view.last_used_at.map_or("—".into(), |e| time(e, zone)),
        active: matches!(
            view.state,
            crate::store::keys::KeyState::Active | crate::store::keys::KeyState::Rotating
        ),
    }
}

#[derive(Deserialize)]
pub struct KeysQuery {
    account: Option<i64>,
}

async fn keys_page(
    state: &AppState,
    signed: &Signed,
    asked: Option<i64>,
    issued: Option<Issued>,
    error: Option<String>,
) -> Result<Response, Failure> {
    let t = signed.prefs.t();
    let account = visible_account(state, signed, asked).await?;
    let db = state.usage_db().await?;
    let zones = Zones::load(state).await?;
    let name_of = |id: i64| zones.account(id).map_or(id.to_string(), |a| a.name.clone());
    let views = keys::list(db, account.as_ref().map(|a| a.id)).await?;
    let role = signed.session.person.role;
    let page = KeysPage {
        frame: Frame::signed(signed, "nav.keys"),
        keys: views
            .iter()
            .rev()
            .map(|v| line(v, &name_of(v.account_id), zones.of(v.account_id), t))
            .collect(),
        accounts: if role.is_operator() {
            zones.accounts().map(|a| a.name.clone()).collect()
        } else {
            Vec::new()
        },
        may_issue: role.issues_keys(),
        may_manage: role.manages_account(),
        issued: issued.map(|i| (i.key, i.view.prefix)),
        error,
    };
    render_form(&page, &page.error)
}

pub async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<KeysQuery>,
) -> Result<Response, Failure> {
    keys_page(&state, &signed, q.account, None, None).await
}

#[derive(Deserialize)]
pub struct IssueForm {
    #[serde(default)]
    account: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    rpm: String,
    #[serde(default)]
    tpm: String,
    #[serde(default)]
    models: String,
    #[serde(default)]
    expires_in_days: String,
}

/// A number field: empty is `None` (the default), otherwise a positive whole number.
fn number<T: std::str::FromStr>(text: &str, field: &'static str) -> Result<Option<T>, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| Error::invalid(format!("{field} must be a whole number"), field))
}

fn models(text: &str) -> Option<Vec<String>> {
    let list: Vec<String> = text
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    (!list.is_empty()).then_some(list)
}

fn limits_of(rpm: &str, tpm: &str, models_text: &str) -> Result<KeyLimits, Error> {
    Ok(KeyLimits {
        rpm: number(rpm, "rpm")?,
        tpm: number(tpm, "tpm")?,
        allowed_models: models(models_text),
    })
}

fn expiry(days: &str) -> Result<Option<chrono::DateTime<Utc>>, Error> {
    number::<i64>(days, "expires_in_days")?
        .map(|d| {
            if (1..=3650).contains(&d) {
                Ok(Utc::now() + Duration::days(d))
            } else {
                Err(Error::invalid(
                    "expires_in_days must be between 1 and 3650",
                    "expires_in_days",
                ))
            }
        })
        .transpose()
}

pub async fn issue(
    State(state): State<AppState>,
    Posted { signed, form }: Posted<IssueForm>,
) -> Result<Response, Failure> {
    let person = &signed.session.person;
    if !person.role.issues_keys() {
        return Err(Failure::not_found());
    }
    let db = state.db();
    let account = match person.account_id {
        Some(own) => accounts::get(db, own).await?,
        None => accounts::named(db, form.account.trim()).await?,
    };
    let request = (|| {
        Ok::<_, Error>(NewKeyRequest {
            account: account.name.clone(),
            name: form.name.trim().to_owned(),
            expires_at: expiry(&form.expires_in_days)?,
            limits: limits_of(&form.rpm, &form.tpm, &form.models)?,
        })
    })();
    let issued = match request {
        Ok(request) => keys::issue(db, state.keys(), request).await,
        Err(e) => Err(e),
    };
    match issued {
        Ok(issued) => {
            audit_log::record(
                db,
                &signed.actor(),
                keys::change("key.create", None, &issued.view),
            )
            .await?;
            let asked = person.account_id.or(Some(account.id));
            keys_page(&state, &signed, asked, Some(issued), None).await
        }
        Err(Error::InvalidRequest { message, .. }) => {
            keys_page(&state, &signed, person.account_id, None, Some(message)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Key `id` if the person may see it (404 otherwise, as for a key that does not exist).
async fn visible_key(state: &AppState, signed: &Signed, id: i64) -> Result<KeyView, Failure> {
    let row = keys::get(state.db(), id).await?;
    if !signed.session.person.sees(row.account_id) {
        return Err(Failure::not_found());
    }
    Ok(keys::view(state.usage_db().await?, row).await?)
}

async fn key_page(
    state: &AppState,
    signed: &Signed,
    view: KeyView,
    error: Option<String>,
) -> Result<Response, Failure> {
    let t = signed.prefs.t();
    let account = accounts::get(state.db(), view.account_id).await?;
    let zone = accounts::zone_of(&account, state.config().billing.zone());
    let page = KeyPage {
        frame: Frame::signed(signed, "nav.keys"),
        may_manage: signed.session.person.role.manages_account(),
        models_value: view
            .limits
            .allowed_models
            .as_ref()
            .map(|m| m.join(", "))
            .unwrap_or_default(),
        rpm_value: view.limits.rpm.map(|n| n.to_string()).unwrap_or_default(),
        tpm_value: view.limits.tpm.map(|n| n.to_string()).unwrap_or_default(),
        expires_value: view
            .expires_at
            .map(|e| ((e - Utc::now()).num_days().max(1)).to_string())
            .unwrap_or_default(),
        key: line(&view, &account.name, zone, t),
        error,
    };
    render_form(&page, &page.error)
}

pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<i64>,
) -> Result<Response, Failure> {
    let view = visible_key(&state, &signed, id).await?;
    key_page(&state, &signed, view, None).await
}

#[derive(Deserialize)]
pub struct EditForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    rpm: String,
    #[serde(default)]
    tpm: String,
    #[serde(default)]
    models: String,
    #[serde(default)]
    expires_in_days: String,
}

pub async fn edit(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Posted { signed, form }: Posted<EditForm>,
) -> Result<Response, Failure> {
    let before = visible_key(&state, &signed, id).await?;
    if !signed.session.person.role.manages_account() {
        return Err(Failure::not_found());
    }
    let patch = (|| {
        let limits = limits_of(&form.rpm, &form.tpm, &form.models)?;
        Ok::<_, Error>(KeyPatch {
            name: Some(form.name.trim().to_owned()),
            expires_at: Some(expiry(&form.expires_in_days)?),
            rpm: Some(limits.rpm),
            tpm: Some(limits.tpm),
            allowed_models: Some(limits.allowed_models),
        })
    })();
    let db = state.usage_db().await?;
    let after = match patch {
        Ok(patch) => keys::update(db, state.keys(), id, patch).await,
        Err(e) => Err(e),
    };
    match after {
        Ok(after) => {
            audit_log::record(
                db,
                &signed.actor(),
                keys::change("key.update", Some(&before), &after),
            )
            .await?;
            Ok(Redirect::to(&format!("/console/keys/{id}")).into_response())
        }
        Err(Error::InvalidRequest { message, .. }) => {
            key_page(&state, &signed, before, Some(message)).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct NoFields {}

pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Posted { signed, .. }: Posted<NoFields>,
) -> Result<Response, Failure> {
    let before = visible_key(&state, &signed, id).await?;
    if !signed.session.person.role.manages_account() {
        return Err(Failure::not_found());
    }
    let db = state.usage_db().await?;
    let after = keys::revoke(db, state.keys(), id).await?;
    audit_log::record(
        db,
        &signed.actor(),
        keys::change("key.revoke", Some(&before), &after),
    )
    .await?;
    Ok(Redirect::to("/console/keys").into_response())
}

pub async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Posted { signed, .. }: Posted<NoFields>,
) -> Result<Response, Failure> {
    let before = visible_key(&state, &signed, id).await?;
    if !signed.session.person.role.manages_account() {
        return Err(Failure::not_found());
    }
    let grace = keys::grace(state.config().admin.rotation_grace_secs)?;
    let issued = keys::rotate(state.db(), state.keys(), id, grace).await?;
    audit_log::record(
        state.db(),
        &signed.actor(),
        keys::change("key.rotate", Some(&before), &issued.view),
    )
    .await?;
    let asked = signed.session.person.account_id.or(Some(before.account_id));
    keys_page(&state, &signed, asked, Some(issued), None).await
}
