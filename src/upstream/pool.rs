//! Plain-HTTP/1.1 connections to one backend, kept open and reused. A request takes an
//! idle connection (or opens one), writes its head and body, and reads the answer on it;
//! `http1` says what the bytes mean. The connection goes back to the pool once the
//! answer's body has been read to its end. A connection is a socket and what was read
//! from it: no task, no channel and no write buffer of its own, so an open stream holds
//! only its read buffer, and no other task is woken on the way. hyper's general client
//! does the same for any origin and protocol with a task, a request channel and two
//! buffers per connection; HTTPS backends still use it (`client`).

use std::io::{self, IoSlice};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use axum::http::{Method, Request, Uri};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http1::{self, Decoder, Head, Step, WireError};
use crate::deadline::Deadline;

/// Idle connections older than this are closed rather than reused (as hyper's client does).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A read asks for this much room at first; a read that fills it doubles it, up to
/// `READ_MAX`, for the rest of that answer. An event of a stream is a few hundred bytes.
const READ_FIRST: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;

/// One connection: its socket, and its deadline for the answer's head, then for each piece
/// of the body (one timer for the connection's life, `crate::deadline`).
struct Conn {
    socket: Socket,
    deadline: Deadline,
}

/// A connection's socket and what has been read from it and not yet taken.
struct Socket {
    stream: TcpStream,
    read: BytesMut,
    /// The room the next read asks for.
    want: usize,
}

impl Socket {
    /// Reads what the socket has into `read`, with room for at least `wants` bytes: 0 at
    /// the connection's end. Cancel-safe.
    async fn read_more(&mut self, wants: usize) -> io::Result<usize> {
        let want = self.want.max(wants);
        if self.read.capacity() - self.read.len() < want {
            self.read.reserve(want);
        }
        let room = self.read.capacity() - self.read.len();
        let n = self.stream.read_buf(&mut self.read).await?;
        if n == room {
            self.want = (self.want * 2).min(READ_MAX);
        }
        Ok(n)
    }

    /// Writes the request: `Err(true)` if none of it was sent.
    async fn write(&mut self, head: &[u8], body: &[u8]) -> Result<(), (bool, io::Error)> {
        let mut sent = 0;
        while sent < head.len() + body.len() {
            let parts = match head.get(sent..) {
                Some(rest) if !rest.is_empty() => [IoSlice::new(rest), IoSlice::new(body)],
                _ => [IoSlice::new(&body[sent - head.len()..]), IoSlice::new(&[])],
            };
            match self.stream.write_vectored(&parts).await {
                Ok(0) => return Err((sent == 0, io::ErrorKind::WriteZero.into())),
                Ok(n) => sent += n,
                Err(e) => return Err((sent == 0, e)),
            }
        }
        Ok(())
    }

