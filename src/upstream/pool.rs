//! Plain-HTTP/1 connections to one backend, kept open and reused. A request takes an idle
//! connection (or opens one), and its response gives it back once the body has been read to
//! its end. A connection has no task of its own: the request that holds it drives its I/O
//! while it waits for the answer and reads the body, so no other task is woken on the
//! way. hyper's general client does the same for any origin and protocol, at the cost of a
//! task per connection, a pool keyed by origin and a task spawned per request to give the
//! connection back; HTTPS backends still use it (`client`).

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{Request, Response, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections older than this are closed rather than reused (as hyper's client does).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Driver = Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// One connection: where requests go in, and the future that does its I/O.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once the connection has ended.
    driver: Option<Driver>,
}

impl Conn {
    /// Does the connection's pending I/O; false once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(driver) = &mut self.driver
            && let Poll::Ready(ended) = driver.as_mut().poll(cx)
        {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "backend connection closed with an error");
            }
            self.driver = None;
        }
        self.driver.is_some()
    }

    fn is_open(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }
}

/// The open connections to one `http://` backend.
pub struct Pool {
    /// `host:port`, to connect to.
    authority: String,
    connect_timeout: Duration,
    idle: Mutex<Vec<(Conn, Instant)>>,
}

/// A connection lent to one request: its holder drives it while reading the answer, and
/// gives it back once the body has ended.
pub struct Lease {
    conn: Conn,
    pool: Arc<Pool>,
}

impl Lease {
    /// Does the connection's pending I/O (call it whenever the answer's body is polled).
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        self.conn.drive(cx);
    }

    pub fn give_back(self) {
        if self.conn.is_open() {
            let mut idle = self.pool.idle.lock();
            idle.push((self.conn, Instant::now()));
        }
    }
}

/// Why a request got no response: no connection could be made (`connect`), or the backend
/// failed to answer on one.
#[derive(Debug)]
pub struct PoolError {
    pub connect: bool,
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

impl Pool {
    /// A pool for `url`'s authority (`http` only; the default port is 80).
    pub fn new(url: &Uri, connect_timeout: Duration) -> anyhow::Result<Arc<Pool>> {
        let host = url
            .host()
            .ok_or_else(|| anyhow::anyhow!("{url} has no host"))?;
        let port = url.port_u16().unwrap_or(80);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Arc::new(Pool {
            authority: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Sends `request` (its URI in origin form, its `Host` header set) on an idle
    /// connection, or a new one. A reused connection that turns out to be closed before the
    /// request was written is dropped and the request goes on the next one.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            // A connection that has ended answers "closed" here.
            let ready = poll_fn(|cx| {
                conn.drive(cx);
                conn.sender.poll_ready(cx)
            });
            if let Err(e) = ready.await {
                if reused {
                    continue;
                }
                return Err(PoolError::failed(e));
            }
            let mut sending = pin!(conn.sender.try_send_request(request));
            let sent = poll_fn(|cx| {
                conn.drive(cx);
                sending.as_mut().poll(cx)
            });
            match sent.await {
                Ok(response) => {
                    let pool = self.clone();
                    return Ok((response, Lease { conn, pool }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(PoolError::failed(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open and young enough.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock();
        while let Some((conn, since)) = idle.pop() {
            if conn.is_open() && since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
        let connecting = TcpStream::connect(self.authority.as_str());
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(PoolError::connect(format!("tcp connect error: {e}"))),
            Err(_) => return Err(PoolError::connect("tcp connect timed out".into())),
        };
        stream
            .set_nodelay(true)
            .map_err(|e| PoolError::connect(format!("tcp setup error: {e}")))?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::failed)?;
        Ok(Conn {
            sender,
            driver: Some(Box::pin(driver)),
        })
    }
}

impl PoolError {
    fn connect(message: String) -> PoolError {
        PoolError {
            connect: true,
            error: message.into(),
        }
    }

    fn failed(error: hyper::Error) -> PoolError {
        PoolError {
            connect: false,
            error: error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::body::Body;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A backend that answers every request with `ok`, counting its connections; with
    /// `close_after`, it closes each connection after one answer (without saying so).
    async fn backend(close_after: bool) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/x", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        // Requests here carry a body of 2 bytes after their head.
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        while seen.len() < end + 2 {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        seen.drain(..end + 2);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() || close_after {
                            return;
                        }
                    }
                });
            }
        });
        (url.parse().unwrap(), accepted)
    }

    fn request(url: &Uri) -> Request<Full<Bytes>> {
        Request::post(url.path())
            .header(axum::http::header::HOST, url.authority().unwrap().as_str())
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    async fn read_to_end(response: Response<Incoming>, mut lease: Lease) -> Bytes {
        let mut body = response.into_body();
        let mut read = Vec::new();
        while let Some(frame) = poll_fn(|cx| {
            lease.drive(cx);
            Pin::new(&mut body).poll_frame(cx)
        })
        .await
        {
            read.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        lease.give_back();
        Bytes::from(read)
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read_to_the_end() {
        let (url, accepted) = backend(false).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        for _ in 0..3 {
            let (response, lease) = pool.send(request(&url)).await.unwrap();
            assert_eq!(read_to_end(response, lease).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // An answer left unread keeps its connection out of the pool.
        let (_unread, _lease) = pool.send(request(&url)).await.unwrap();
        let (response, lease) = pool.send(request(&url)).await.unwrap();
        assert_eq!(read_to_end(response, lease).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_not_used_again() {
        let (url, accepted) = backend(true).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        for _ in 0..3 {
            let (response, lease) = pool.send(request(&url)).await.unwrap();
            assert_eq!(read_to_end(response, lease).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let url: Uri = format!("http://{closed}/v1/x").parse().unwrap();
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        let error = pool.send(request(&url)).await.err().expect("no connection");
        assert!(error.connect);
        assert!(
            error.error.to_string().contains("refused"),
            "{}",
            error.error
        );
    }

    #[test]
    fn the_authority_has_the_default_port_and_brackets_for_ipv6() {
        let authority = |url: &str| Pool::new(&url.parse().unwrap(), Duration::ZERO).unwrap();
        assert_eq!(authority("http://backend/v1").authority, "backend:80");
        assert_eq!(
            authority("http://10.0.0.2:9000/v1").authority,
            "10.0.0.2:9000"
        );
        assert_eq!(authority("http://[::1]:9000/v1").authority, "[::1]:9000");
    }
}
