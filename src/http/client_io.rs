//! The client leg of an HTTP connection, with its timeouts.
//!
//! hyper's own header timeout closes the connection without a word, and
//! cannot tell a keep-alive client thinking about its next request from one
//! trickling a request in. This wrapper can: it knows the connection's
//! [`Phase`] (shared with the request handlers) and holds one timer,
//! re-armed only when the phase changes or the timer fires:
//!
//! - no request in flight: `keepalive_timeout`, then closed quietly;
//! - reading an HTTP/1 request's head (from its first byte):
//!   `header_timeout`, then `408 Request Timeout` and closed;
//! - a request waiting for its member's answer: no timer here (the
//!   handler's own timeout answers 504);
//! - responses on their way, or tunnelling after an upgrade:
//!   `idle_timeout` without a byte moving either way, then closed.
//!
//! An HTTP/2 connection carries many requests at once, so the phase is
//! counted, not switched: the connection is waiting while any of its
//! requests waits, sending while any response is on its way, idle when
//! none is in flight. Its control frames (PING, SETTINGS) do not make it
//! busy: a client that opens streams for nothing is closed after
//! `keepalive_timeout` like any other. HTTP/2 has no head phase: hyper
//! hands a request over only once its headers are complete, and until then
//! the connection counts as idle.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::stats::{HttpEvent, VirtualStats};
use crate::streams::Front;

/// Where a client connection is between and during its requests. Written
/// by the I/O wrapper (a first byte arrives) and by the request handlers
/// (through their [`InFlight`] guards).
#[derive(Debug, Default)]
pub(crate) struct Phase {
    /// Requests in flight: from their head to the end of their response.
    requests: AtomicU32,
    /// Of those, the ones still waiting for their member's answer.
    waiting: AtomicU32,
    /// HTTP/1: the first byte of the next request has arrived.
    head: AtomicBool,
    /// HTTP/1: the connection was upgraded and is a tunnel for good.
    tunnel: AtomicBool,
    /// HTTP/2: many requests at once, and no head phase.
    multiplexed: AtomicBool,
}

/// What the connection's timer is armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Head,
    Waiting,
    Sending,
    Tunnel,
}

impl Phase {
    fn state(&self) -> State {
        if self.tunnel.load(Ordering::Relaxed) {
            State::Tunnel
        } else if self.waiting.load(Ordering::Relaxed) > 0 {
            State::Waiting
        } else if self.requests.load(Ordering::Relaxed) > 0 {
            State::Sending
        } else if self.head.load(Ordering::Relaxed) {
            State::Head
        } else {
            State::Idle
        }
    }

    /// The connection speaks HTTP/2.
    pub(crate) fn multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
    }

    /// A request's head is complete; its member is being asked. The
    /// returned guard follows the request to the end of its response.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.head.store(false, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        InFlight {
            phase: Arc::clone(self),
            waiting: true,
        }
    }

    /// The connection was upgraded and is a tunnel for good.
    pub(crate) fn tunnel(&self) {
        self.tunnel.store(true, Ordering::Relaxed);
    }
}

/// One request in flight on a connection; dropping it (with the response
/// body, or with the request when the client gave up) ends it.
#[derive(Debug)]
pub(crate) struct InFlight {
    phase: Arc<Phase>,
    waiting: bool,
}

impl InFlight {
    /// The response is on its way to the client.
    pub(crate) fn sending(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.phase.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.sending();
        self.phase.requests.fetch_sub(1, Ordering::Relaxed);
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
    armed: State,
    /// What [`sniff`] read to tell the protocol, handed to hyper first.
    sniffed: Sniffed,
    /// Last byte moved while sending or tunnelling.
    last_activity: Instant,
    stats: Arc<VirtualStats>,
}

impl ClientIo {
    pub(crate) fn new(
        stream: Front,
        sniffed: Sniffed,
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
            armed: State::Idle,
            sniffed,
            last_activity: now,
            stats,
        }
    }

    fn wrote_bytes(&mut self) {
        if matches!(self.phase.state(), State::Sending | State::Tunnel) {
            self.last_activity = Instant::now();
        }
    }