    /// Reads until an answer's head has come.
    async fn read_head(&mut self, method: &Method) -> Result<Head, WireError> {
        loop {
            if !self.read.is_empty()
                && let Some(head) = http1::take_head(&mut self.read, method)?
            {
                return Ok(head);
            }
            if self.read_more(0).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }

    /// Whether an idle connection can take a request: the backend has neither closed it
    /// nor sent anything on it. No system call unless the socket was seen readable.
    fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// The open connections to one `http://` backend.
pub struct Pool {
    /// `host:port`, to connect to.
    authority: String,
    connect_timeout: Duration,
    idle: Mutex<Vec<(Conn, Instant)>>,
}

/// An answer's body, read from its connection, which goes back to the pool once the body
/// has been read to its end (and is closed if the body is dropped before).
pub struct Reader {
    /// `None` once the body has ended or failed.
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    pool: Arc<Pool>,
}

impl Reader {
    /// The next piece of the body, as it was read; `None` at its end. Cancel-safe.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, WireError> {
        self.next_chunk_until(None)
            .await
            .unwrap_or(Err(WireError::Closed))
    }

    /// `next_chunk`, unless `idle` passes before a piece arrives (`None`). A piece read
    /// already is taken without looking at the time. Cancel-safe.
    pub async fn next_chunk_within(
        &mut self,
        idle: Duration,
    ) -> Option<Result<Option<Bytes>, WireError>> {
        self.next_chunk_until(Some(idle)).await
    }

    async fn next_chunk_until(
        &mut self,
        idle: Option<Duration>,
    ) -> Option<Result<Option<Bytes>, WireError>> {
        loop {
            let Some(Conn { socket, deadline }) = self.conn.as_mut() else {
                return Some(match self.decoder.ended() {
                    true => Ok(None),
                    false => Err(WireError::Closed),
                });
            };
            let step = match self.decoder.step(&mut socket.read) {
                Ok(Step::More) => {
                    let wants = self.decoder.wants().saturating_sub(socket.read.len());
                    let read = match idle {
                        Some(idle) => {
                            deadline.set(tokio::time::Instant::now() + idle);
                            deadline.within(socket.read_more(wants)).await?
                        }
                        None => socket.read_more(wants).await,
                    };
                    match read {
                        Ok(0) => self.decoder.closed(),
                        Ok(_) => continue,
                        Err(e) => Err(e.into()),
                    }
                }
                step => step,
            };
            match step {
                Ok(Step::Data(data)) => return Some(Ok(Some(data))),
                Ok(Step::End | Step::More) => {
                    self.give_back();
                    return Some(Ok(None));
                }
                Err(e) => {
                    self.conn = None;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Puts the connection back in the pool if it can carry another request: the backend
    /// keeps it open (never after a body that ran to the close), and sent nothing after
    /// the body.
    fn give_back(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && conn.socket.read.is_empty() {
            conn.socket.want = READ_FIRST;
            if conn.socket.read.capacity() > READ_FIRST {
                conn.socket.read = BytesMut::new();
            }
            conn.deadline.forget_waiter();
            self.pool.idle.lock().push((conn, Instant::now()));
        }
    }
}

/// Why a request got no answer's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made: the request never reached the backend.
    Connect,
    /// No head came within the first-byte timeout (the request may have reached it).
    TimedOut,
    /// The backend failed to answer on a connection.
    Answer,
}

/// A request that got no answer's head, and why.
#[derive(Debug)]
pub struct PoolError {
    pub failure: Failure,
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
    /// connection, or a new one, and reads the answer's head, all within `first_byte`
    /// (a connection that times out is closed). A reused connection that turns out to be
    /// closed before any of the request was written is dropped, and the request goes on
    /// the next one.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<Bytes>,
        first_byte: Duration,
    ) -> Result<(Head, Reader), PoolError> {
        let until = tokio::time::Instant::now() + first_byte;
        let head = http1::request_head(&request);
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => match tokio::time::timeout_at(until, self.connect(until)).await {
                    Ok(connected) => (connected?, false),
                    Err(_) => return Err(PoolError::timed_out()),
                },
            };
            let Conn { socket, deadline } = &mut conn;
            deadline.set(until);
            let answer = deadline.within(async {
                match socket.write(&head, request.body()).await {
                    Ok(()) => socket.read_head(request.method()).await.map(Some),
                    Err((true, _)) if reused => Ok(None),
                    Err((_, e)) => Err(e.into()),
                }
            });
            let head = match answer.await {
                None => return Err(PoolError::timed_out()),
                Some(Ok(Some(head))) => head,
                Some(Ok(None)) => continue, // closed before any of the request was written
                Some(Err(e)) => return Err(PoolError::failed(e)),
            };
            let reader = Reader {
                conn: Some(conn),
                decoder: Decoder::new(head.body),
                keep_alive: head.keep_alive,
                pool: self.clone(),
            };
            return Ok((head, reader));
        }
    }

    /// The most recently used idle connection that is still open and young enough.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock();
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && conn.socket.is_open() {
                return Some(conn);
            }
        }
        None
    }

    /// A new connection, whose deadline starts at `until`.
    async fn connect(&self, until: tokio::time::Instant) -> Result<Conn, PoolError> {
        let connecting = TcpStream::connect(self.authority.as_str());
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(PoolError::connect(format!("tcp connect error: {e}"))),
            Err(_) => return Err(PoolError::connect("tcp connect timed out".into())),
        };
        stream
            .set_nodelay(true)
            .map_err(|e| PoolError::connect(format!("tcp setup error: {e}")))?;
        Ok(Conn {
            socket: Socket {
                stream,
                read: BytesMut::new(),
                want: READ_FIRST,
            },
            deadline: Deadline::new(until),
        })
    }
}

