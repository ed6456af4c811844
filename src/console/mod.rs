//! The console (`/console/`): operators and their customers see and act in a browser.
//! Server-rendered pages from compile-checked templates (`templates/`, askama, which
//! escapes every value), a stylesheet and a few lines of script served by the binary (no
//! CDN, no build step), every page readable without script. Safe to expose: a strict
//! Content-Security-Policy, no framing, `HttpOnly` + `SameSite=Strict` session cookies, a
//! CSRF token on every form, another account's ids answered 404. Floors: it reads the
//! session (`web`), calls `domain` services and renders (`pages`); words come from one
//! catalogue per language (`i18n`).

pub mod chart;
pub mod frame;
pub mod i18n;
pub mod pages;
pub mod web;

use askama::Template;
use axum::Router;
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use frame::Frame;
use i18n::Lang;
use web::{Failure, Prefs, safe_return};

use crate::state::AppState;

/// Every console route, behind its security headers and failure pages.
pub fn router() -> Router<AppState> {
    use pages::*;
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(overview::show))
        .route("/console/sign-in", get(sign_in::show).post(sign_in::submit))
        .route("/console/sign-out", post(sign_in::sign_out))
        .route("/console/usage", get(usage::explorer))
        .route("/console/usage.csv", get(usage::export_csv))
        .route("/console/usage/{request_id}", get(usage::request))
        .route("/console/invoices", get(invoices::show))
        .route("/console/invoices/{file}", get(invoices::download))
        .route("/console/invoices/{id}/finalize", post(invoices::finalize))
        .route("/console/keys", get(keys::list).post(keys::issue))
        .route("/console/keys/{id}", get(keys::show).post(keys::edit))
        .route("/console/keys/{id}/revoke", post(keys::revoke))
        .route("/console/keys/{id}/rotate", post(keys::rotate))
        .route("/console/people", get(people::list).post(people::create))
        .route("/console/people/{id}/{action}", post(people::set_disabled))
        .route(
            "/console/accounts",
            get(accounts::list).post(accounts::open),
        )
        .route("/console/accounts/top-up", post(accounts::top_up))
        .route(
            "/console/accounts/{id}",
            get(accounts::show).post(accounts::edit),
        )
        .route("/console/audit", get(audit::show))
        .route("/console/prices", get(catalog::prices))
        .route("/console/tasks", get(catalog::tasks))
        .route("/console/health", get(catalog::health))
        .route("/console/me", get(me::show))
        .route("/console/me/password", post(me::change_password))
        .route(
            "/console/me/sign-out-everywhere",
            post(me::sign_out_everywhere),
        )
        .route("/console/prefs", get(prefs))
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/assets/console.js", get(script))
        .route("/console/{*rest}", get(not_found).post(not_found))
        .layer(axum::middleware::from_fn(guard))
}

/// No page may be framed, run a script or load a style from elsewhere, or be sniffed as
/// another type; failures become pages in the reader's language.
async fn guard(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let prefs = Prefs::from_headers(&parts.headers);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if let Some(failure) = response.extensions_mut().remove::<Failure>() {
        let mut page = failure_page(&prefs, &failure);
        *page.status_mut() = failure.status;
        page.headers_mut().extend(
            response
                .headers_mut()
                .drain()
                .filter_map(|(k, v)| k.map(|k| (k, v)))
                .filter(|(k, _)| k == header::RETRY_AFTER || k == header::SET_COOKIE),
        );
        response = page;
    }
    let headers = response.headers_mut();
    // A page's own (stricter or as strict) policy stays: the invoice document's.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[derive(Template)]
#[template(path = "failure.html")]
struct FailurePage {
    frame: Frame,
    heading: String,
    message: String,
}

fn failure_page(prefs: &Prefs, failure: &Failure) -> Response {
    let t = prefs.t();
    let heading = match failure.status {
        StatusCode::NOT_FOUND => t.get("failure.not_found"),
        StatusCode::FORBIDDEN => t.get("failure.forbidden"),
        s if s.is_server_error() => t.get("failure.unavailable"),
        _ => t.get("failure.refused"),
    };
    let message = match failure.message.as_str() {
        "not_found" => t.get("failure.not_found_text"),
        "csrf" => t.get("failure.csrf"),
        "internal" | "unavailable" => t.get("failure.try_again"),
        other => other,
    };
    let page = FailurePage {
        frame: Frame::public(prefs),
        heading: heading.to_owned(),
        message: message.to_owned(),
    };
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(_) => failure.status.into_response(),
    }
}

async fn not_found() -> Failure {
    Failure::not_found()
}

#[derive(Deserialize)]
struct PrefsQuery {
    lang: Option<String>,
    theme: Option<String>,
    back: Option<String>,
}

/// The language and theme switches: remembered in a cookie for a year.
async fn prefs(headers: HeaderMap, Query(q): Query<PrefsQuery>) -> Response {
    const YEAR: i64 = 365 * 24 * 3600;
    let mut cookies = Vec::new();
    if let Some(lang) = q.lang.as_deref().and_then(Lang::parse) {
        cookies.push(web::set_cookie(&headers, "lang", lang.code(), Some(YEAR)));
    }
    if let Some(theme) = q
        .theme
        .as_deref()
        .filter(|t| ["auto", "light", "dark"].contains(t))
    {
        cookies.push(web::set_cookie(&headers, "theme", theme, Some(YEAR)));
    }
    let mut response = Redirect::to(&safe_return(q.back.as_deref())).into_response();
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

async fn stylesheet() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
