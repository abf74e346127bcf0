//! One client connection: the client side (TLS or not), the pool (by SNI
//! for passthrough), a member reached through [`crate::dial`] (moving on
//! to the next member when one refuses or does not answer in time, F5's
//! "reselect"), the pump, and one log line when it ends.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hand_over::{MovableGuard, MovedConnection, Moving};
use super::{reset, VirtualServer};
use crate::config::{ProxyProtocol, ServiceDownAction, Terminate, Tls};
use crate::connections::{Open, Opening, Registered};
use crate::dial::{Attempts, Dialed};
use crate::logging::Address;
use crate::pool::{Health, MemberSlot, Pool, Reservation, Tried};
use crate::proxy::{
    self, CloseReason, LeaveReason, Pump, PumpOptions, PumpOutcome, Pumped, Released, Tally,
};
use crate::proxy_protocol;
use crate::stats::{Admission, Outcome, Rejection};
use crate::stop_signal::{Shutdown, StopTokens};
use crate::streams::{tune, Back, Front};
use crate::tls::client_hello::{self, Hello, HelloError};

/// A client the accept loop let in, with what serving it needs.
pub(crate) struct Admitted {
    pub client: TcpStream,
    pub peer: SocketAddr,
    pub virtual_server: Arc<VirtualServer>,
    pub shutdown: Shutdown,
    /// Its place under the virtual's connection limit, freed on drop.
    pub admission: Admission,
}

/// Starts serving one admitted client on a task of its own, tracked by
/// `tasks`.
pub(crate) fn spawn(tasks: &TaskTracker, admitted: Admitted) {
    // TLS clients carry what rustls' warnings are attributed to (see
    // tls::alerts); spawned apart, so the task of a plain connection is not
    // sized for it.
    let peer = admitted.peer;
    let attributed_to = matches!(admitted.virtual_server.plan.tls, Tls::Terminate(_))
        .then(|| Arc::clone(&admitted.virtual_server.stats));
    // Counted from the accept: an upgrade waits for connections still
    // connecting to a member, so that they move too.
    let movable = if admitted.virtual_server.movable() {
        admitted.virtual_server.hand_over.count_movable()
    } else {
        MovableGuard::none()
    };
    let connection = Connection::Establishing {
        establishing: Box::pin(establish(admitted, movable)),
    };
    match attributed_to {
        Some(stats) => tasks.spawn(crate::tls::alerts::attributed(stats, peer, connection)),
        None => tasks.spawn(connection),
    };
}

pin_project_lite::pin_project! {
    /// One client connection's task: first establishing (boxed: the
    /// handshake, the ClientHello and the connect to a member are short,
    /// one-off states, and HTTP connections live there to their end), then
    /// the session, which is all an idle TCP connection holds. A named
    /// future rather than one async fn, because an async fn keeps its
    /// arguments and every moved-from local for its whole life, and an
    /// idle connection's size is multiplied by tens of thousands of agents.
    #[project = ConnectionProjection]
    enum Connection {
        Establishing {
            establishing: Pin<Box<dyn Future<Output = Option<Session>> + Send>>,
        },
        Serving {
            #[pin]
            session: Session,
        },
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                ConnectionProjection::Establishing { establishing } => {
                    let Some(session) = ready!(establishing.as_mut().poll(cx)) else {
                        return Poll::Ready(());
                    };
                    self.set(Connection::Serving { session });
                }
                ConnectionProjection::Serving { session } => return session.poll(cx),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A client connected to its member: the pump, then the counters and
    /// the close log line.
    struct Session {
        #[pin]
        pumping: Pumping,
        ending: Ending,
    }
}

pin_project_lite::pin_project! {
    #[project = PumpingProjection]
    enum Pumping {
        /// Plain on both sides: the socket pump, inline.
        Sockets {
            #[pin]
            pump: Pump,
        },
        /// TLS on either side: boxed, so that its larger state does not
        /// size every plain connection.
        Streams {
            pump: Pin<Box<dyn Future<Output = PumpOutcome> + Send>>,
        },
    }
}

/// What the end of a session needs: whose counters, what to log, and what
/// the connection holds until then (its member slot, its SNAT port, its
/// admission, its place among the connections that may move).
struct Ending {
    virtual_server: Arc<VirtualServer>,
    /// Its record among the open connections: pool, member, client, the
    /// counters and a request to leave.
    open: Registered,
    /// The shutdown's last step: a stop signal that fired without it was
    /// the member going down.
    closing: CancellationToken,
    slot: MemberSlot,
    _lease: crate::snat::SourceLease,
    _admission: Admission,
    movable: MovableGuard,
}

impl Future for Session {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let ending = &*this.ending;
        let outcome = match this.pumping.project() {
            PumpingProjection::Sockets { pump } => {
                match ready!(pump.poll_pump(cx, &ending.open.tally, || ending.may_move())) {
                    Pumped::Ended(outcome) => outcome,
                    Pumped::Released(released) => {
                        ending.move_on(released);
                        return Poll::Ready(());
                    }
                }
            }
            PumpingProjection::Streams { pump } => ready!(pump.as_mut().poll(cx)),
        };
        this.ending.record(outcome);
        Poll::Ready(())
    }
}

