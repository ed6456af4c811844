//! A second baseline: a reverse proxy built from tollgate's own parts (tokio's multi-thread
//! runtime, axum, hyper's pooled client) that meters nothing. Set against nginx it shows
//! what those parts cost; set against tollgate, what the metering costs.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Set to the backend's address in the environment of a child that should run as the
/// pass-through proxy; its one argument is the address to listen on.
pub const ROLE_ENV: &str = "TOLLGATE_BENCH_AS_PASSTHROUGH";
/// Its runtime's worker threads, when `--worker-threads` sets them.
pub const WORKERS_ENV: &str = "TOLLGATE_BENCH_PASSTHROUGH_WORKERS";

type Pool = Client<HttpConnector, Body>;

pub fn main(backend: &str) -> ExitCode {
    let run = async {
        let backend: SocketAddr = backend.parse()?;
        let listen: SocketAddr = std::env::args().nth(1).unwrap_or_default().parse()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let pool: Pool = Client::builder(TokioExecutor::new()).build(connector);
        let app = Router::new().fallback(move |request| forward(pool.clone(), backend, request));
        let listener = tollgate::server::nodelay(tollgate::server::listen(listen)?);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var(WORKERS_ENV).ok().and_then(|n| n.parse().ok()) {
        runtime.worker_threads(n);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pass-through: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn forward(pool: Pool, backend: SocketAddr, mut request: Request) -> Response {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{backend}{path}").parse::<Uri>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    *request.uri_mut() = uri;
    match pool.request(request).await {
        Ok(response) => response.map(Body::new),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
