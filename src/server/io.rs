//! A client connection's socket, watched: while no request is in flight, the next request's
//! head must start within the keep-alive timeout (the header timeout on a new connection)
//! and be complete within the header timeout of its first byte; past either the connection
//! is closed. While a request is in flight (a slow backend, a long stream) nothing is timed
//! here. Also gives the errors hyper answers by itself (a malformed request, headers or URI
//! too long) the OpenAI-shaped body every other error has.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{ConnectionLimits, Requests};
use crate::deadline::Deadline;
use crate::error::openai_error;

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight and no byte of the next one yet.
    Idle,
    /// The next request's head is arriving.
    Head,
    /// A request is in flight: nothing is timed here.
    Busy,
}

pub struct Watched {
    tcp: TcpStream,
    /// Requests in flight on this connection (see `super::InFlight`).
    requests: Arc<Requests>,
    phase: Phase,
    /// When the current phase times out (unused while busy): later with every request.
    deadline: Deadline,
    header: Duration,
    keep_alive: Duration,
    /// An error response of our own that replaces one of hyper's, still to be written.
    replacing: Option<(Vec<u8>, usize)>,
}

impl Watched {
    pub fn new(tcp: TcpStream, requests: Arc<Requests>, limits: &ConnectionLimits) -> Watched {
        Watched {
            tcp,
            requests,
            // A new connection gets the header timeout to send its first request.
            phase: Phase::Idle,
            deadline: Deadline::new(Instant::now() + limits.header),
            header: limits.header,
            keep_alive: limits.keep_alive,
            replacing: None,
        }
    }

    fn busy(&self) -> bool {
        self.requests.busy()
    }

    fn arm(&mut self, phase: Phase, after: Duration) {
        self.phase = phase;
        self.deadline.set(Instant::now() + after);
    }

    /// Follows the connection's requests: busy while one is in flight, idle with the
    /// keep-alive timeout armed once the last has ended. True when it has just ended.
    fn follow_requests(&mut self) -> bool {
        if self.busy() {
            self.phase = Phase::Busy;
        } else if self.phase == Phase::Busy {
            let keep_alive = self.keep_alive;
            self.arm(Phase::Idle, keep_alive);
            return true;
        }
        false
    }

    /// `follow_requests` for a write or a flush, which also sets the idle timer to wake
    /// this task. The last request ends in the middle of hyper's turn: hyper drops the
    /// response body (and so the request's `InFlight`) while writing, then writes and
    /// flushes the last bytes, and may not read again before it waits. Noticed here, in the
    /// connection's own task, the end needs no wake-up; one from the `InFlight` would come
    /// from this very task (what that costs: `super::in_place`).
    fn follow_requests_writing(&mut self, cx: &mut Context<'_>) {
        if self.follow_requests() && self.deadline.passed(cx) {
            // Only with a timeout shorter than this turn: the next read reports it.
            cx.waker().wake_by_ref();
        }
    }

    /// Writes what is left of a replacement response; ready once all is written.
    fn poll_replacing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacing {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == bytes.len() {
                self.replacing = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Ours for a response head of hyper's own (see `hyper_error`), written while no
    /// request is in flight.
    fn replacement(&self, head: &[u8]) -> Option<Vec<u8>> {
        if self.busy() {
            return None;
        }
        hyper_error(head).map(|status| error_response(status, hyper_message(status)))
    }
}

/// hyper answers a request it cannot parse by itself, before any request reaches the
/// router, with an error status and an empty body without a content type. Every error the
/// router answers has a JSON body (`ApiError`, its fallbacks, `ops::shape_errors`), so
/// such a whole response, written while no request is in flight, is hyper's: its status.
fn hyper_error(head: &[u8]) -> Option<StatusCode> {
    // Every response passes here: most are not errors, told by the status line alone.
    let class = head.strip_prefix(b"HTTP/1.1 ")?.first()?;
    if !matches!(class, b'4' | b'5') {
        return None;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None; // a body follows
    }
    let lower = head[..end].to_ascii_lowercase();
    let lines: Vec<&[u8]> = lower
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii())
        .collect();
    let header = |name: &[u8]| {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(b":"))
            .map(|v| v.trim_ascii())
            .next()
    };
    if header(b"content-type").is_some() || header(b"content-length") != Some(b"0") {
        return None;
    }
    let code = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let status = StatusCode::from_bytes(code).ok()?;
    (status.is_client_error() || status.is_server_error()).then_some(status)
}

