//! The client leg of an HTTP connection, with its timeouts.
//!
//! hyper's own header timeout closes the connection without a word, and
//! cannot tell a keep-alive client thinking about its next request from one
//! trickling a request in. This wrapper can: it knows the connection's
//! [`Phase`] (shared with the request handler) and holds one timer, re-armed
//! only when the phase changes or the timer fires:
//!
//! - waiting for a request: `keepalive_timeout`, then closed quietly;
//! - reading a request's head (from its first byte): `header_timeout`, then
//!   `408 Request Timeout` and closed;
//! - waiting for the member's answer: no timer here (the handler's own
//!   timeout answers 504);
//! - sending a response, or tunnelling after an upgrade: `idle_timeout`
//!   without a byte moving either way, then closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::stats::{HttpEvent, VirtualStats};
use crate::streams::Front;

/// Where a client connection is between requests. Written by the I/O
/// wrapper (a first byte arrives) and by the request handler (a request
/// starts, its response ends), on the same task.
#[derive(Debug, Default)]
pub(crate) struct Phase(AtomicU8);

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const WAITING: u8 = 2;
const SENDING: u8 = 3;
const TUNNEL: u8 = 4;

impl Phase {
    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    /// A request's head is complete; the member is being asked.
    pub(crate) fn waiting(&self) {
        self.0.store(WAITING, Ordering::Relaxed);
    }

    /// The response is on its way to the client.
    pub(crate) fn sending(&self) {
        self.0.store(SENDING, Ordering::Relaxed);
    }

    /// The connection was upgraded and is a tunnel for good.
    pub(crate) fn tunnel(&self) {
        self.0.store(TUNNEL, Ordering::Relaxed);
    }

    /// The response is done: wait for the next request (unless the
    /// connection became a tunnel meanwhile).
    pub(crate) fn done(&self) {
        let _ = self
            .0
            .compare_exchange(SENDING, IDLE, Ordering::Relaxed, Ordering::Relaxed);
        let _ = self
            .0
            .compare_exchange(WAITING, IDLE, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The three limits, from the virtual's plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub header: Duration,
    pub keepalive: Duration,
    pub idle: Duration,
}

/// Sent when a request's head does not arrive in time.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 30\r\nconnection: close\r\n\r\nrequest headers took too long\n";

/// The client's stream, watched by one timer.
pub(crate) struct ClientIo {
    stream: Front,
    phase: Arc<Phase>,
    timeouts: Timeouts,
    timer: Pin<Box<Sleep>>,
    /// The phase the timer was armed for.
    armed: u8,
    /// Last byte moved while sending or tunnelling.
    last_activity: Instant,
    stats: Arc<VirtualStats>,
}

impl ClientIo {
    pub(crate) fn new(
        stream: Front,
        phase: Arc<Phase>,
        timeouts: Timeouts,
        stats: Arc<VirtualStats>,
    ) -> ClientIo {
        let now = Instant::now();
        ClientIo {
            stream,
            phase,
            timeouts,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.keepalive)),
            armed: IDLE,
            last_activity: now,
            stats,
        }
    }

    fn wrote_bytes(&mut self) {
        if matches!(self.phase.get(), SENDING | TUNNEL) {
            self.last_activity = Instant::now();
        }
    }

    fn read_bytes(&mut self) {
        match self.phase.get() {
            IDLE => {
                // The first byte of a request: its head must be complete
                // within header_timeout from now.
                self.phase.0.store(HEAD, Ordering::Relaxed);
                self.armed = HEAD;
                let deadline = Instant::now() + self.timeouts.header;
                self.timer.as_mut().reset(deadline);
            }
            SENDING | TUNNEL => self.last_activity = Instant::now(),
            _ => {}
        }
    }

    /// Polls the timer of the current phase; `Ready` when it ran out.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let phase = self.phase.get();
        if phase != self.armed {
            self.armed = phase;
            let now = Instant::now();
            self.last_activity = now;
            let deadline = match phase {
                IDLE => now + self.timeouts.keepalive,
                HEAD => now + self.timeouts.header,
                // The handler times the member out itself.
                WAITING => return Poll::Pending,
                _ => now + self.timeouts.idle,
            };
            self.timer.as_mut().reset(deadline);
        }
        if phase == WAITING {
            return Poll::Pending;
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match phase {
                IDLE => return Poll::Ready(Ok(())),
                HEAD => {
                    self.stats.http.count(HttpEvent::RequestTimeout);
                    // Best effort: the socket is idle and its buffer empty,
                    // so this small write goes out at once or not at all.
                    let _ = Pin::new(&mut self.stream).poll_write(cx, REQUEST_TIMEOUT);
                    let _ = Pin::new(&mut self.stream).poll_flush(cx);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request headers not complete within header_timeout",
                    )));
                }
                _ => {
                    let due = self.last_activity + self.timeouts.idle;
                    if due > Instant::now() {
                        self.timer.as_mut().reset(due);
                        continue;
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no data moved within idle_timeout",
                    )));
                }
            }
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.read_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // A quiet client: it is the timer's turn. Ready(Ok) with no
            // bytes is end of stream, which hyper takes as a clean close.
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.wrote_bytes();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.wrote_bytes();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_408_response_is_well_formed() {
        let text = std::str::from_utf8(super::REQUEST_TIMEOUT).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }
}
