//! The HTTP client that carries requests to backends: for `http://`, a pool of HTTP/1.1
//! connections of tollgate's own (`pool`, `http1`); for `https://`, hyper's general pooled
//! client over rustls. Nothing in between: reqwest's redirect, retry and URL layers cost
//! about a tenth of the gateway's CPU per request, for features a proxy must not use.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::uri::Scheme;
use axum::http::{HeaderMap, Request, StatusCode, Uri};
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::pool::{Failure, Pool, PoolError, Reader};

/// A backend's answer, its body still to be read (`next_chunk`).
pub struct UpstreamResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

/// Where an answer's body comes from: a pooled plain-HTTP connection, given back once the
/// body has been read to its end, or hyper's client.
enum Body {
    Plain(Reader),
    Tls(Incoming),
}

/// Why an answer's body could not be read to its end.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl UpstreamResponse {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status())
            .field("pooled", &matches!(self.body, Body::Plain(_)))
            .finish_non_exhaustive()
    }
}

/// The connections to one backend: a pool of plain HTTP/1 connections for `http://`, hyper's
/// general client (TLS, HTTP/2 by ALPN) for `https://`. Each has its own connect timeout.
#[derive(Clone)]
pub enum UpstreamClient {
    Plain(Arc<Pool>),
    Tls(Box<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>),
}

/// Why a request got no response head.
#[derive(Debug)]
pub struct SendError {
    failure: Failure,
    error: Box<dyn std::error::Error + Send + Sync>,
}

/// No piece of an answer's body came within the wait.
#[derive(Debug)]
pub struct TimedOut;

impl std::error::Error for SendError {}

/// The whole chain of causes ("client error (Connect): tcp connect error: Connection
/// refused"): hyper's own message alone does not say what failed.
impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        let mut cause = self.error.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl SendError {
    /// No connection could be made (refused, unreachable, connect timeout, TLS): the
    /// request never reached the backend, so another chip may take it.
    pub fn is_connect(&self) -> bool {
        self.failure == Failure::Connect
    }

    /// No answer's head came within the first-byte timeout (the request may have reached
    /// the backend).
    pub fn is_timeout(&self) -> bool {
        self.failure == Failure::TimedOut
    }
}

impl UpstreamClient {
    /// The client for backends at `url`.
    pub fn new(url: &Uri, connect_timeout: Duration) -> anyhow::Result<UpstreamClient> {
        if url.scheme() == Some(&Scheme::HTTP) {
            return Ok(UpstreamClient::Plain(Pool::new(url, connect_timeout)?));
        }
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let connector = HttpsConnectorBuilder::new()
            .try_with_platform_verifier()?
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        // Redirects are never followed (hyper does not): one would send the request,
        // credential included, where the operator did not configure it.
        let pool = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(UpstreamClient::Tls(Box::new(pool)))
    }

    /// Sends `request` and reads the answer's head, within `first_byte`.
    pub async fn send(
        &self,
        request: Request<Bytes>,
        first_byte: Duration,
    ) -> Result<UpstreamResponse, SendError> {
        match self {
            UpstreamClient::Plain(pool) => {
                let (mut request, body) = request.into_parts();
                let origin = request.uri.path_and_query().cloned();
                request.uri = origin.map_or_else(|| Uri::from_static("/"), Uri::from);
                match pool
                    .send(Request::from_parts(request, body), first_byte)
                    .await
                {
                    Ok((head, reader)) => Ok(UpstreamResponse {
                        status: head.status,
                        headers: head.headers,
                        body: Body::Plain(reader),
                    }),
                    Err(PoolError { failure, error }) => Err(SendError { failure, error }),
                }
            }
            UpstreamClient::Tls(client) => {
                let sending = client.request(request.map(Full::new));
                match tokio::time::timeout(first_byte, sending).await {
                    Ok(Ok(response)) => {
                        let (head, body) = response.into_parts();
                        Ok(UpstreamResponse {
                            status: head.status,
                            headers: head.headers,
                            body: Body::Tls(body),
                        })
                    }
                    Ok(Err(e)) => Err(SendError {
                        failure: match e.is_connect() {
                            true => Failure::Connect,
                            false => Failure::Answer,
                        },
                        error: e.into(),
                    }),
                    Err(elapsed) => Err(SendError {
                        failure: Failure::TimedOut,
                        error: elapsed.into(),
                    }),
                }
            }
        }
    }
}

/// The next piece of a body's data; `None` at its end. Trailers are skipped. Cancel-safe.
pub async fn next_chunk(response: &mut UpstreamResponse) -> Result<Option<Bytes>, BodyError> {
    let body = match &mut response.body {
        Body::Plain(reader) => return Ok(reader.next_chunk().await?),
        Body::Tls(body) => body,
    };
    loop {
        match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// `next_chunk` within `idle`. A chunk already received is taken without a look at the
/// time; a pooled connection waits on its own deadline (`crate::deadline`), and hyper's
/// body on a timer of its own, which costs more than the read itself.
pub async fn next_chunk_within(
    response: &mut UpstreamResponse,
    idle: Duration,
) -> Result<Result<Option<Bytes>, BodyError>, TimedOut> {
    if let Body::Plain(reader) = &mut response.body {
        let read = reader.next_chunk_within(idle).await.ok_or(TimedOut)?;
        return Ok(read.map_err(Into::into));
    }
    if let Some(ready) = next_chunk(response).now_or_never() {
        return Ok(ready);
    }
    tokio::time::timeout(idle, next_chunk(response))
        .await
        .map_err(|_| TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_that_says_why() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        // The plain pool and hyper's general client (TLS) alike.
        for scheme in ["http", "https"] {
            let url: Uri = format!("{scheme}://127.0.0.1:{port}/v1/chat/completions")
                .parse()
                .unwrap();
            let client = UpstreamClient::new(&url, Duration::from_secs(2)).unwrap();
            let request = Request::post(url)
                .header(axum::http::header::HOST, format!("127.0.0.1:{port}"))
                .body(Bytes::from_static(b"{}"))
                .unwrap();
            let error = client
                .send(request, Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(error.is_connect(), "{scheme}: {error}");
            let text = error.to_string();
            assert!(text.contains("refused"), "{scheme}: {text}");
        }
    }
}