fn hyper_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        431 => "the request's headers are too large",
        414 => "the request's URI is too long",
        505 => "only HTTP/1.1 and HTTP/1.0 are served",
        408 => "the request was not received in time",
        _ => "the request is not valid HTTP",
    }
}

/// A whole HTTP/1.1 error response with an OpenAI-shaped body; the connection closes after.
pub fn error_response(status: StatusCode, message: &str) -> Vec<u8> {
    let (kind, code) = match status.as_u16() {
        503 => ("server_error", "service_unavailable"),
        408 => ("invalid_request_error", "request_timeout"),
        _ => ("invalid_request_error", "invalid_request"),
    };
    let body = openai_error(message, kind, code.into(), None).to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    )
    .into_bytes()
}

/// Closes a connection over `server.max_connections`, telling it why if the socket takes
/// the answer at once (it is never waited for).
pub fn refuse(tcp: TcpStream) {
    let answer = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many connections to this gateway; retry shortly",
    );
    let _ = tcp.try_write(&answer);
    drop(tcp);
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.follow_requests();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        match (&read, this.phase) {
            (Poll::Ready(Ok(())), Phase::Idle) if buf.filled().len() > before => {
                let header = this.header;
                this.arm(Phase::Head, header);
            }
            (Poll::Pending, Phase::Idle | Phase::Head) if this.deadline.passed(cx) => {
                let what = if this.phase == Phase::Idle {
                    "no request arrived on an idle connection in time"
                } else {
                    "the request head did not arrive in time"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
            }
            _ => {}
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.follow_requests_writing(cx);
        ready!(self.poll_replacing(cx))?;
        if let Some(ours) = self.replacement(buf) {
            self.replacing = Some((ours, 0));
            // hyper's bytes count as written; ours go out in their place.
            let _ = self.poll_replacing(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.follow_requests_writing(cx);
        ready!(self.poll_replacing(cx))?;
        if let Some(first) = bufs.first()
            && let Some(ours) = self.replacement(first)
        {
            self.replacing = Some((ours, 0));
            let _ = self.poll_replacing(cx)?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.follow_requests_writing(cx);
        ready!(self.poll_replacing(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacing(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_empty_error_answers_are_replaced() {
        let head = |text: &str| text.replace('|', "\r\n").into_bytes();
        let hypers =
            head("HTTP/1.1 431 Request Header Fields Too Large|content-length: 0|date: x||");
        assert_eq!(
            hyper_error(&hypers),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let last_header = head("HTTP/1.1 400 Bad Request|Content-Length: 0||");
        assert_eq!(hyper_error(&last_header), Some(StatusCode::BAD_REQUEST));
        for ours in [
            // A JSON error of the router.
            "HTTP/1.1 404 Not Found|content-type: application/json|content-length: 0||",
            // A body follows.
            "HTTP/1.1 400 Bad Request|content-length: 2||{}",
            // Not an error.
            "HTTP/1.1 200 OK|content-length: 0||",
            "HTTP/1.1 100 Continue||",
            // A length that only starts with 0.
            "HTTP/1.1 400 Bad Request|content-length: 05||",
            // A streamed body.
            "HTTP/1.1 502 Bad Gateway|transfer-encoding: chunked||",
        ] {
            assert_eq!(hyper_error(&head(ours)), None, "{ours}");
        }
        let replaced = String::from_utf8(error_response(
            StatusCode::URI_TOO_LONG,
            hyper_message(StatusCode::URI_TOO_LONG),
        ))
        .unwrap();
        let (head, body) = replaced.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["message"], "the request's URI is too long");
    }
}
