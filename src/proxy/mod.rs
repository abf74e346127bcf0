//! The byte pump: moves bytes both ways between a client and a member until
//! both sides are done, one fails, the connection goes idle for too long or
//! the process shuts down.
//!
//! Each direction runs on its own and passes a FIN on as a half-close, so a
//! client that sends a request and then shuts down its write side still gets
//! the whole reply. A reset or error on one side closes both, passing the
//! reset on to the other side.
//!
//! Bytes move through one of two carriers: `splice` (zero-copy through a
//! pipe) or `buffered` (through a user-space buffer). Each direction starts
//! buffered, which is cheapest for the small messages most connections
//! carry, and moves to splice for good (unless `zero_copy = false`) once a
//! read fills the buffer: a bulk stream. TLS streams always go through
//! buffers, in [`stream`], as TLS must see the bytes. Neither holds a pipe
//! or buffer while the connection is idle: both lease one from a per-thread
//! pool only while bytes are in flight, so ten thousand idle agents cost no
//! buffer memory and no pipe file descriptors, and a busy connection
//! allocates nothing per read.

mod buffered;
mod splice;
pub mod stream;
mod tally;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stop_signal::StopSignal;
pub use tally::{Leave, LeaveReason, Tally, LEAVE_GRACE, QUIET};

/// How one connection is pumped.
#[derive(Debug, Clone, Copy)]
pub struct PumpOptions {
    /// Close after this long with no byte moving either way.
    pub idle_timeout: Duration,
    /// Use splice(2) where the platform has it.
    pub zero_copy: bool,
}

/// Why a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides sent FIN: the normal end.
    Finished,
    IdleTimeout,
    ClientReset,
    MemberReset,
    ClientError,
    MemberError,
    /// Still open when the drain timeout of a shutdown ran out.
    Shutdown,
    /// Its member went down in a pool with `action_on_service_down =
    /// "reset"`.
    MemberDown,
    /// Closed (with a FIN, while quiet) so that its client reconnects to
    /// a less loaded member: the pool's `rebalance`.
    Rebalanced,
    /// Closed (with a FIN, while quiet) at the virtual's
    /// `max_connection_lifetime`.
    LifetimeReached,
    /// Closed (with a FIN) by the operator's timed drain of its member.
    Drained,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Finished => "finished",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::ClientReset => "client reset",
            CloseReason::MemberReset => "member reset",
            CloseReason::ClientError => "client error",
            CloseReason::MemberError => "member error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::MemberDown => "member down",
            CloseReason::Rebalanced => "rebalanced",
            CloseReason::LifetimeReached => "lifetime reached",
            CloseReason::Drained => "drained",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pump gives up when it hands its connection over (binary
/// upgrade): both sockets, the bytes it had read but not yet written (in a
/// pipe each way, so they reach their peer from the next process), and
/// where the connection stands, for [`Pump::resume`] in another process.
#[derive(Debug)]
pub struct Released {
    pub client: TcpStream,
    pub member: TcpStream,
    /// Read from the client, not yet written to the member.
    pub to_member: Option<InFlight>,
    /// Read from the member, not yet written to the client.
    pub to_client: Option<InFlight>,
    pub standing: Standing,
}

pub use splice::InFlight;

/// Where a pumped connection stands: its counters and which directions
/// are over.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Standing {
    pub bytes_to_member: u64,
    pub bytes_to_client: u64,
    /// Since a byte last moved either way, in milliseconds.
    pub idle_ms: u64,
    /// The client sent its FIN, and it was passed on to the member.
    pub client_finished: bool,
    /// The member sent its FIN, and it was passed on to the client.
    pub member_finished: bool,
}

/// How a pump ended.
#[derive(Debug)]
pub enum Pumped {
    /// The connection is over (and both sockets closed).
    Ended(PumpOutcome),
    /// The sockets were handed out, the connection going on elsewhere.
    Released(Released),
}

/// What a finished connection did.
#[derive(Debug)]
pub struct PumpOutcome {
    pub bytes_to_member: u64,
    pub bytes_to_client: u64,
    pub reason: CloseReason,
    /// The error behind an error or reset close.
    pub error: Option<io::Error>,
}

