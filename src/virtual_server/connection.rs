//! One client connection: the client side (TLS or not), the pool (by SNI
//! for passthrough), a member reached through [`crate::dial`] (moving on
//! to the next member when one refuses or does not answer in time, F5's
//! "reselect"), the pump, and one log line when it ends.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{reset, VirtualServer};
use crate::config::{ProxyProtocol, ServiceDownAction, Terminate, Tls};
use crate::dial::{Attempts, Dialed};
use crate::pool::{MemberSlot, Pool, Tried};
use crate::proxy::{self, CloseReason, PumpOptions};
use crate::proxy_protocol;
use crate::stats::{Admission, Outcome, Rejection};
use crate::streams::{tune, Back, Front};
use crate::tls::client_hello::{self, Hello, HelloError};

/// Starts serving one admitted client on a task of its own, tracked by
/// `tasks` (see [`serve`]).
pub(crate) fn spawn(
    tasks: &TaskTracker,
    client: TcpStream,
    peer: SocketAddr,
    virtual_server: Arc<VirtualServer>,
    close: CancellationToken,
    draining: CancellationToken,
    admission: Admission,
) {
    if matches!(virtual_server.plan.tls, Tls::Terminate(_)) {
        // TLS clients carry what rustls' warnings are attributed to (see
        // tls::alerts). Boxed, and spawned apart, so that the task of a
        // plain connection is not sized for it, nor a TLS one twice.
        let stats = Arc::clone(&virtual_server.stats);
        let serving = serve(client, peer, virtual_server, close, draining, admission);
        tasks.spawn(Box::pin(crate::tls::alerts::attributed(
            stats, peer, serving,
        )));
    } else {
        tasks.spawn(serve(
            client,
            peer,
            virtual_server,
            close,
            draining,
            admission,
        ));
    }
}

/// Serves one admitted client to its end: the client side (TLS or not),
/// the pool (by SNI for passthrough), the member side, then the pump and
/// the close log line. Every step that fails logs why and closes the
/// client. Takes everything by value so the spawned task is this future
/// alone: an idle connection's memory is mostly this state.
async fn serve(
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
        let serving = crate::http::serve(client, peer, Arc::clone(http), close, draining);
        Box::pin(serving).await;
        virtual_server.stats.record_duration(started.elapsed());
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
    let Some((member, (index, slot), _lease)) = member_side.await else {
        reset(client.socket());
        return;
    };
    drop(hello);
    let state = slot.member();
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
) -> Option<(Back, (usize, MemberSlot), crate::snat::SourceLease)> {
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
    let (dialed, reserved) = match connect(virtual_server, pool, preamble.as_deref()).await {
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
            let address = reserved.1.member().address();
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
        terminator.acceptor().accept(client),
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
    preamble: Option<&[u8]>,
) -> Result<(Dialed, (usize, MemberSlot)), Rejection> {
    let plan = &virtual_server.plan;
    let mut tried = Tried::default();
    let mut attempts = Attempts::default();
    // Members held back only by their connect rate are waited for, up to
    // the connect timeout: a reconnect storm is paced, not refused.
    let deadline = tokio::time::Instant::now() + plan.connect_timeout;
    while let Some((index, slot)) = pool.reserve_paced(&mut tried, deadline).await {
        match virtual_server
            .dialer
            .dial(pool, slot.member(), preamble)
            .await
        {
            Ok(dialed) => return Ok((dialed, (index, slot))),
            Err(error) => {
                if let Some(refusal) = attempts.failed(slot.member(), &plan.name, &error) {
                    return Err(refusal);
                }
            }
        }
    }
    Err(attempts.exhausted())
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
