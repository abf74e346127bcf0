//! One client connection: choose a member, connect (moving on to the next
//! member when one refuses or does not answer in time, F5's "reselect"),
//! pump bytes, and write one log line when it ends.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::streams::{Back, Front};
use super::{reset, tune, Admission, VirtualServer};
use crate::config::{ProxyProtocol, ServiceDownAction, Terminate, Tls};
use crate::pool::{MemberSlot, Pool, Tried};
use crate::proxy::{self, CloseReason, PumpOptions};
use crate::proxy_protocol;
use crate::snat::{SourceLease, SourceNat};
use crate::tls::client_hello::{self, Hello, HelloError};

/// Serves one admitted client to its end: the client side (TLS or not),
/// the pool (by SNI for passthrough), the member side, then the pump and
/// the close log line. Every step that fails logs why and closes the
/// client. Takes everything by value so the spawned task is this future
/// alone: an idle connection's memory is mostly this state.
pub(super) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    virtual_server: Arc<VirtualServer>,
    close: CancellationToken,
    draining: CancellationToken,
    _admission: Admission,
) {
    let started = Instant::now();
    let plan = &virtual_server.plan;
    tune(&client, plan.tcp_keepalive);
    // The VIP the client reached, for a PROXY protocol header; asked before
    // TLS takes the socket.
    let destination = (plan.proxy_protocol != ProxyProtocol::Off).then(|| client.local_addr());
    let Some(client) = client_side(client, peer, &virtual_server).await else {
        return;
    };
    if let Some(http) = &virtual_server.http {
        let http = Arc::clone(http);
        let serving = crate::http::serve(client, peer, virtual_server, http, close, draining);
        Box::pin(serving).await;
        return;
    }
    let Some((pool, hello)) = choose_pool(&client, peer, &virtual_server).await else {
        reset(client.socket());
        return;
    };
    // Boxed: connecting is a short, one-off state; kept inline it would
    // size every idle connection's task.
    let member_side = Box::pin(member_side(
        &virtual_server,
        pool,
        peer,
        destination,
        &hello,
    ));
    let Some((member, (index, slot), _source)) = member_side.await else {
        reset(client.socket());
        return;
    };
    drop(hello);
    let state = slot.member();
    state.record_connected();
    // Only the close log needs the source address; spare the system call
    // when that line is off.
    let source = tracing::enabled!(target: "vipgate::connection", tracing::Level::INFO)
        .then(|| member.socket().local_addr().ok())
        .flatten();
    let options = PumpOptions {
        idle_timeout: plan.idle_timeout,
        zero_copy: plan.zero_copy,
    };
    // A pool that resets connections of a member going down listens to that
    // member's signal (itself cancelled by a shutdown too); others only to
    // the shutdown.
    let stop = match pool.action_on_service_down() {
        ServiceDownAction::Reset => pool.members()[index].health.reset_signal(),
        ServiceDownAction::None => state.retired_signal(),
    };
    // Every path but plain-to-plain is boxed: the task of a connection is
    // as large as its largest state, and the TLS states must not make
    // every idle plain connection pay for them.
    let idle = plan.idle_timeout;
    let mut outcome = match (client, member) {
        (Front::Plain(client), Back::Plain(member)) => {
            proxy::run(client, member, options, &stop).await
        }
        (Front::Tls(client), Back::Plain(member)) => {
            Box::pin(proxy::stream::run(client, member, idle, &stop)).await
        }
        (Front::Plain(client), Back::Tls(member)) => {
            Box::pin(proxy::stream::run(client, member, idle, &stop)).await
        }
        (Front::Tls(client), Back::Tls(member)) => {
            Box::pin(proxy::stream::run(client, member, idle, &stop)).await
        }
    };
    if outcome.reason == CloseReason::Shutdown && !close.is_cancelled() {
        outcome.reason = CloseReason::MemberDown;
    }
    state.record_bytes(outcome.bytes_to_member, outcome.bytes_to_client);
    virtual_server.stats.record_duration(started.elapsed());
    tracing::info!(
        target: "vipgate::connection",
        virtual_server = %plan.name,
        client = %peer,
        member = %state.address(),
        source = source.map(tracing::field::display),
        bytes_to_member = outcome.bytes_to_member,
        bytes_to_client = outcome.bytes_to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        reason = %outcome.reason,
        error = outcome.error.as_ref().map(tracing::field::display),
        "connection closed"
    );
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
                    stats.hello_ok.fetch_add(1, Ordering::Relaxed);
                    Some((virtual_server.route(server_name.as_deref()), bytes))
                }
                Err(failure) => {
                    let counter = match failure {
                        HelloFailure::TimedOut => &stats.hello_timed_out,
                        _ => &stats.hello_rejected,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(target: "vipgate::connection", virtual_server = %virtual_server.plan.name, client = %peer, reason = %failure, "client closed: no usable ClientHello");
                    None
                }
            }
        }
        _ => Some((&virtual_server.pool, Vec::new())),
    }
}