impl PoolError {
    fn connect(message: String) -> PoolError {
        PoolError {
            failure: Failure::Connect,
            error: message.into(),
        }
    }

    fn failed(error: WireError) -> PoolError {
        PoolError {
            failure: Failure::Answer,
            error: error.into(),
        }
    }

    fn timed_out() -> PoolError {
        PoolError {
            failure: Failure::TimedOut,
            error: "no answer in time".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    /// How a test backend answers a request's body.
    type Answer = fn(&[u8]) -> Vec<u8>;

    /// The first-byte wait of requests that are answered at once.
    const WAIT: Duration = Duration::from_secs(10);

    fn ok(_: &[u8]) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
    }

    /// A backend that reads each request (its head, then the body its length gives) and
    /// answers it with `answer`, counting its connections; with `close_after`, it closes
    /// each connection after one answer (without saying so).
    async fn backend(close_after: bool, answer: Answer) -> (Uri, Arc<AtomicUsize>) {
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
                    loop {
                        let end = loop {
                            match seen.windows(4).position(|w| w == b"\r\n\r\n") {
                                Some(at) => break at + 4,
                                None if !fill(&mut socket, &mut seen).await => return,
                                None => {}
                            }
                        };
                        let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                        let length: usize = (head.split("content-length: ").nth(1))
                            .and_then(|rest| rest.split("\r\n").next()?.parse().ok())
                            .unwrap_or(0);
                        while seen.len() < end + length {
                            if !fill(&mut socket, &mut seen).await {
                                return;
                            }
                        }
                        let body: Vec<u8> = seen.drain(..end + length).skip(end).collect();
                        if socket.write_all(&answer(&body)).await.is_err() || close_after {
                            return;
                        }
                    }
                });
            }
        });
        (url.parse().unwrap(), accepted)
    }

    /// Reads what `socket` has onto `seen`: false at its end.
    async fn fill(socket: &mut TcpStream, seen: &mut Vec<u8>) -> bool {
        seen.reserve(1 << 16);
        matches!(socket.read_buf(seen).await, Ok(n) if n > 0)
    }

    fn request(url: &Uri, body: Bytes) -> Request<Bytes> {
        Request::post(url.path())
            .header(axum::http::header::HOST, url.authority().unwrap().as_str())
            .body(body)
            .unwrap()
    }

    fn small(url: &Uri) -> Request<Bytes> {
        request(url, Bytes::from_static(b"{}"))
    }

    async fn read_to_end(mut reader: Reader) -> Bytes {
        let mut read = Vec::new();
        while let Some(data) = reader.next_chunk().await.unwrap() {
            read.extend_from_slice(&data);
        }
        Bytes::from(read)
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read_to_the_end() {
        let (url, accepted) = backend(false, ok).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        for _ in 0..3 {
            let (_, reader) = pool.send(small(&url), WAIT).await.unwrap();
            assert_eq!(read_to_end(reader).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // An answer left unread keeps its connection out of the pool.
        let (_, _unread) = pool.send(small(&url), WAIT).await.unwrap();
        let (_, reader) = pool.send(small(&url), WAIT).await.unwrap();
        assert_eq!(read_to_end(reader).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_are_kept_as_answers_and_backends_allow() {
        fn chunked(_: &[u8]) -> Vec<u8> {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              3\r\ndat\r\n1\r\na\r\n0\r\n\r\n"
                .to_vec()
        }
        fn to_the_close(_: &[u8]) -> Vec<u8> {
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()
        }
        fn closing(_: &[u8]) -> Vec<u8> {
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx".to_vec()
        }
        for (answer, close, body, connections) in [
            (chunked as Answer, false, "data", 1),
            (to_the_close, true, "until the end", 3),
            (closing, false, "x", 3),
            // A backend that closes each connection after one answer, without saying so.
            (ok, true, "ok", 3),
        ] {
            let (url, accepted) = backend(close, answer).await;
            let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
            for _ in 0..3 {
                let (_, reader) = pool.send(small(&url), WAIT).await.unwrap();
                assert_eq!(read_to_end(reader).await, body);
            }
            assert_eq!(accepted.load(Ordering::SeqCst), connections, "{body}");
        }
    }

    #[tokio::test]
    async fn long_requests_and_answers_go_whole_and_the_read_buffer_starts_small_again() {
        // The answer echoes the request's body, so both directions carry 3 MB.
        fn echo(body: &[u8]) -> Vec<u8> {
            let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            answer.push_str(std::str::from_utf8(body).unwrap());
            answer.into_bytes()
        }
        let (url, accepted) = backend(false, echo).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        let long: String = (0..300_000).map(|i| format!("{:09}\n", i)).collect();
        let (_, reader) = pool
            .send(request(&url, Bytes::from(long.clone())), WAIT)
            .await
            .unwrap();
        assert_eq!(read_to_end(reader).await, long);
        {
            let idle = pool.idle.lock();
            let (conn, _) = idle.last().expect("the connection went back");
            assert_eq!(conn.socket.want, READ_FIRST);
            assert!(conn.socket.read.capacity() <= READ_FIRST);
        }
        let (_, reader) = pool.send(small(&url), WAIT).await.unwrap();
        assert_eq!(read_to_end(reader).await, "{}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_backend_silent_past_the_first_byte_wait_times_out_and_its_connection_goes() {
        fn silent(_: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        let (url, accepted) = backend(false, silent).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        let started = std::time::Instant::now();
        let error = pool
            .send(small(&url), Duration::from_millis(100))
            .await
            .err()
            .expect("no answer");
        assert_eq!(error.failure, Failure::TimedOut, "{}", error.error);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(pool.idle.lock().is_empty());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_reused_past_its_first_deadline_waits_on_each_requests_own() {
        let (url, accepted) = backend(false, ok).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        let wait = Duration::from_millis(300);
        // Five requests 100 ms apart: the timer set for the first has fired by the fourth,
        // whose own deadline is still to come.
        for _ in 0..5 {
            let (_, reader) = pool.send(small(&url), wait).await.unwrap();
            assert_eq!(read_to_end(reader).await, "ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_times_out_on_each_wait_for_a_piece() {
        fn stalled(_: &[u8]) -> Vec<u8> {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec()
        }
        let (url, _) = backend(false, stalled).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        let (_, mut reader) = pool.send(small(&url), WAIT).await.unwrap();
        let idle = Duration::from_millis(50);
        let first = reader.next_chunk_within(idle).await;
        assert_eq!(first.unwrap().unwrap().unwrap(), "abc");
        for _ in 0..2 {
            let started = std::time::Instant::now();
            assert!(reader.next_chunk_within(idle).await.is_none(), "timed out");
            assert!(started.elapsed() >= idle);
        }
    }

    #[tokio::test]
    async fn a_body_whose_read_was_given_up_closes_its_connection() {
        fn slow(_: &[u8]) -> Vec<u8> {
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc".to_vec()
        }
        let (url, accepted) = backend(false, slow).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        let (_, mut reader) = pool.send(small(&url), WAIT).await.unwrap();
        // A short body is handed out whole: the read waits for the rest, and one that times
        // out leaves what came where it was.
        for _ in 0..2 {
            let waited = tokio::time::timeout(Duration::from_millis(50), reader.next_chunk());
            assert!(waited.await.is_err());
            let conn = reader.conn.as_ref().unwrap();
            assert_eq!(&conn.socket.read[..], b"abc");
            assert_eq!(reader.decoder.body, http1::Body::Length(9));
        }
        drop(reader);
        let (_, reader) = pool.send(small(&url), WAIT).await.unwrap();
        drop(reader);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(pool.idle.lock().is_empty());
    }

    #[tokio::test]
    async fn an_answer_cut_off_is_an_error_and_its_connection_is_not_reused() {
        fn cut(_: &[u8]) -> Vec<u8> {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab".to_vec()
        }
        let (url, _) = backend(true, cut).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        let (head, mut reader) = pool.send(small(&url), WAIT).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(reader.next_chunk().await.unwrap().unwrap(), "ab");
        let error = reader.next_chunk().await.unwrap_err();
        assert!(matches!(error, WireError::Closed), "{error}");
        assert!(matches!(reader.next_chunk().await, Err(WireError::Closed)));
        assert!(pool.idle.lock().is_empty());
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let url: Uri = format!("http://{closed}/v1/x").parse().unwrap();
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        let error = pool
            .send(small(&url), WAIT)
            .await
            .err()
            .expect("no connection");
        assert_eq!(error.failure, Failure::Connect);
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