impl Ending {
    /// Whether this connection, its stop signal fired, moves to a
    /// successor rather than closes: a hand-over is under way, and
    /// neither a shutdown, its member's retirement nor a reset of its
    /// member (down, in a pool that resets) fired it.
    fn may_move(&self) -> bool {
        let pool = &self.open.pool;
        let member = &pool.members()[self.open.member];
        self.movable.counted()
            && self.virtual_server.hand_over.wanted()
            && !self.closing.is_cancelled()
            && !member.state.retired_signal().all.is_cancelled()
            && !(pool.action_on_service_down() == ServiceDownAction::Reset
                && member.health.health() == Health::Down)
    }

    /// Hands the released connection to the upgrade, which sends it to
    /// the successor; closes it if the upgrade no longer waits.
    fn move_on(&self, released: Released) {
        let Released {
            client,
            member,
            to_member,
            to_client,
            standing,
        } = released;
        let source = member.local_addr().ok();
        let name = &self.virtual_server.plan.name;
        let (client, member) = match (client.into_std(), member.into_std()) {
            (Ok(client), Ok(member)) => (client, member),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(virtual_server = %name, client = %self.open.client, %error, "cannot hand a connection over, closed");
                return;
            }
        };
        let moving = Moving {
            connection: MovedConnection {
                virtual_name: name.clone(),
                pool: self.open.pool.name().to_string(),
                member: self.slot.member().address(),
                client: self.open.client,
                source,
                age_ms: u64::try_from(self.open.tally.age().as_millis()).unwrap_or(u64::MAX),
                standing,
                pending_to_member: to_member.as_ref().map_or(0, |bytes| bytes.pending),
                pending_to_client: to_client.as_ref().map_or(0, |bytes| bytes.pending),
            },
            client,
            member,
            to_member,
            to_client,
        };
        if !self.virtual_server.hand_over.put(moving) {
            tracing::info!(target: "vipgate::connection", virtual_server = %name, client = %Address(self.open.client), "connection closed: the upgrade stopped waiting for it");
        }
    }

    /// Counts a connection that left because it was asked to, for its
    /// member in its pool.
    fn count_departure(&self, reason: CloseReason) {
        let left = match reason {
            CloseReason::Rebalanced => LeaveReason::Rebalance,
            CloseReason::LifetimeReached => LeaveReason::Lifetime,
            CloseReason::Drained => LeaveReason::Drain,
            _ => return,
        };
        self.open.pool.members()[self.open.member]
            .balance
            .count(left);
        // Moved for the pool's sake: its next connection must not be sent
        // back by persistence.
        if let Some(ticket) = &self.open.persistence {
            ticket.forget();
        }
    }

    /// Counts and logs how the connection ended.
    fn record(&self, mut outcome: PumpOutcome) {
        if outcome.reason == CloseReason::Shutdown && !self.closing.is_cancelled() {
            outcome.reason = CloseReason::MemberDown;
        }
        let state = self.slot.member();
        state.record_bytes(outcome.bytes_to_member, outcome.bytes_to_client);
        let duration = self.open.tally.age();
        self.count_departure(outcome.reason);
        self.virtual_server.stats.record_duration(duration);
        tracing::info!(
            target: "vipgate::connection",
            virtual_server = %self.virtual_server.plan.name,
            client = %Address(self.open.client),
            member = %Address(state.address()),
            source = self.open.source.map(|source| tracing::field::display(Address(source))),
            bytes_to_member = outcome.bytes_to_member,
            bytes_to_client = outcome.bytes_to_client,
            duration_ms = duration.as_millis() as u64,
            reason = %outcome.reason,
            error = outcome.error.as_ref().map(tracing::field::display),
            "connection closed"
        );
    }
}

