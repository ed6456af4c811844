//! Signing in and out: the sign-in form (its own CSRF token in a cookie and a field, since
//! there is no session yet), throttled per email and per address; sign-out of this browser.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::console::frame::Frame;
use crate::console::web::{
    Failure, Posted, Prefs, SESSION_COOKIE, SIGN_IN_COOKIE, cookie, safe_return, set_cookie,
};
use crate::domain::audit_log::{self, Actor, Change};
use crate::domain::people::sessions;
use crate::error::Error;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    frame: Frame,
    csrf: String,
    next: String,
    email: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn random_token() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

fn page(
    prefs: &Prefs,
    headers: &HeaderMap,
    next: &str,
    email: &str,
    error: Option<String>,
) -> Response {
    let csrf = random_token();
    let body = SignInPage {
        frame: Frame::public(prefs),
        csrf: csrf.clone(),
        next: next.to_owned(),
        email: email.to_owned(),
        error,
    };
    let cookie = set_cookie(headers, SIGN_IN_COOKIE, &csrf, Some(3600));
    match body.render() {
        Ok(html) => ([(header::SET_COOKIE, cookie)], Html(html)).into_response(),
        Err(e) => Failure::from(Error::Internal(e.into())).into_response(),
    }
}

pub async fn show(prefs: Prefs, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    page(&prefs, &headers, &safe_return(q.next.as_deref()), "", None)
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

pub async fn submit(
    State(state): State<AppState>,
    prefs: Prefs,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: SignInForm = match crate::console::web::read_form(&body) {
        Ok(form) => form,
        Err(failure) => return failure.into_response(),
    };
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    let fresh = !form.csrf.is_empty()
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            form.csrf.as_bytes(),
            expected.as_bytes(),
        ));
    if !fresh {
        return Failure::status(StatusCode::FORBIDDEN, "csrf").into_response();
    }
    let next = safe_return(Some(&form.next));
    let t = prefs.t();
    let db = state.db();
    let signed = sessions::sign_in(
        db,
        state.sign_in_throttle(),
        &form.email,
        &form.password,
        &prefs.address,
    )
    .await;
    match signed {
        Ok(signed) => {
            let person = &signed.session.person;
            let actor = Actor::console(&person.email, &prefs.address);
            let change = Change::event(
                "session.sign_in",
                format!("user:{}", person.id),
                person.account_id,
            );
            if let Err(e) = audit_log::record(db, &actor, change).await {
                return Failure::from(e).into_response();
            }
            let session = set_cookie(&headers, SESSION_COOKIE, &signed.token, None);
            let used = set_cookie(&headers, SIGN_IN_COOKIE, "", Some(0));
            (
                AppendHeaders([(header::SET_COOKIE, session), (header::SET_COOKIE, used)]),
                Redirect::to(&next),
            )
                .into_response()
        }
        Err(Error::RateLimited { headers: wait, .. }) => {
            let secs = wait
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("60")
                .to_owned();
            let message = t.get("sign_in.throttled").replace("{secs}", &secs);
            let mut response = page(&prefs, &headers, &next, &form.email, Some(message));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response.headers_mut().extend(*wait);
            response
        }
        Err(Error::AdminUnauthorized(_)) => {
            let message = t.get("sign_in.wrong").to_owned();
            let mut response = page(&prefs, &headers, &next, &form.email, Some(message));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
        Err(e) => Failure::from(e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct Nothing {}

pub async fn sign_out(State(state): State<AppState>, posted: Posted<Nothing>) -> Response {
    let session = &posted.signed.session;
    if let Err(e) = sessions::sign_out(state.db(), session).await {
        return Failure::from(e).into_response();
    }
    let gone = set_cookie(&HeaderMap::new(), SESSION_COOKIE, "", Some(0));
    (
        [(header::SET_COOKIE, gone)],
        Redirect::to("/console/sign-in"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::i18n::Lang;

    #[test]
    fn the_template_escapes_text_and_attributes() {
        let prefs = Prefs {
            lang: Lang::En,
            theme: "auto",
            address: String::new(),
            here: "/console/sign-in?next=\"><script>x</script>".into(),
        };
        let html = SignInPage {
            frame: Frame::public(&prefs),
            csrf: "token".into(),
            next: "/console/".into(),
            email: "\"><img src=x onerror=alert(1)>".into(),
            error: Some("<script>alert(1)</script>".into()),
        }
        .render()
        .unwrap();
        assert!(!html.contains("<script>alert(1)"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{html}"
        );
        assert!(
            html.contains("value=\"&#34;&#62;&#60;img src=x onerror=alert(1)&#62;\""),
            "{html}"
        );
        // The switches' return path is escaped into the query, never markup.
        assert!(!html.contains("<script>x"), "{html}");
    }
}