pin_project_lite::pin_project! {
    /// Pumps bytes between a client and a member until the connection
    /// ends, then closes both; resolves to what the connection did.
    ///
    /// A named future with one hand-made poll, rather than an async fn: an
    /// idle connection is mostly this state, every byte of it is multiplied
    /// by tens of thousands of agents, and an async fn keeps its arguments
    /// twice (once as given, once as moved into its body).
    pub struct Pump {
        // Both sockets; taken (and so closed) as the connection ends.
        sockets: Option<(TcpStream, TcpStream)>,
        up: Direction,
        down: Direction,
        last_activity: Instant,
        idle_timeout: Duration,
        #[pin]
        idle: tokio::time::Sleep,
        #[pin]
        stopped: StopSignal,
        // Asked to leave and leaving: the client was sent its FIN.
        leaving: Option<LeaveReason>,
    }
}

impl Pump {
    /// A pump between `client` and `member` that ends when `stop` is
    /// cancelled (a shutdown's drain ran out, or the member went down).
    pub fn new(
        client: TcpStream,
        member: TcpStream,
        options: PumpOptions,
        stop: CancellationToken,
    ) -> Pump {
        Pump {
            sockets: Some((client, member)),
            up: Direction::new(options.zero_copy),
            down: Direction::new(options.zero_copy),
            last_activity: Instant::now(),
            idle_timeout: options.idle_timeout,
            idle: tokio::time::sleep(options.idle_timeout),
            stopped: StopSignal::new(stop),
            leaving: None,
        }
    }

    /// A pump that goes on with a connection another process released
    /// (binary upgrade), where `standing` says it stood.
    pub fn resume(released: Released, options: PumpOptions, stop: CancellationToken) -> Pump {
        let Released {
            client,
            member,
            to_member,
            to_client,
            standing,
        } = released;
        let mut pump = Pump::new(client, member, options, stop);
        // Bytes in flight go first, through the pipe they came in (a
        // connection that then keeps streaming stays on splice, whatever
        // `zero_copy` says: the same bytes either way).
        if let Some(in_flight) = to_member {
            pump.up.transfer = Carried::Splice(Transfer::carrying(in_flight.into_lease()));
        }
        if let Some(in_flight) = to_client {
            pump.down.transfer = Carried::Splice(Transfer::carrying(in_flight.into_lease()));
        }
        pump.up.bytes = standing.bytes_to_member;
        pump.up.done = standing.client_finished;
        pump.down.bytes = standing.bytes_to_client;
        pump.down.done = standing.member_finished;
        let idle_for = Duration::from_millis(standing.idle_ms).min(options.idle_timeout);
        let now = Instant::now();
        pump.last_activity = now.checked_sub(idle_for).unwrap_or(now);
        pump.idle = tokio::time::sleep_until(pump.last_activity + options.idle_timeout);
        pump
    }

