//! The pump when either side is not a plain socket (TLS that vipgate
//! terminates, or starts toward the member): reads and writes through the
//! streams' own `AsyncRead`/`AsyncWrite`, with the same half-close, idle
//! timeout and shutdown as the socket pump, and the same buffer leasing: a
//! buffer is taken from the per-thread spares only when a read finds bytes
//! and given back once they are written and flushed, so an idle TLS
//! connection holds no pump buffer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buffered::Leased;
use super::{CloseReason, LeaveReason, PumpError, PumpOutcome, Side, Tally, LEAVE_GRACE, QUIET};
use crate::stop_signal::StopSignal;

/// Pumps bytes between `client` and `member` until the connection ends,
/// keeping `tally` up to date and heeding its request to leave.
pub async fn run<C, M>(
    mut client: C,
    mut member: M,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    tally: std::sync::Arc<dyn AsRef<Tally> + Send + Sync>,
) -> PumpOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    M: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Direction::default();
    let mut down = Direction::default();
    let mut last_activity = Instant::now();
    let mut leaving: Option<LeaveReason> = None;
    let idle = tokio::time::sleep(idle_timeout);
    let cancelled = StopSignal::new(shutdown);
    tokio::pin!(idle, cancelled);
    let (reason, error) = std::future::poll_fn(|cx| {
        let tally = (*tally).as_ref();
        tally.set_waker(|| cancelled.waker());
        let before = (up.bytes, down.bytes);
        loop {
            if let Poll::Ready(Err(error)) =
                up.poll(cx, &mut client, &mut member, &mut last_activity)
            {
                return Poll::Ready(error.blame(Side::Client, Side::Member));
            }
            if let Poll::Ready(Err(error)) =
                down.poll(cx, &mut member, &mut client, &mut last_activity)
            {
                return Poll::Ready(error.blame(Side::Member, Side::Client));
            }
            match tally.leave() {
                // A drain's deadline: no waiting for the client's close.
                Some(leave) if leave.at_once => {
                    return Poll::Ready((leave.reason.close_reason(), None));
                }
                Some(leave) if leaving.is_none() => {
                    let nothing_in_flight = up.idle() && down.idle();
                    if nothing_in_flight && (leave.forced || last_activity.elapsed() >= QUIET) {
                        // As the socket pump: the client hears the end first
                        // (close_notify and FIN), the member once the client
                        // closed.
                        leaving = Some(leave.reason);
                        down.closing = !down.done;
                        idle.as_mut().reset(Instant::now() + LEAVE_GRACE);
                        continue;
                    } else if !leave.forced {
                        tally.decline();
                    }
                }
                _ => {}
            }
            break;
        }
        if up.done && down.done {
            return Poll::Ready((
                leaving.map_or(CloseReason::Finished, LeaveReason::close_reason),
                None,
            ));
        }
        while idle.as_mut().poll(cx).is_ready() {
            if let Some(reason) = leaving {
                return Poll::Ready((reason.close_reason(), None));
            }
            if last_activity.elapsed() >= idle_timeout {
                return Poll::Ready((CloseReason::IdleTimeout, None));
            }
            idle.as_mut().reset(last_activity + idle_timeout);
        }
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready((CloseReason::Shutdown, None));
        }
        if (up.bytes, down.bytes) != before {
            tally.publish(up.bytes, down.bytes, last_activity);
        }
        Poll::Pending
    })
    .await;
    PumpOutcome {
        bytes_to_member: up.bytes,
        bytes_to_client: down.bytes,
        reason,
        error,
    }
}

/// One direction of a stream connection.
#[derive(Default)]
struct Direction {
    /// A leased buffer holding bytes read but not yet written.
    in_flight: Option<(Leased, usize, usize)>,
    /// Written, not yet flushed (TLS buffers writes into records).
    flushing: bool,
    /// The source ended; passing the end on.
    closing: bool,
    done: bool,
    bytes: u64,
}

impl Direction {
    /// Nothing read and not yet written or flushed.
    fn idle(&self) -> bool {
        self.in_flight.is_none() && !self.flushing
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        last_activity: &mut Instant,
    ) -> Poll<Result<(), PumpError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some((buffer, start, end)) = &mut self.in_flight {
                while start < end {
                    let written =
                        ready!(Pin::new(&mut *writer).poll_write(cx, &buffer[*start..*end]))
                            .map_err(PumpError::Write)?;
                    if written == 0 {
                        return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                    }
                    *start += written;
                    self.bytes += written as u64;
                    *last_activity = Instant::now();
                }
                self.in_flight = None;
                self.flushing = true;
            }
            if self.flushing {
                ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(PumpError::Write)?;
                self.flushing = false;
            }
            if self.closing {
                // A peer that already went away cannot take the end; the
                // other direction reports that.
                let _ = ready!(Pin::new(&mut *writer).poll_shutdown(cx));
                self.done = true;
                continue;
            }
            let mut buffer = Leased::take();
            let mut read = ReadBuf::new(&mut buffer);
            match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                // Nothing to read: the buffer goes back while we wait.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if read.filled().is_empty() => self.closing = true,
                Poll::Ready(Ok(())) => {
                    let end = read.filled().len();
                    self.in_flight = Some((buffer, 0, end));
                }
                // A TLS peer that closes the TCP connection without a
                // close_notify: most clients do; treat it as an end.
                Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    self.closing = true
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(PumpError::Read(error))),
            }
        }
    }
}