/// Takes one admitted client up to its session: the client side (TLS or
/// not), the pool (by SNI for passthrough), the member side. Every step
/// that fails logs why, closes the client and answers `None`. HTTP
/// virtuals are served here to their end (and answer `None` too).
async fn establish(admitted: Admitted, mut movable: MovableGuard) -> Option<Session> {
    let Admitted {
        client,
        peer,
        virtual_server,
        shutdown,
        admission,
    } = admitted;
    let started = Instant::now();
    let plan = &virtual_server.plan;
    tune(&client, plan.tcp_keepalive);
    // The VIP the client reached, for a PROXY protocol header; asked before
    // TLS takes the socket.
    let destination = (plan.proxy_protocol != ProxyProtocol::Off).then(|| client.local_addr());
    let client = client_side(client, peer, &virtual_server).await?;
    if let Some(http) = &virtual_server.http {
        let serving = crate::http::serve(client, peer, Arc::clone(http), shutdown);
        Box::pin(serving).await;
        virtual_server.stats.record_duration(started.elapsed());
        return None;
    }
    let Some((pool, hello)) = choose_pool(&client, peer, &virtual_server).await else {
        reset(client.socket());
        return None;
    };
    let Some((member, Reservation { index, slot }, lease)) =
        member_side(&virtual_server, pool, peer, destination, &hello).await
    else {
        reset(client.socket());
        return None;
    };
    drop(hello);
    // A pool that resets connections of a member going down listens to that
    // member's signal (itself cancelled by a shutdown too); others only to
    // the shutdown.
    let stops = member_stops(pool, index);
    let bare = matches!((&client, &member), (Front::Plain(_), Back::Plain(_)));
    let source = member.socket().local_addr().ok();
    log_established(&virtual_server, peer, slot.member().address(), source);
    if !bare {
        movable.release();
    }
    let open = virtual_server.connections.register(Opening {
        virtual_name: Arc::clone(&virtual_server.name),
        pool: Arc::clone(pool),
        member: index,
        client: peer,
        source,
        tally: Tally::resumed(started.elapsed(), Duration::ZERO, 0, 0),
        persistence: virtual_server.persistence_ticket(peer, slot.member().address()),
    });
    let stop = stops.for_connection(movable.counted());
    let idle = plan.idle_timeout;
    let pumping = match (client, member) {
        (Front::Plain(client), Back::Plain(member)) => {
            let options = PumpOptions {
                idle_timeout: idle,
                zero_copy: plan.zero_copy,
            };
            Pumping::Sockets {
                pump: Pump::new(client, member, options, stop),
            }
        }
        // Boxed as they are: a wrapping async block would hold the pump
        // twice (once captured, once awaited), 500 bytes more per idle TLS
        // connection.
        (Front::Tls(client), Back::Plain(member)) => Pumping::Streams {
            pump: Box::pin(proxy::stream::run(client, member, idle, stop, tally(&open))),
        },
        (Front::Plain(client), Back::Tls(member)) => Pumping::Streams {
            pump: Box::pin(proxy::stream::run(client, member, idle, stop, tally(&open))),
        },
        (Front::Tls(client), Back::Tls(member)) => Pumping::Streams {
            pump: Box::pin(proxy::stream::run(client, member, idle, stop, tally(&open))),
        },
    };
    Some(Session {
        pumping,
        ending: Ending {
            open,
            virtual_server: Arc::clone(&virtual_server),
            closing: shutdown.closing,
            slot,
            _lease: lease,
            _admission: admission,
            movable,
        },
    })
}

/// The record's counters, as a TLS pump keeps them.
fn tally(open: &Registered) -> Arc<dyn AsRef<Tally> + Send + Sync> {
    let open: Arc<Open> = Arc::clone(open.open());
    open
}