/// The member side, ready for the client's bytes: connected (with SNAT),
/// the PROXY protocol header sent, TLS started when the pool re-encrypts,
/// and the routing ClientHello forwarded.
async fn member_side(
    virtual_server: &VirtualServer,
    pool: &Pool,
    peer: SocketAddr,
    destination: Option<io::Result<SocketAddr>>,
    hello: &[u8],
) -> Option<(Back, (usize, MemberSlot), SourceLease)> {
    let plan = &virtual_server.plan;
    let (mut member, slot, source) = match connect(virtual_server, pool).await {
        Ok(connected) => connected,
        Err(refusal) => {
            let (counter, why) = match refusal {
                Refusal::NoMember => (
                    &virtual_server.stats.rejected_no_member,
                    "no member could take the connection, closing the client",
                ),
                Refusal::SnatExhausted => (
                    &virtual_server.stats.rejected_snat_exhausted,
                    "no SNAT port free toward any member, closing the client",
                ),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = virtual_server.stats.reject_log.allow() {
                tracing::warn!(virtual_server = %plan.name, pool = %pool.name(), client = %peer, suppressed, "{why}");
            }
            return None;
        }
    };
    let address = slot.1.member().address();
    let failed = |error: &dyn std::fmt::Display, what: &str| {
        tracing::info!(target: "vipgate::connection", virtual_server = %plan.name, client = %peer, member = %address, %error, "{what}, closing the client");
    };
    if let Some(destination) = destination {
        let sent = match destination {
            Ok(destination) => {
                member
                    .write_all(&proxy_protocol::header(
                        plan.proxy_protocol,
                        peer,
                        destination,
                    ))
                    .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = sent {
            failed(&error, "cannot send the PROXY protocol header");
            return None;
        }
    }
    // Re-encryption: the PROXY header stays outside the TLS.
    let mut member = match reencrypt(pool, address, member, plan.connect_timeout).await {
        Ok(member) => member,
        Err(error) => {
            slot.1.member().record_connect_failure();
            failed(&error, "TLS handshake with the member failed");
            return None;
        }
    };
    if !hello.is_empty() {
        if let Err(error) = member.write_all(hello).await {
            failed(&error, "cannot forward the ClientHello");
            return None;
        }
    }
    Some((member, slot, source))
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
        stats.handshakes_timed_out.fetch_add(1, Ordering::Relaxed);
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
                stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
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
        terminator.acceptor().accept(client),
    )
    .await
    {
        Ok(Ok(tls)) => {
            stats.handshakes_ok.fetch_add(1, Ordering::Relaxed);
            Ok(Front::Tls(Box::new(tls)))
        }
        Ok(Err(error)) => {
            stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            Err(error.to_string())
        }
        Err(_) => Err(timed_out("completed handshake")),
    }
}

/// Starts TLS toward the member when its pool re-encrypts, within
/// `limit`; otherwise hands the socket back as it is.
pub(crate) async fn reencrypt(
    pool: &Pool,
    address: SocketAddr,
    member: TcpStream,
    limit: Duration,
) -> io::Result<Back> {
    let Some(member_tls) = pool.member_tls() else {
        return Ok(Back::Plain(member));
    };
    match tokio::time::timeout(limit, Box::pin(member_tls.connect(address, member))).await {
        Ok(Ok(tls)) => Ok(Back::Tls(Box::new(tls))),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no TLS handshake within connect_timeout",
        )),
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

/// Why a client could not be served.
enum Refusal {
    /// Every member refused, timed out, was down or full.
    NoMember,
    /// Some member could have taken it, but no SNAT port toward it was free.
    SnatExhausted,
}

/// Connects to a member of `pool`, trying each member at most once, from a
/// source the virtual's SNAT gives.
async fn connect(
    virtual_server: &VirtualServer,
    pool: &Pool,
) -> Result<(TcpStream, (usize, MemberSlot), SourceLease), Refusal> {
    let plan = &virtual_server.plan;
    let mut tried = Tried::default();
    let mut exhausted = false;
    // Members held back only by their connect rate are waited for, up to
    // the connect timeout: a reconnect storm is paced, not refused.
    let deadline = tokio::time::Instant::now() + plan.connect_timeout;
    while let Some((index, slot)) = pool.reserve_paced(&mut tried, deadline).await {
        let state = slot.member();
        let address = state.address();
        let attempt = open(&virtual_server.snat, address);
        let connecting = Instant::now();
        let error = match tokio::time::timeout(plan.connect_timeout, attempt).await {
            Ok(Ok((stream, source))) => {
                state.record_connect_time(connecting.elapsed());
                tune(&stream, plan.tcp_keepalive);
                return Ok((stream, (index, slot), source));
            }
            Ok(Err(OpenError::Exhausted)) => {
                // Not the member's fault: try the next one.
                exhausted = true;
                continue;
            }
            Ok(Err(OpenError::Io(error))) => error,
            Err(_elapsed) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", plan.connect_timeout),
            ),
        };
        state.record_connect_failure();
        if let Some(suppressed) = state.failure_log().allow() {
            tracing::warn!(
                virtual_server = %plan.name,
                member = %address,
                %error,
                suppressed,
                "cannot connect to member, trying the next one"
            );
        }
    }
    Err(if exhausted {
        Refusal::SnatExhausted
    } else {
        Refusal::NoMember
    })
}

/// Source ports tried for one member before giving up on it: a port can be
/// busy (something else bound it) or still held toward this member by a
/// connection in TIME_WAIT.
const PORT_ATTEMPTS: usize = 8;

/// Why no connection to a member could be opened.
pub(crate) enum OpenError {
    /// No SNAT port free toward it.
    Exhausted,
    Io(io::Error),
}

/// Connects to `address` from a source the SNAT gives, moving on to
/// another source port when one is taken.
pub(crate) async fn open(
    snat: &SourceNat,
    address: SocketAddr,
) -> Result<(TcpStream, SourceLease), OpenError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let source = snat.lease(address).map_err(|_| OpenError::Exhausted)?;
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(OpenError::Io)?;
        let result = match source.bind(&socket) {
            Ok(()) => socket.connect(address).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(stream) => return Ok((stream, source)),
            // Dropping the lease gives the port back; the port set's cursor
            // has moved on, so the next lease is another port.
            Err(error) if attempt < PORT_ATTEMPTS && source.worth_another_port(&error) => {}
            Err(error) => return Err(OpenError::Io(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The task of a plain connection stays small: TLS, ClientHello and
    /// re-encryption states are boxed (measured: 1.2 KB; 3 KB when they
    /// were not, which showed as 2 KB more per idle connection).
    #[tokio::test]
    async fn a_plain_connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let plan = crate::config::parse(
            "[pools.p]\nmembers = [ { address = \"127.0.0.1:1\" } ]\n[virtuals.v]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n",
            "t",
        )
        .unwrap();
        let snapshot = crate::server::Snapshot::build(plan, None).unwrap();
        let virtual_server = snapshot.virtual_server("v").unwrap().clone();
        let admission = virtual_server
            .stats
            .try_admit(crate::config::ConnectionLimit::Unlimited)
            .unwrap();
        let task = super::serve(
            client,
            "127.0.0.1:1".parse().unwrap(),
            virtual_server,
            Default::default(),
            Default::default(),
            admission,
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1200, "a connection task takes {size} bytes");
    }
}
