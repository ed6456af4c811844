//! The load generator: keep-alive HTTP/1.1 connections, driven open-loop (a fixed schedule;
//! a request held up by a slow predecessor is timed from when it was due, so stalls are not
//! hidden by coordinated omission) or closed-loop (each connection as fast as it can go).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;

/// Where requests go: the simulator itself, nginx in front of it, or tollgate.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    pub path: String,
}

/// What each request carries: one key, every key in turn, or a key drawn from a Zipf-like
/// distribution.
#[derive(Clone)]
pub enum Workload {
    Fixed {
        auth: HeaderValue,
        body: Bytes,
    },
    EachInTurn {
        keys: Arc<Vec<HeaderValue>>,
        next: Arc<AtomicUsize>,
        body: Bytes,
    },
    Zipf {
        keys: Arc<Vec<HeaderValue>>,
        /// Cumulative weights of the ranks, ending at 1.0.
        cdf: Arc<Vec<f64>>,
        body: Bytes,
    },
}

impl Workload {
    /// Rank `r` (from 1) weighs `1 / r^s`.
    pub fn zipf(keys: Vec<HeaderValue>, s: f64, body: Bytes) -> Workload {
        let weights: Vec<f64> = (1..=keys.len()).map(|r| (r as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let mut sum = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                sum += w / total;
                sum
            })
            .collect();
        Workload::Zipf {
            keys: Arc::new(keys),
            cdf: Arc::new(cdf),
            body,
        }
    }

    fn next(&self, rng: &mut SmallRng) -> (HeaderValue, Bytes) {
        match self {
            Workload::Fixed { auth, body } => (auth.clone(), body.clone()),
            Workload::EachInTurn { keys, next, body } => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                (keys[n % keys.len()].clone(), body.clone())
            }
            Workload::Zipf { keys, cdf, body } => {
                let u: f64 = rng.random();
                let rank = cdf.partition_point(|&c| c < u).min(keys.len() - 1);
                (keys[rank].clone(), body.clone())
            }
        }
    }
}

/// One finished request.
pub struct Outcome {
    pub status: u16,
    /// From when the request was due (open loop) or sent (closed loop) to its last byte.
    pub latency: Duration,
    /// From sending to the first body byte.
    pub first_byte: Duration,
    /// Gaps between successive `data:` events (streams only).
    pub gaps: Vec<Duration>,
    pub end: Instant,
}

impl Outcome {
    /// A request that got no answer (status 0): refused, reset or cut short.
    fn failed(since: Instant) -> Outcome {
        let end = Instant::now();
        Outcome {
            status: 0,
            latency: end - since,
            first_byte: end - since,
            gaps: Vec::new(),
            end,
        }
    }
}

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    host: HeaderValue,
}

impl Connection {
    async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
        })
    }

    /// Sends one request and reads the whole response; `due` is when it should have started.
    async fn send(
        &mut self,
        path: &str,
        (auth, body): (HeaderValue, Bytes),
        due: Option<Instant>,
    ) -> anyhow::Result<Outcome> {
        let sent = Instant::now();
        if self.sender.ready().await.is_err() {
            // The server closed the connection (as nginx does after keepalive_requests).
            *self = Connection::open(self.addr).await?;
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, auth)
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut first_byte = None;
        let mut last_event: Option<Instant> = None;
        let mut gaps = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let now = Instant::now();
            first_byte.get_or_insert(now - sent);
            for _ in data.windows(5).filter(|w| w == b"data:") {
                if let Some(previous) = last_event {
                    gaps.push(now - previous);
                }
                last_event = Some(now);
            }
        }
        let end = Instant::now();
        Ok(Outcome {
            status,
            latency: end - due.unwrap_or(sent),
            first_byte: first_byte.unwrap_or(end - sent),
            gaps,
            end,
        })
    }
}

/// The body of `GET path`, on a connection of its own.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut connection = Connection::open(addr).await?;
    let request = Request::builder()
        .uri(path)
        .header(HOST, connection.host.clone())
        .body(Full::new(Bytes::new()))?;
    let response = connection.sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `count` requests on one connection at `rate` per second. Latency counts from when each