/// The connection log's first line for a connection: a session of ten
/// hours is in the log from its first second, with the source address
/// (its SNAT port) the member sees.
fn log_established(
    virtual_server: &VirtualServer,
    peer: SocketAddr,
    member: SocketAddr,
    source: Option<SocketAddr>,
) {
    tracing::info!(
        target: "vipgate::connection",
        virtual_server = %virtual_server.plan.name,
        client = %Address(peer),
        member = %Address(member),
        source = source.map(|source| tracing::field::display(Address(source))),
        "connection established"
    );
}

/// What stops a connection to member `index` of `pool`: a pool that
/// resets connections of a member going down listens to that member's
/// signal (itself cancelled by a shutdown too); others only to the
/// member's retirement and the shutdown.
fn member_stops(pool: &Pool, index: usize) -> StopTokens {
    let member = &pool.members()[index];
    match pool.action_on_service_down() {
        ServiceDownAction::Reset => member.health.reset_signal(),
        ServiceDownAction::None => member.state.retired_signal().clone(),
    }
}

/// Goes on with a connection a predecessor process handed over (binary
/// upgrade), on the calling worker's runtime: the same virtual, pool and
/// member, its SNAT port, counters and idle time, counted under the
/// limits whatever they say (the connection exists). `Err` says why it
/// cannot (the configuration changed under it); it is then closed.
pub(crate) fn adopt(
    tasks: &TaskTracker,
    virtual_server: Arc<VirtualServer>,
    shutdown: Shutdown,
    moving: Moving,
) -> Result<(), String> {
    let found = virtual_server
        .movable()
        .then(|| virtual_server.pool_named(&moving.connection.pool))
        .flatten()
        .and_then(|pool| {
            let index = pool
                .members()
                .iter()
                .position(|m| m.state.address() == moving.connection.member)?;
            Some((Arc::clone(pool), index))
        });
    let Some((pool, index)) = found else {
        let connection = &moving.connection;
        let why = format!(
            "virtual {} no longer sends plain TCP to member {} of pool {}",
            connection.virtual_name, connection.member, connection.pool
        );
        moving.reset();
        return Err(why);
    };
    let Moving {
        connection,
        client,
        member,
        to_member,
        to_client,
    } = moving;
    let client = TcpStream::from_std(client).map_err(|e| e.to_string())?;
    let member = TcpStream::from_std(member).map_err(|e| e.to_string())?;
    let plan = &virtual_server.plan;
    let options = PumpOptions {
        idle_timeout: plan.idle_timeout,
        zero_copy: plan.zero_copy,
    };
    let stop = member_stops(&pool, index).for_connection(true);
    let released = Released {
        client,
        member,
        to_member,
        to_client,
        standing: connection.standing,
    };
    let pump = Pump::resume(released, options, stop);
    let lease = match connection.source {
        Some(source) => virtual_server.dialer.snat.adopt(source, connection.member),
        None => crate::snat::SourceLease::Kernel,
    };
    let standing = &connection.standing;
    let open = virtual_server.connections.register(Opening {
        virtual_name: Arc::clone(&virtual_server.name),
        pool: Arc::clone(&pool),
        member: index,
        client: connection.client,
        source: connection.source,
        tally: Tally::resumed(
            Duration::from_millis(connection.age_ms),
            Duration::from_millis(standing.idle_ms),
            standing.bytes_to_member,
            standing.bytes_to_client,
        ),
        // The new process learns its records from the connections it
        // takes over.
        persistence: virtual_server.persistence_ticket(connection.client, connection.member),
    });
    let ending = Ending {
        slot: pool.members()[index].state.adopt(),
        open,
        closing: shutdown.closing,
        _lease: lease,
        _admission: virtual_server
            .stats
            .adopt(virtual_server.client_guards(), connection.client.ip()),
        movable: virtual_server.hand_over.count_movable(),
        virtual_server,
    };
    let session = Session {
        pumping: Pumping::Sockets { pump },
        ending,
    };
    tasks.spawn(Connection::Serving { session });
    Ok(())
}

