//! One client connection: choose a member, connect (moving on to the next
//! member when one refuses or does not answer in time, F5's "reselect"),
//! pump bytes, and write one log line when it ends.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{reset, tune, Admission, VirtualServer};
use crate::config::ServiceDownAction;
use crate::pool::{MemberSlot, Tried};
use crate::proxy::{self, CloseReason, PumpOptions};

/// Serves one admitted client to its end. Takes everything by value so the
/// spawned task is this future alone, with nothing wrapped around it: an
/// idle connection's memory is mostly this state.
pub(super) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    virtual_server: Arc<VirtualServer>,
    close: CancellationToken,
    _admission: Admission,
) {
    let started = Instant::now();
    let plan = &virtual_server.plan;
    tune(&client, plan.tcp_keepalive);
    let Some((member, slot)) = connect(&virtual_server).await else {
        virtual_server
            .stats
            .rejected_no_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(suppressed) = virtual_server.stats.reject_log.allow() {
            tracing::warn!(
                virtual_server = %plan.name,
                pool = %virtual_server.pool.name(),
                client = %peer,
                suppressed,
                "no member could take the connection, closing the client"
            );
        }
        reset(&client);
        return;
    };
    let state = slot.member();
    state.record_connected();
    // Only the close log needs the source address; spare the system call
    // when that line is off.
    let source = tracing::enabled!(target: "vipgate::connection", tracing::Level::INFO)
        .then(|| member.local_addr().ok())
        .flatten();
    let options = PumpOptions {
        idle_timeout: plan.idle_timeout,
        zero_copy: plan.zero_copy,
    };
    // A pool that resets connections of a member going down listens to that
    // member's signal (itself cancelled by a shutdown too); others only to
    // the shutdown.
    let stop = match virtual_server.pool.action_on_service_down() {
        ServiceDownAction::Reset => state.reset_signal(),
        ServiceDownAction::None => close.clone(),
    };
    let mut outcome = proxy::run(client, member, options, &stop).await;
    if outcome.reason == CloseReason::Shutdown && !close.is_cancelled() {
        outcome.reason = CloseReason::MemberDown;
    }
    state.record_bytes(outcome.bytes_to_member, outcome.bytes_to_client);
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

/// Connects to a member of the virtual's pool, trying each member at most
/// once. `None` when none could be reached.
async fn connect(virtual_server: &VirtualServer) -> Option<(TcpStream, MemberSlot)> {
    let plan = &virtual_server.plan;
    let mut tried = Tried::default();
    while let Some(slot) = virtual_server.pool.reserve(&mut tried) {
        let state = slot.member();
        let address = state.address();
        let error = match tokio::time::timeout(plan.connect_timeout, open(address)).await {
            Ok(Ok(stream)) => {
                tune(&stream, plan.tcp_keepalive);
                return Some((stream, slot));
            }
            Ok(Err(error)) => error,
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
    None
}

async fn open(address: SocketAddr) -> io::Result<TcpStream> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.connect(address).await
}
