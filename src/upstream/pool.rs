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

/// Idle connections older than this are closed rather than reused (as hyper's client does).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A read asks for this much room at first; a read that fills it doubles it, up to
/// `READ_MAX`, for the rest of that answer. An event of a stream is a few hundred bytes.
const READ_FIRST: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;

/// One connection: its socket and what has been read from it and not yet taken.
struct Conn {
    stream: TcpStream,
    read: BytesMut,
    /// The room the next read asks for.
    want: usize,
}

impl Conn {
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
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return match self.decoder.ended() {
                    true => Ok(None),
                    false => Err(WireError::Closed),
                };
            };
            let step = match self.decoder.step(&mut conn.read) {
                Ok(Step::More) => {
                    let wants = self.decoder.wants().saturating_sub(conn.read.len());
                    match conn.read_more(wants).await {
                        Ok(0) => self.decoder.closed(),
                        Ok(_) => continue,
                        Err(e) => Err(e.into()),
                    }
                }
                step => step,
            };
            match step {
                Ok(Step::Data(data)) => return Ok(Some(data)),
                Ok(Step::End | Step::More) => {
                    self.give_back();
                    return Ok(None);
                }
                Err(e) => {
                    self.conn = None;
                    return Err(e);
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
        if self.keep_alive && conn.read.is_empty() {
            conn.want = READ_FIRST;
            if conn.read.capacity() > READ_FIRST {
                conn.read = BytesMut::new();
            }
            self.pool.idle.lock().push((conn, Instant::now()));
        }
    }
}

/// Why a request got no answer: no connection could be made (`connect`), or the backend
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
    /// connection, or a new one, and reads the answer's head. A reused connection that
    /// turns out to be closed before any of the request was written is dropped, and the
    /// request goes on the next one.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<Bytes>,
    ) -> Result<(Head, Reader), PoolError> {
        let head = http1::request_head(&request);
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match conn.write(&head, request.body()).await {
                Ok(()) => {}
                Err((true, _)) if reused => continue,
                Err((_, e)) => return Err(PoolError::failed(e.into())),
            }
            let head = conn
                .read_head(request.method())
                .await
                .map_err(PoolError::failed)?;
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
            if since.elapsed() < IDLE_TIMEOUT && conn.is_open() {
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
        Ok(Conn {
            stream,
            read: BytesMut::new(),
            want: READ_FIRST,
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

    fn failed(error: WireError) -> PoolError {
        PoolError {
            connect: false,
            error: error.into(),
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
            let (_, reader) = pool.send(small(&url)).await.unwrap();
            assert_eq!(read_to_end(reader).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // An answer left unread keeps its connection out of the pool.
        let (_, _unread) = pool.send(small(&url)).await.unwrap();
        let (_, reader) = pool.send(small(&url)).await.unwrap();
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
                let (_, reader) = pool.send(small(&url)).await.unwrap();
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
            .send(request(&url, Bytes::from(long.clone())))
            .await
            .unwrap();
        assert_eq!(read_to_end(reader).await, long);
        {
            let idle = pool.idle.lock();
            let (conn, _) = idle.last().expect("the connection went back");
            assert_eq!(conn.want, READ_FIRST);
            assert!(conn.read.capacity() <= READ_FIRST);
        }
        let (_, reader) = pool.send(small(&url)).await.unwrap();
        assert_eq!(read_to_end(reader).await, "{}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_whose_read_was_given_up_closes_its_connection() {
        fn slow(_: &[u8]) -> Vec<u8> {
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc".to_vec()
        }
        let (url, accepted) = backend(false, slow).await;
        let pool = Pool::new(&url, Duration::from_secs(2)).unwrap();
        let (_, mut reader) = pool.send(small(&url)).await.unwrap();
        // A short body is handed out whole: the read waits for the rest, and one that times
        // out leaves what came where it was.
        for _ in 0..2 {
            let waited = tokio::time::timeout(Duration::from_millis(50), reader.next_chunk());
            assert!(waited.await.is_err());
            let conn = reader.conn.as_ref().unwrap();
            assert_eq!(&conn.read[..], b"abc");
            assert_eq!(reader.decoder.body, http1::Body::Length(9));
        }
        drop(reader);
        let (_, reader) = pool.send(small(&url)).await.unwrap();
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
        let (head, mut reader) = pool.send(small(&url)).await.unwrap();
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
        let error = pool.send(small(&url)).await.err().expect("no connection");
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
