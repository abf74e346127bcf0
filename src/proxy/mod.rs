//! The byte pump: moves bytes both ways between a client and a member until
//! both sides are done, one fails, the connection goes idle for too long or
//! the process shuts down.
//!
//! Each direction runs on its own and passes a FIN on as a half-close, so a
//! client that sends a request and then shuts down its write side still gets
//! the whole reply. A reset or error on one side closes both, passing the
//! reset on to the other side.
//!
//! Bytes move through one of two pumps, chosen per virtual: [`splice`]
//! (Linux zero-copy through a pipe) or [`buffered`] (portable, through a
//! user-space buffer). Neither holds a pipe or buffer while the connection is
//! idle: both lease one from a per-thread pool only while bytes are in
//! flight, so ten thousand idle agents cost no buffer memory and no pipe
//! file descriptors, and a busy connection allocates nothing per read.

mod buffered;
#[cfg(target_os = "linux")]
mod splice;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a finished connection did.
#[derive(Debug)]
pub struct Outcome {
    pub bytes_to_member: u64,
    pub bytes_to_client: u64,
    pub reason: CloseReason,
    /// The error behind an error or reset close.
    pub error: Option<io::Error>,
}

/// Pumps bytes between `client` and `member` until the connection ends, then
/// closes both.
pub async fn run(
    client: TcpStream,
    member: TcpStream,
    options: PumpOptions,
    shutdown: &CancellationToken,
) -> Outcome {
    let activity = Activity::new();
    let to_member = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let (reason, error) = drive(
        pump(&client, &member, &activity, &to_member, options.zero_copy),
        pump(&member, &client, &activity, &to_client, options.zero_copy),
        &activity,
        options.idle_timeout,
        shutdown,
    )
    .await;
    // Pass a reset on: the surviving side sees a reset, not a clean end it
    // could mistake for a complete answer.
    let survivor = match reason {
        CloseReason::ClientReset => Some(&member),
        CloseReason::MemberReset => Some(&client),
        _ => None,
    };
    if let Some(survivor) = survivor {
        let _ = SockRef::from(survivor).set_linger(Some(Duration::ZERO));
    }
    Outcome {
        bytes_to_member: to_member.into_inner(),
        bytes_to_client: to_client.into_inner(),
        reason,
        error,
    }
}

/// One direction, through whichever pump the platform and options allow.
async fn pump(
    source: &TcpStream,
    sink: &TcpStream,
    activity: &Activity,
    bytes: &AtomicU64,
    zero_copy: bool,
) -> Result<(), PumpError> {
    #[cfg(target_os = "linux")]
    if zero_copy {
        return splice::pump(source, sink, activity, bytes).await;
    }
    let _ = zero_copy;
    buffered::pump(source, sink, activity, bytes).await
}

/// Runs both directions, the idle timer and the shutdown signal together.
async fn drive(
    up: impl Future<Output = Result<(), PumpError>>,
    down: impl Future<Output = Result<(), PumpError>>,
    activity: &Activity,
    idle_timeout: Duration,
    shutdown: &CancellationToken,
) -> (CloseReason, Option<io::Error>) {
    tokio::pin!(up, down);
    let idle = tokio::time::sleep(idle_timeout);
    let cancelled = shutdown.cancelled();
    tokio::pin!(idle, cancelled);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            result = &mut up, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(error) => return error.blame(Side::Client, Side::Member),
            },
            result = &mut down, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(error) => return error.blame(Side::Member, Side::Client),
            },
            () = &mut idle => {
                // The timer is not pushed back on every read (that would cost
                // a timer-wheel update per read); it fires, then checks.
                let quiet = activity.quiet_for();
                if quiet >= idle_timeout {
                    return (CloseReason::IdleTimeout, None);
                }
                idle.as_mut().reset(Instant::now() + (idle_timeout - quiet));
            },
            () = &mut cancelled => return (CloseReason::Shutdown, None),
        }
    }
    (CloseReason::Finished, None)
}

/// When bytes last moved on a connection, for the idle timeout. Shared by
/// both directions of one connection only.
struct Activity {
    started: Instant,
    last_millis: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let millis = self.started.elapsed().as_millis() as u64;
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// Adds `count` to a counter only this connection writes.
fn add_bytes(counter: &AtomicU64, count: usize) {
    counter.store(
        counter.load(Ordering::Relaxed) + count as u64,
        Ordering::Relaxed,
    );
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
struct SparePool<T> {
    spare: std::cell::RefCell<Vec<T>>,
    max: usize,
}

impl<T> SparePool<T> {
    const fn new(max: usize) -> SparePool<T> {
        SparePool {
            spare: std::cell::RefCell::new(Vec::new()),
            max,
        }
    }

    fn take(&self) -> Option<T> {
        self.spare.borrow_mut().pop()
    }

    fn give_back(&self, item: T) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < self.max {
            spare.push(item);
        }
    }
}