    fn read_bytes(&mut self) {
        match self.phase.state() {
            State::Idle if !self.phase.multiplexed.load(Ordering::Relaxed) => {
                // The first byte of a request: its head must be complete
                // within header_timeout from now.
                self.phase.head.store(true, Ordering::Relaxed);
                self.armed = State::Head;
                let deadline = Instant::now() + self.timeouts.header;
                self.timer.as_mut().reset(deadline);
            }
            State::Sending | State::Tunnel => self.last_activity = Instant::now(),
            _ => {}
        }
    }

    /// Polls the timer of the current phase; `Ready` when it ran out.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let phase = self.phase.state();
        if phase != self.armed {
            self.armed = phase;
            let now = Instant::now();
            self.last_activity = now;
            let deadline = match phase {
                State::Idle => now + self.timeouts.keepalive,
                State::Head => now + self.timeouts.header,
                // The handler times the member out itself.
                State::Waiting => return Poll::Pending,
                State::Sending | State::Tunnel => now + self.timeouts.idle,
            };
            self.timer.as_mut().reset(deadline);
        }
        if phase == State::Waiting {
            return Poll::Pending;
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match phase {
                State::Idle => return Poll::Ready(Ok(())),
                State::Head => {
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
        if let Some(sniffed) = this.sniffed.take(buf.remaining()) {
            buf.put_slice(sniffed);
            this.read_bytes();
            return Poll::Ready(Ok(()));
        }
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

/// The HTTP/2 client preface: a client speaking HTTP/2 without TLS (by
/// prior knowledge) starts with it.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// The first bytes of a connection, read to tell its protocol and then
/// given to hyper as if unread.
#[derive(Debug, Default)]
pub(crate) struct Sniffed {
    bytes: [u8; PREFACE.len()],
    start: u8,
    end: u8,
}

impl Sniffed {
    /// Up to `room` of the bytes not yet handed over; `None` when all were.
    fn take(&mut self, room: usize) -> Option<&[u8]> {
        let (start, end) = (usize::from(self.start), usize::from(self.end));
        if start == end || room == 0 {
            return None;
        }
        let taken = (end - start).min(room);
        self.start += taken as u8;
        Some(&self.bytes[start..start + taken])
    }
}

/// Reads a client's first bytes until they show its protocol: HTTP/2 if
/// they are the preface, HTTP/1 as soon as they differ from it. `None`
/// when the client closes, fails, or sends nothing within `patience`.
pub(crate) async fn sniff(client: &mut Front, patience: Duration) -> Option<(Protocol, Sniffed)> {
    use tokio::io::AsyncReadExt;
    let mut sniffed = Sniffed::default();
    let reading = async {
        loop {
            let end = usize::from(sniffed.end);
            let read = client.read(&mut sniffed.bytes[end..]).await.ok()?;
            if read == 0 {
                return None;
            }
            sniffed.end += read as u8;
            let seen = &sniffed.bytes[..usize::from(sniffed.end)];
            if seen != &PREFACE[..seen.len()] {
                return Some(Protocol::Http1);
            }
            if seen.len() == PREFACE.len() {
                return Some(Protocol::Http2);
            }
        }
    };
    let protocol = tokio::time::timeout(patience, reading).await.ok()??;
    Some((protocol, sniffed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_bytes_tell_the_protocol_and_are_handed_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        for (sent, expected) in [
            (
                &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x04"[..],
                Some(Protocol::Http2),
            ),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Some(Protocol::Http1)),
            (b"PRIORITY / HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"PRI * HT", None),
            (b"", None),
        ] {
            let sender = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
                // In pieces: the decision waits for enough bytes.
                for piece in sent.chunks(5) {
                    client.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                client
            });
            let (stream, _) = listener.accept().await.unwrap();
            let client = sender.await.unwrap();
            drop(client);
            let mut front = Front::Plain(stream);
            let found = sniff(&mut front, Duration::from_secs(2)).await;
            assert_eq!(found.as_ref().map(|f| f.0), expected, "{sent:?}");
            if let Some((_, mut sniffed)) = found {
                let mut replayed = Vec::new();
                while let Some(bytes) = sniffed.take(7) {
                    replayed.extend_from_slice(bytes);
                }
                let length = replayed.len();
                assert!(length > 0 && length <= sent.len());
                assert_eq!(replayed, sent[..length]);
            }
        }
    }

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