    /// Pumps until the connection ends, or until the stop signal fires
    /// and `may_release` says the connection moves (to a successor
    /// process): then it resolves to the sockets, and the bytes read but
    /// not yet written, in pipes. Keeps `tally` up to date and heeds its
    /// request to leave. Polled again after it resolved, it panics.
    pub fn poll_pump(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        tally: &Tally,
        may_release: impl FnOnce() -> bool,
    ) -> Poll<Pumped> {
        let mut this = self.project();
        tally.set_waker(|| this.stopped.waker());
        let before = (this.up.bytes, this.down.bytes);
        // The stop signal first: a connection that moves takes its bytes
        // along as they are.
        let stopped = this.stopped.as_mut().poll(cx).is_ready();
        let mut release_failed = None;
        if stopped && this.sockets.is_some() && may_release() {
            match release(this.sockets, this.up, this.down, *this.last_activity) {
                Ok(released) => return Poll::Ready(Pumped::Released(released)),
                Err(error) => release_failed = Some(error),
            }
        }
        let Some((client, member)) = this.sockets.as_ref() else {
            panic!("a pump polled after it finished");
        };
        let (reason, error) = 'ended: {
            if stopped {
                break 'ended (CloseReason::Shutdown, release_failed);
            }
            if let Poll::Ready(Err(error)) =
                this.up
                    .poll(cx, client, member, this.last_activity, this.down.done)
            {
                break 'ended error.blame(Side::Client, Side::Member);
            }
            if let Poll::Ready(Err(error)) =
                this.down
                    .poll(cx, member, client, this.last_activity, this.up.done)
            {
                break 'ended error.blame(Side::Member, Side::Client);
            }
            if let Some(leave) = tally.leave().filter(|leave| leave.at_once) {
                // A drain's deadline: no waiting for the client's close.
                break 'ended (leave.reason.close_reason(), None);
            }
            if this.leaving.is_none() {
                if let Some(leave) = tally.leave() {
                    let idle = this.up.idle() && this.down.idle();
                    if idle && (leave.forced || this.last_activity.elapsed() >= QUIET) {
                        // The client hears the end first and reconnects; what
                        // it still sends reaches the member, and its FIN ends
                        // the connection. The member's side is closed then.
                        *this.leaving = Some(leave.reason);
                        if !this.down.done {
                            this.down.done = true;
                            let _ = finish(client);
                        }
                        this.idle.as_mut().reset(Instant::now() + LEAVE_GRACE);
                    } else if !leave.forced {
                        tally.decline();
                    }
                }
            }
            if this.up.done && this.down.done {
                let reason = this
                    .leaving
                    .map_or(CloseReason::Finished, LeaveReason::close_reason);
                break 'ended (reason, None);
            }
            // The timer is not pushed back on every read (that would cost a
            // timer-wheel update per read); when it fires it checks, and
            // re-arms for the rest of the window if bytes moved meanwhile.
            while this.idle.as_mut().poll(cx).is_ready() {
                if let Some(reason) = this.leaving {
                    // The client did not close within the grace.
                    break 'ended (reason.close_reason(), None);
                }
                if this.last_activity.elapsed() >= *this.idle_timeout {
                    break 'ended (CloseReason::IdleTimeout, None);
                }
                let deadline = *this.last_activity + *this.idle_timeout;
                this.idle.as_mut().reset(deadline);
            }
            if (this.up.bytes, this.down.bytes) != before {
                tally.publish(this.up.bytes, this.down.bytes, *this.last_activity);
            }
            return Poll::Pending;
        };
        // Pass a reset on: the surviving side sees a reset, not a clean end
        // it could mistake for a complete answer. A connection cut short by
        // vipgate (shutdown, member down) is reset on both sides, as F5
        // does.
        let reset: &[&TcpStream] = match reason {
            CloseReason::ClientReset => &[member],
            CloseReason::MemberReset => &[client],
            CloseReason::Shutdown => &[client, member],
            _ => &[],
        };
        for socket in reset {
            let _ = SockRef::from(*socket).set_linger(Some(Duration::ZERO));
        }
        *this.sockets = None;
        Poll::Ready(Pumped::Ended(PumpOutcome {
            bytes_to_member: this.up.bytes,
            bytes_to_client: this.down.bytes,
            reason,
            error,
        }))
    }
}

/// The sockets, the bytes in flight each way and where the connection
/// stands, taken out of a pump. Fails only if no pipe can be had for bytes
/// that were in a buffer (out of file descriptors).
fn release(
    sockets: &mut Option<(TcpStream, TcpStream)>,
    up: &mut Direction,
    down: &mut Direction,
    last_activity: Instant,
) -> io::Result<Released> {
    let to_member = up.take_in_flight()?;
    let to_client = down.take_in_flight()?;
    let Some((client, member)) = sockets.take() else {
        panic!("a pump released twice");
    };
    Ok(Released {
        client,
        member,
        to_member,
        to_client,
        standing: Standing {
            bytes_to_member: up.bytes,
            bytes_to_client: down.bytes,
            idle_ms: u64::try_from(last_activity.elapsed().as_millis()).unwrap_or(u64::MAX),
            client_finished: up.done,
            member_finished: down.done,
        },
    })
}

/// One direction of a connection.
struct Direction {
    transfer: Carried,
    /// Bytes delivered to the sink so far.
    bytes: u64,
    /// The source ended and its FIN was passed on.
    done: bool,
}

enum Carried {
    Splice(Transfer<splice::Lease>),
    Buffered(Transfer<buffered::Buffer>),
}

impl Direction {
    fn new(zero_copy: bool) -> Direction {
        // Zero-copy starts with the buffer all the same: a small message
        // costs a recv and a send, where a pipe costs a splice in, a splice
        // out and a third that finds nothing (a short splice does not prove
        // the socket drained). The first read that fills the buffer shows a
        // bulk stream, which then moves to splice for good.
        let transfer = Carried::Buffered(Transfer {
            carrier: None,
            hand_over_when_full: zero_copy,
            filled_up: false,
        });
        Direction {
            transfer,
            bytes: 0,
            done: false,
        }
    }

