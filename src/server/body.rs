//! Request bodies with an idle and a total timeout (a client that sends part of a body and
//! then nothing, or trickles it, gets 408 and its connection back), and response bodies
//! that keep their request counted as in flight until hyper has sent them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{ConnectionLimits, InFlight};

/// A request body that stopped arriving: after `server.body_idle_timeout_ms` without a
/// byte, or `server.body_timeout_ms` in all.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

pub struct Timed {
    inner: Incoming,
    idle: Duration,
    /// When the whole body must have arrived.
    until: Instant,
    /// Armed only once the body is waited for: a body read in one piece costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

impl Timed {
    pub fn new(inner: Incoming, limits: &ConnectionLimits) -> Timed {
        Timed {
            inner,
            idle: limits.body_idle,
            until: Instant::now() + limits.body_total,
            timer: None,
            timed_out: false,
        }
    }

    fn next_deadline(&self) -> Instant {
        (Instant::now() + self.idle).min(self.until)
    }
}

impl HttpBody for Timed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if this.timer.is_some() {
                    let deadline = this.next_deadline();
                    if let Some(timer) = &mut this.timer {
                        timer.as_mut().reset(deadline);
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = this.next_deadline();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.timed_out = true;
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its request's `InFlight` until hyper drops it (sent or
/// abandoned).
pub struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl Tracked {
    pub fn new(inner: Body, in_flight: InFlight) -> Tracked {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
