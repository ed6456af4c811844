//! The HTTP client that carries requests to backends: hyper's pooled client over plain TCP
//! or rustls, with nothing in between. (reqwest's redirect, retry and URL layers cost
//! about a tenth of the gateway's CPU per request, for features a proxy must not use.)

use std::time::Duration;

use axum::http::{Request, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A backend's answer, its body still to be read.
pub type UpstreamResponse = Response<Incoming>;

/// One connection pool (http or https) with its own connect timeout.
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Why a request got no response head.
#[derive(Debug)]
pub struct SendError(hyper_util::client::legacy::Error);

impl std::error::Error for SendError {}

/// The whole chain of causes ("client error (Connect): tcp connect error: Connection
/// refused"): hyper's own message alone does not say what failed.
impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(&self.0);
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
        self.0.is_connect()
    }
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> anyhow::Result<UpstreamClient> {
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
        Ok(UpstreamClient { pool })
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<UpstreamResponse, SendError> {
        self.pool.request(request).await.map_err(SendError)
    }
}

/// The next piece of a body's data; `None` at its end. Trailers are skipped.
pub async fn next_chunk(response: &mut UpstreamResponse) -> Result<Option<Bytes>, hyper::Error> {
    loop {
        match response.body_mut().frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// `next_chunk` within `idle`. A chunk already received is taken without arming a timer,
/// which costs more than the read itself.
pub async fn next_chunk_within(
    response: &mut UpstreamResponse,
    idle: Duration,
) -> Result<Result<Option<Bytes>, hyper::Error>, tokio::time::error::Elapsed> {
    if let Some(ready) = next_chunk(response).now_or_never() {
        return Ok(ready);
    }
    tokio::time::timeout(idle, next_chunk(response)).await
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
        let client = UpstreamClient::new(Duration::from_secs(2)).unwrap();
        let request = Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let error = client.send(request).await.unwrap_err();
        assert!(error.is_connect());
        let text = error.to_string();
        assert!(text.contains("refused"), "{text}");
    }
}