/// The client side: TLS ended by vipgate (`terminate`, or `auto` with a TLS
/// client), or the socket as it is.
async fn client_side(
    client: TcpStream,
    peer: SocketAddr,
    virtual_server: &VirtualServer,
) -> Option<Front> {
    let Tls::Terminate(terminate) = &virtual_server.plan.tls else {
        return Some(Front::Plain(client));
    };
    match Box::pin(accept_tls(client, terminate, virtual_server)).await {
        Ok(front) => Some(front),
        Err(reason) => {
            tracing::info!(target: "vipgate::connection", virtual_server = %virtual_server.plan.name, client = %peer, %reason, "TLS handshake failed, client closed");
            None
        }
    }
}

/// The pool for this client and the bytes already read from it: with SNI
/// routes, the ClientHello (to forward untouched); otherwise nothing.
async fn choose_pool<'a>(
    client: &Front,
    peer: SocketAddr,
    virtual_server: &'a VirtualServer,
) -> Option<(&'a Arc<Pool>, Vec<u8>)> {
    let stats = &virtual_server.stats;
    match &virtual_server.plan.tls {
        Tls::Passthrough {
            handshake_timeout,
            sni_routes,
        } if !sni_routes.is_empty() => {
            match Box::pin(read_client_hello(client.socket(), *handshake_timeout)).await {
                Ok((bytes, server_name)) => {
                    stats.count_hello(Outcome::Ok);
                    Some((virtual_server.route(server_name.as_deref()), bytes))
                }
                Err(failure) => {
                    stats.count_hello(match failure {
                        HelloFailure::TimedOut => Outcome::TimedOut,
                        _ => Outcome::Failed,
                    });
                    tracing::info!(target: "vipgate::connection", virtual_server = %virtual_server.plan.name, client = %peer, reason = %failure, "client closed: no usable ClientHello");
                    None
                }
            }
        }
        _ => Some((&virtual_server.pool, Vec::new())),
    }
}

/// The member side, ready for the client's bytes: a member reached
/// through the dial path (SNAT, PROXY protocol header, re-encryption), and
/// the routing ClientHello forwarded.
async fn member_side(
    virtual_server: &VirtualServer,
    pool: &Pool,
    peer: SocketAddr,
    destination: Option<io::Result<SocketAddr>>,
    hello: &[u8],
) -> Option<(Back, Reservation, crate::snat::SourceLease)> {
    let plan = &virtual_server.plan;
    // The PROXY protocol header goes before any TLS, to whichever member.
    let preamble = match destination {
        None => None,
        Some(Ok(destination)) => Some(proxy_protocol::header(
            plan.proxy_protocol,
            peer,
            destination,
        )),
        Some(Err(error)) => {
            tracing::info!(target: "vipgate::connection", virtual_server = %plan.name, client = %peer, %error, "cannot tell the address the client reached, closing it");
            return None;
        }
    };
    let (dialed, reserved) = match connect(virtual_server, pool, peer, preamble.as_deref()).await {
        Ok(connected) => connected,
        Err(refusal) => {
            virtual_server.stats.count_rejected(refusal);
            if let Some(suppressed) = virtual_server.stats.reject_log.allow() {
                let why = match refusal {
                    Rejection::SnatExhausted => "no SNAT port free toward any member",
                    Rejection::LocalResources => "out of local resources",
                    _ => "no member could take the connection",
                };
                tracing::warn!(virtual_server = %plan.name, pool = %pool.name(), client = %peer, suppressed, "{why}, closing the client");
            }
            return None;
        }
    };
    let Dialed {
        stream: mut member,
        lease,
    } = dialed;
    if !hello.is_empty() {
        if let Err(error) = member.write_all(hello).await {
            let address = reserved.slot.member().address();
            tracing::info!(target: "vipgate::connection", virtual_server = %plan.name, client = %peer, member = %address, %error, "cannot forward the ClientHello, closing the client");
            return None;
        }
    }
    Some((member, reserved, lease))
}