    /// `Ready(Ok)` once the source has ended and its FIN was passed on (and
    /// keeps answering so); `Ready(Err)` on failure; `Pending` while waiting
    /// on either socket.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        source: &TcpStream,
        sink: &TcpStream,
        last_activity: &mut Instant,
        other_done: bool,
    ) -> Poll<Result<(), PumpError>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let mut progress = Progress {
            bytes: &mut self.bytes,
            last_activity,
        };
        loop {
            let result = match &mut self.transfer {
                Carried::Splice(transfer) => transfer.poll(cx, source, sink, &mut progress),
                Carried::Buffered(transfer) => transfer.poll(cx, source, sink, &mut progress),
            };
            match ready!(result)? {
                Flow::Ended => break,
                Flow::Full => self.transfer = Carried::Splice(Transfer::default()),
            }
        }
        self.done = true;
        // When the other direction is already over, both sockets close right
        // after this and the close sends the FIN: spare the system call.
        if !other_done {
            finish(sink)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Direction {
    /// Nothing read and not yet written.
    fn idle(&self) -> bool {
        match &self.transfer {
            Carried::Splice(transfer) => transfer.carrier.as_ref().is_none_or(|c| c.pending() == 0),
            Carried::Buffered(transfer) => {
                transfer.carrier.as_ref().is_none_or(|c| c.pending() == 0)
            }
        }
    }

    /// The bytes read but not yet written, in a pipe; `None` when there
    /// are none (an idle connection: the usual case).
    fn take_in_flight(&mut self) -> io::Result<Option<InFlight>> {
        match &mut self.transfer {
            Carried::Splice(transfer) => Ok(transfer
                .carrier
                .take()
                .filter(|lease| lease.pending() > 0)
                .map(splice::Lease::into_in_flight)),
            Carried::Buffered(transfer) => match transfer.carrier.take() {
                Some(buffer) if buffer.pending() > 0 => {
                    InFlight::holding(buffer.pending_bytes()).map(Some)
                }
                _ => Ok(None),
            },
        }
    }
}

/// Where bytes wait between reading the source and writing the sink: a
/// pipe ([`splice`]) or a buffer ([`buffered`]). Leased only while bytes are
/// in flight.
trait Carrier: Sized {
    /// Leases one from this thread's spares.
    fn take() -> io::Result<Self>;
    /// Bytes read but not yet written.
    fn pending(&self) -> usize;
    /// Bytes one fill can take at most.
    fn capacity(&self) -> usize;
    /// Reads what the source has into the empty carrier; `Ok(0)` when the
    /// source has ended. "Would block" clears the source's read readiness.
    fn fill(&mut self, source: &TcpStream) -> io::Result<usize>;
    /// Writes pending bytes to the sink.
    fn drain(&mut self, sink: &TcpStream) -> io::Result<usize>;
}

/// One direction's transfer through carrier `C`.
struct Transfer<C> {
    /// `Some` only while bytes are in flight.
    carrier: Option<C>,
    /// Stop with [`Flow::Full`] once a read that filled the carrier is
    /// written out.
    hand_over_when_full: bool,
    /// The last read filled the carrier (and handing over is wanted).
    filled_up: bool,
}

impl<C> Default for Transfer<C> {
    fn default() -> Transfer<C> {
        Transfer {
            carrier: None,
            hand_over_when_full: false,
            filled_up: false,
        }
    }
}

/// Why a transfer stopped.
enum Flow {
    /// The source ended.
    Ended,
    /// A read filled the carrier and all of it is written: the source sends
    /// in bulk, and another carrier may take over from here.
    Full,
}

impl<C: Carrier> Transfer<C> {
    /// Moves bytes from `source` to `sink` until the source ends or the
    /// carrier is outgrown (`Ready(Ok)`) or either side would block
    /// (`Pending`).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        source: &TcpStream,
        sink: &TcpStream,
        progress: &mut Progress,
    ) -> Poll<Result<Flow, PumpError>> {
        loop {
            if self
                .carrier
                .as_ref()
                .is_none_or(|carrier| carrier.pending() == 0)
            {
                if self.filled_up {
                    self.carrier = None;
                    return Poll::Ready(Ok(Flow::Full));
                }
                if source
                    .poll_read_ready(cx)
                    .map_err(PumpError::Read)?
                    .is_pending()
                {
                    // Waiting with nothing in flight: hold no pipe or buffer.
                    self.carrier = None;
                    return Poll::Pending;
                }
                let carrier = match &mut self.carrier {
                    Some(carrier) => carrier,
                    None => self.carrier.insert(C::take().map_err(PumpError::Read)?),
                };
                match carrier.fill(source) {
                    Ok(0) => {
                        self.carrier = None;
                        return Poll::Ready(Ok(Flow::Ended));
                    }
                    Ok(read) => {
                        self.filled_up = self.hand_over_when_full && read == carrier.capacity();
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        self.carrier = None;
                        continue;
                    }
                    Err(error) => return Poll::Ready(Err(PumpError::Read(error))),
                }
            }
            let Some(carrier) = self.carrier.as_mut() else {
                continue;
            };
            // Drain completely before reading again. Reading more while the
            // sink is full was measured with splice: it fills the pipe with
            // small fragments and cut throughput by more than half.
            ready!(sink.poll_write_ready(cx)).map_err(PumpError::Write)?;
            match carrier.drain(sink) {
                Ok(written) => progress.moved(written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(PumpError::Write(error))),
            }
        }
    }
}

