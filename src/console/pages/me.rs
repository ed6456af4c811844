//! One's own settings: changing the password (other sessions end) and signing out
//! everywhere.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::render_form;
use crate::console::frame::Frame;
use crate::console::web::{Failure, Posted, SESSION_COOKIE, Signed, set_cookie};
use crate::domain::audit_log::{self, Change};
use crate::domain::people::sessions;
use crate::error::Error;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "me.html")]
struct MePage {
    frame: Frame,
    email: String,
    role: &'static str,
    changed: bool,
    error: Option<String>,
}

fn page(signed: &Signed, changed: bool, error: Option<String>) -> Result<Response, Failure> {
    let page = MePage {
        frame: Frame::signed(signed, "nav.me"),
        email: signed.session.person.email.clone(),
        role: signed.session.person.role.as_str(),
        changed,
        error,
    };
    render_form(&page, &page.error)
}

pub async fn show(signed: Signed) -> Result<Response, Failure> {
    page(&signed, false, None)
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    again: String,
}

pub async fn change_password(
    State(state): State<AppState>,
    Posted { signed, form }: Posted<PasswordForm>,
) -> Result<Response, Failure> {
    let t = signed.prefs.t();
    if form.new != form.again {
        return page(&signed, false, Some(t.get("me.mismatch").to_owned()));
    }
    let db = state.db();
    match sessions::change_password(db, &signed.session, &form.current, &form.new).await {
        Ok(()) => {
            let person = &signed.session.person;
            audit_log::record(
                db,
                &signed.actor(),
                Change::event(
                    "user.password",
                    format!("user:{}", person.id),
                    person.account_id,
                ),
            )
            .await?;
            page(&signed, true, None)
        }
        Err(e @ Error::InvalidRequest { .. }) => page(&signed, false, Some(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct Nothing {}

pub async fn sign_out_everywhere(
    State(state): State<AppState>,
    Posted { signed, .. }: Posted<Nothing>,
) -> Result<Response, Failure> {
    let db = state.db();
    sessions::sign_out_everywhere(db, &signed.session).await?;
    let person = &signed.session.person;
    audit_log::record(
        db,
        &signed.actor(),
        Change::event(
            "session.sign_out_everywhere",
            format!("user:{}", person.id),
            person.account_id,
        ),
    )
    .await?;
    let gone = set_cookie(&HeaderMap::new(), SESSION_COOKIE, "", Some(0));
    Ok((
        [(header::SET_COOKIE, gone)],
        Redirect::to("/console/sign-in"),
    )
        .into_response())
}