/// Ends TLS on `client` (or, in `auto` mode, lets a client that does not
/// start with a TLS record through as plain TCP), within the handshake
/// timeout, counting the result.
async fn accept_tls(
    client: TcpStream,
    terminate: &Terminate,
    virtual_server: &VirtualServer,
) -> Result<Front, String> {
    let stats = &virtual_server.stats;
    let timed_out = |what: &str| {
        stats.count_handshake(Outcome::TimedOut);
        format!(
            "no {what} within {}",
            humantime::format_duration(terminate.handshake_timeout)
        )
    };
    if terminate.plain_allowed {
        let mut first = [0u8; 1];
        match tokio::time::timeout(terminate.handshake_timeout, client.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == 22 => {}
            Ok(Ok(1)) => return Ok(Front::Plain(client)),
            Ok(_) => {
                stats.count_handshake(Outcome::Failed);
                return Err("closed before sending anything".into());
            }
            Err(_) => return Err(timed_out("first byte")),
        }
    }
    let Some(terminator) = &virtual_server.terminator else {
        return Ok(Front::Plain(client));
    };
    match tokio::time::timeout(
        terminate.handshake_timeout,
        crate::tls::ServerStream::accept(client, terminator.config()),
    )
    .await
    {
        Ok(Ok(tls)) => {
            stats.count_handshake(Outcome::Ok);
            Ok(Front::Tls(Box::new(tls)))
        }
        Ok(Err(error)) => {
            stats.count_handshake(Outcome::Failed);
            Err(error.to_string())
        }
        Err(_) => Err(timed_out("completed handshake")),
    }
}

/// Why no ClientHello could be read for routing.
#[derive(Debug, thiserror::Error)]
enum HelloFailure {
    #[error("no ClientHello within the handshake timeout")]
    TimedOut,
    #[error("closed before its ClientHello was complete")]
    Closed,
    #[error(transparent)]
    Invalid(#[from] HelloError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads a whole ClientHello (at most [`client_hello::MAX_HELLO`] bytes,
/// within `limit`) and the server name it asks for. The bytes are
/// returned to be forwarded untouched.
async fn read_client_hello(
    client: &TcpStream,
    limit: Duration,
) -> Result<(Vec<u8>, Option<String>), HelloFailure> {
    let read = async {
        let mut bytes = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            client.readable().await?;
            match client.try_read(&mut chunk) {
                Ok(0) => return Err(HelloFailure::Closed),
                Ok(read) => bytes.extend_from_slice(&chunk[..read]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error.into()),
            }
            if let Hello::Complete { server_name } = client_hello::inspect(&bytes)? {
                return Ok((bytes, server_name));
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Err(HelloFailure::TimedOut))
}

/// Reaches a member of `pool`, trying each at most once and waiting for
/// rate-limited ones up to the connect timeout; what each failure means is
/// the dial path's policy, the same as for HTTP requests.
async fn connect(
    virtual_server: &VirtualServer,
    pool: &Pool,
    peer: SocketAddr,
    preamble: Option<&[u8]>,
) -> Result<(Dialed, Reservation), Rejection> {
    let plan = &virtual_server.plan;
    let mut tried = Tried::default();
    let mut attempts = Attempts::default();
    // Members held back only by their connect rate are waited for, up to
    // the connect timeout: a reconnect storm is paced, not refused.
    let deadline = tokio::time::Instant::now() + plan.connect_timeout;
    let (mut persistent, choice) = virtual_server.persistence_choice(pool, peer.ip());
    while let Some(reserved) = pool
        .reserve_next(&mut persistent, &mut tried, deadline, choice)
        .await
    {
        let member = reserved.slot.member();
        match virtual_server.dialer.dial(pool, member, preamble).await {
            Ok(dialed) => return Ok((dialed, reserved)),
            Err(error) => {
                if let Some(refusal) = attempts.failed(member, &plan.name, &error) {
                    return Err(refusal);
                }
            }
        }
    }
    Err(attempts.exhausted())
}

#[cfg(test)]
mod tests {
    /// What an idle plain connection's task holds stays small: the
    /// establishing states and TLS are boxed, arguments are not kept twice
    /// (measured: 1,120 bytes when this was one async fn; 3 KB before the
    /// TLS states were boxed, which showed as 2 KB more per idle
    /// connection).
    #[test]
    fn a_plain_connection_task_stays_small() {
        let size = std::mem::size_of::<super::Connection>();
        println!("a connection task holds {size} bytes");
        assert!(size <= 600, "a connection task holds {size} bytes");
    }
}
