//! What every console request brings: its cookies and preferences (`Prefs`: language,
//! theme), its session (`Signed`, or a redirect to the sign-in page), forms whose CSRF
//! token is checked before the handler runs (`Posted`), and failures that the console
//! renders as a page in the reader's language (`Failure`).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::i18n::{Lang, Words};
use crate::domain::audit_log::Actor;
use crate::domain::people::sessions::{self, Lifetimes, Session};
use crate::error::Error;
use crate::server::ClientAddr;
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "tollgate_session";
/// The sign-in form's own CSRF token (double submit: cookie and field), before a session.
pub const SIGN_IN_COOKIE: &str = "tollgate_signin";

/// The value of cookie `name`.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the console's path: HttpOnly and SameSite=Strict always,
/// Secure when the request came over TLS (a proxy in front says so).
pub fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: Option<i64>) -> String {
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let mut cookie = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        cookie += &format!("; Max-Age={age}");
    }
    if secure {
        cookie += "; Secure";
    }
    cookie
}

/// The reader's choices: language and theme (from cookies the switches set), and where
/// the request came from.
#[derive(Debug, Clone)]
pub struct Prefs {
    pub lang: Lang,
    /// `auto` (the system's), `light` or `dark`.
    pub theme: &'static str,
    pub address: String,
    /// The path and query asked for (where a switch returns to).
    pub here: String,
}

impl Prefs {
    pub fn t(&self) -> &'static Words {
        self.lang.words()
    }

    /// The preferences in `headers` (without the address or the path).
    pub fn from_headers(headers: &HeaderMap) -> Prefs {
        let accept = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok());
        let theme = match cookie(headers, "theme") {
            Some("dark") => "dark",
            Some("light") => "light",
            _ => "auto",
        };
        Prefs {
            lang: Lang::choose(cookie(headers, "lang"), accept),
            theme,
            address: String::new(),
            here: "/console/".into(),
        }
    }

    fn from_parts(parts: &Parts) -> Prefs {
        let mut prefs = Prefs::from_headers(&parts.headers);
        prefs.address = parts
            .extensions
            .get::<ClientAddr>()
            .map(|a| a.0.ip().to_string())
            .unwrap_or_default();
        if let Some(here) = parts.uri.path_and_query() {
            prefs.here = here.as_str().to_owned();
        }
        prefs
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Prefs {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Prefs, Self::Rejection> {
        Ok(Prefs::from_parts(parts))
    }
}

/// A signed-in request: its session and preferences. Without a live session the browser
/// is sent to the sign-in page, which brings it back here after.
pub struct Signed {
    pub session: Session,
    pub prefs: Prefs,
}

impl Signed {
    pub fn actor(&self) -> Actor {
        Actor::console(&self.session.person.email, &self.prefs.address)
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Signed, Response> {
        let prefs = Prefs::from_parts(parts);
        let token = cookie(&parts.headers, SESSION_COOKIE).unwrap_or_default();
        let lifetimes = Lifetimes::from_config(&state.config().console);
        match sessions::resume(state.db(), lifetimes, token).await {
            Ok(Some(session)) => Ok(Signed { session, prefs }),
            Ok(None) => {
                let next = url_escape(&prefs.here);
                Err(Redirect::to(&format!("/console/sign-in?next={next}")).into_response())
            }
            Err(e) => Err(Failure::from(e).into_response()),
        }
    }
}

/// A form posted by a signed-in browser, its CSRF token checked (403 otherwise) before
/// `T` is read.
pub struct Posted<T> {
    pub signed: Signed,
    pub form: T,
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let signed = Signed::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, 1 << 16).await.map_err(|_| {
            Failure::status(StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response()
        })?;
        let csrf: CsrfField = read_form(&bytes).map_err(IntoResponse::into_response)?;
        if !signed.session.csrf_matches(&csrf.csrf) {
            return Err(Failure::status(StatusCode::FORBIDDEN, "csrf").into_response());
        }
        let form = read_form(&bytes).map_err(IntoResponse::into_response)?;
        Ok(Posted { signed, form })
    }
}

/// A form's fields (an unreadable form is a 400 page).
pub fn read_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|e| Failure::status(StatusCode::BAD_REQUEST, &format!("invalid form: {e}")))
}

/// Percent-encodes `text` for a query value.
pub fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Where to go after a form or a switch: a console path of this site only (never another
/// site, never `//host`), else the overview.
pub fn safe_return(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console/") && !n.contains("//") && !n.contains('\\') => {
            n.to_owned()
        }
        _ => "/console/".into(),
    }
}

/// Why a console page could not be shown; rendered as a page in the reader's language by
/// `super::render_failures`.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    /// A catalogue key (`csrf`, `not_found`, ...) or, for the domain's refusals, its message.
    pub message: String,
}

impl Failure {
    pub fn status(status: StatusCode, message: &str) -> Failure {
        Failure {
            status,
            message: message.to_owned(),
        }
    }

    pub fn not_found() -> Failure {
        Failure::status(StatusCode::NOT_FOUND, "not_found")
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match &e {
            Error::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Error::InvalidKey(_) | Error::AdminUnauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::InsufficientQuota(_) => StatusCode::PAYMENT_REQUIRED,
            Error::NotFound(_) => return Failure::not_found(),
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "console page failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match e {
            Error::Internal(_) => "internal".to_owned(),
            other => other.to_string(),
        };
        Failure { status, message }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

impl From<crate::server::ApiError> for Failure {
    fn from(e: crate::server::ApiError) -> Failure {
        let status = e.status();
        let message = if status.is_server_error() {
            "unavailable".to_owned()
        } else {
            e.to_string()
        };
        Failure { status, message }
    }
}