/// request was due if the previous response held it up; the generator's own timer lateness
/// (tokio's timer has millisecond resolution) is not charged to the server.
pub async fn open_loop(
    target: &Target,
    workload: &Workload,
    rate: f64,
    count: usize,
) -> anyhow::Result<Vec<Outcome>> {
    let mut connection = Connection::open(target.addr).await?;
    let mut rng = SmallRng::seed_from_u64(1);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut free_at = start;
    let mut outcomes = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let charged_from = (free_at > due).then_some(due);
        let outcome = connection
            .send(&target.path, workload.next(&mut rng), charged_from)
            .await?;
        free_at = outcome.end;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// When a closed loop ends.
#[derive(Clone, Copy)]
pub enum Stop {
    After(Duration),
    Requests(usize),
}

/// `connections` connections, each sending back to back until `stop`.
/// Returns the outcomes and the time from the start to the last response.
pub async fn closed_loop(
    target: &Target,
    workload: &Workload,
    connections: usize,
    stop: Stop,
) -> anyhow::Result<(Vec<Outcome>, Duration)> {
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Connection::open(target.addr).await?);
    }
    let start = Instant::now();
    let (deadline, limit) = match stop {
        Stop::After(duration) => (start + duration, usize::MAX),
        Stop::Requests(count) => (start + Duration::from_secs(3600), count),
    };
    let started = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(n, mut connection)| {
            let (path, workload) = (target.path.clone(), workload.clone());
            let started = started.clone();
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(n as u64 + 2);
                let mut outcomes = Vec::new();
                while Instant::now() < deadline && started.fetch_add(1, Ordering::Relaxed) < limit {
                    outcomes.push(
                        connection
                            .send(&path, workload.next(&mut rng), None)
                            .await?,
                    );
                }
                anyhow::Ok(outcomes)
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await??);
    }
    let elapsed = all.iter().map(|o| o.end).max().unwrap_or(start) - start;
    Ok((all, elapsed))
}

/// How long an open loop's request waits for its answer before it counts as failed: at a
/// rate far beyond a subject's capacity, the generator and the server both run out of
/// descriptors, and a connection the server never accepts would wait for ever.
const GIVE_UP: Duration = Duration::from_secs(10);

/// Requests at `rate` per second for `time`, each sent when due whatever became of the
/// ones before it (open loop, many connections): on a connection left idle by an earlier
/// request, or on a new one if none is, so a slow server gets more requests in flight,
/// never fewer sent. Latency counts from the send (the generator's own timer lateness is
/// not the server's).
pub async fn open_rate(
    target: &Target,
    workload: &Workload,
    rate: f64,
    time: Duration,
) -> anyhow::Result<Vec<Outcome>> {
    let idle: Arc<std::sync::Mutex<Vec<Connection>>> = Arc::default();
    let count = (rate * time.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sent = Vec::with_capacity(count);
    let mut rng = SmallRng::seed_from_u64(3);
    for i in 0..count {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let (idle, path, addr) = (idle.clone(), target.path.clone(), target.addr);
        let request = workload.next(&mut rng);
        sent.push(tokio::spawn(async move {
            let due = Instant::now();
            let reused = idle.lock().expect("the idle connections").pop();
            let answered = tokio::time::timeout(GIVE_UP, async {
                let mut connection = match reused {
                    Some(connection) => connection,
                    None => Connection::open(addr).await.ok()?,
                };
                // A connection the server closed or reset is a failed request, and not
                // reused.
                let outcome = connection.send(&path, request, None).await.ok()?;
                idle.lock().expect("the idle connections").push(connection);
                Some(outcome)
            });
            answered
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| Outcome::failed(due))
        }));
    }
    let mut outcomes = Vec::with_capacity(count);
    for request in sent {
        outcomes.push(request.await?);
    }
    Ok(outcomes)
}

/// One request on a connection of its own, timed from the connection's opening: a
/// connection the target does not take counts as a failed request (status 0).
/// `open` counts the connections open at any moment.
pub async fn one(target: &Target, workload: &Workload, open: &AtomicUsize) -> Outcome {
    let opened = Instant::now();
    let Ok(mut connection) = Connection::open(target.addr).await else {
        return Outcome::failed(opened);
    };
    open.fetch_add(1, Ordering::Relaxed);
    let mut rng = SmallRng::seed_from_u64(0);
    let sent = connection
        .send(&target.path, workload.next(&mut rng), Some(opened))
        .await;
    drop(connection);
    open.fetch_sub(1, Ordering::Relaxed);
    sent.unwrap_or_else(|_| Outcome::failed(opened))
}

/// `count` requests, one after another on one connection.
pub async fn sequential(
    target: &Target,
    workload: &Workload,
    count: usize,
) -> anyhow::Result<Vec<Outcome>> {
    let mut connection = Connection::open(target.addr).await?;
    let mut rng = SmallRng::seed_from_u64(0);
    let mut outcomes = Vec::with_capacity(count);
    for _ in 0..count {
        outcomes.push(
            connection
                .send(&target.path, workload.next(&mut rng), None)
                .await?,
        );
    }
    Ok(outcomes)
}