impl<C> Transfer<C> {
    /// A transfer that first writes out what `carrier` holds.
    fn carrying(carrier: C) -> Transfer<C> {
        Transfer {
            carrier: Some(carrier),
            hand_over_when_full: false,
            filled_up: false,
        }
    }
}

/// What a transfer reports as bytes reach the sink.
struct Progress<'a> {
    bytes: &'a mut u64,
    last_activity: &'a mut Instant,
}

impl Progress<'_> {
    fn moved(&mut self, count: usize) {
        *self.bytes += count as u64;
        *self.last_activity = Instant::now();
    }
}

/// Passes a FIN on: the sink will get no more bytes in this direction.
fn finish(sink: &TcpStream) -> Result<(), PumpError> {
    match SockRef::from(sink).shutdown(Shutdown::Write) {
        // The sink already closed; the other direction will report it.
        Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(()),
        result => result.map_err(PumpError::Write),
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Member,
}

/// Which half of a direction failed: reading its source or writing its sink.
#[derive(Debug)]
enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

impl PumpError {
    fn blame(self, source: Side, sink: Side) -> (CloseReason, Option<io::Error>) {
        let (side, error) = match self {
            PumpError::Read(error) => (source, error),
            PumpError::Write(error) => (sink, error),
        };
        let reset = matches!(
            error.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        );
        let reason = match (side, reset) {
            (Side::Client, true) => CloseReason::ClientReset,
            (Side::Client, false) => CloseReason::ClientError,
            (Side::Member, true) => CloseReason::MemberReset,
            (Side::Member, false) => CloseReason::MemberError,
        };
        (reason, Some(error))
    }
}

/// Keeps at most `max` spare items per thread for reuse, so steady traffic
/// allocates nothing and idle connections hold nothing. A per-thread list
/// means no lock is shared between connections.
pub(crate) struct SparePool<T> {
    spare: std::cell::RefCell<Vec<T>>,
    max: usize,
}

impl<T> SparePool<T> {
    pub(crate) const fn new(max: usize) -> SparePool<T> {
        SparePool {
            spare: std::cell::RefCell::new(Vec::new()),
            max,
        }
    }

    pub(crate) fn take(&self) -> Option<T> {
        self.spare.borrow_mut().pop()
    }

    pub(crate) fn give_back(&self, item: T) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < self.max {
            spare.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    /// Sends `length` patterned bytes through one direction and checks
    /// they arrive whole and in order; returns the direction afterwards.
    async fn carry(zero_copy: bool, length: usize) -> Direction {
        let (mut writer, source) = connected_pair().await;
        let (sink, mut reader) = connected_pair().await;
        let payload: Vec<u8> = (0..length).map(|index| (index % 251) as u8).collect();
        let expected = payload.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&payload).await.unwrap();
            writer
        });
        let reading = tokio::spawn(async move {
            let mut received = vec![0; length];
            reader.read_exact(&mut received).await.unwrap();
            received
        });
        let mut direction = Direction::new(zero_copy);
        let mut last_activity = Instant::now();
        let pumping = std::future::poll_fn(|cx| {
            if let Poll::Ready(Err(error)) =
                direction.poll(cx, &source, &sink, &mut last_activity, false)
            {
                panic!("pump failed: {error:?}");
            }
            if direction.bytes == length as u64 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(10), pumping)
            .await
            .expect("all bytes pumped");
        let _writer = writing.await.unwrap();
        assert!(reading.await.unwrap() == expected, "bytes arrive in order");
        direction
    }

    #[tokio::test]
    async fn small_messages_stay_in_the_buffer() {
        let direction = carry(true, 300).await;
        assert!(matches!(direction.transfer, Carried::Buffered(_)));
    }

    #[tokio::test]
    async fn a_bulk_stream_moves_to_splice_without_losing_a_byte() {
        let direction = carry(true, 8 * 1024 * 1024).await;
        assert!(matches!(direction.transfer, Carried::Splice(_)));
    }

    #[tokio::test]
    async fn without_zero_copy_a_bulk_stream_stays_buffered() {
        let direction = carry(false, 8 * 1024 * 1024).await;
        assert!(matches!(direction.transfer, Carried::Buffered(_)));
    }
}
