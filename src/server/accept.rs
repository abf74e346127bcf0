//! The accept loop of each virtual, where the live snapshot is: every new
//! client finds the virtual as the current configuration has it, is
//! admitted under its connection limit, and becomes a task the lifecycle
//! counts (so a shutdown can drain it).
//!
//! The loop never dies on an error. Running out of file descriptors
//! (EMFILE/ENFILE) or kernel memory backs off briefly and tries again;
//! errors that belong to one aborted client are skipped at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Live;
use crate::stats::Rejection;
use crate::stop_signal::{Shutdown, StopSignal};
use crate::throttle::Throttle;
use crate::virtual_server::{self, Admitted, VirtualServer};

/// Pause after an accept error that will not clear by itself at once
/// (out of file descriptors or memory), so the loop does not spin.
const RESOURCE_BACKOFF: Duration = Duration::from_millis(100);

/// What every accept loop shares with the server.
#[derive(Clone)]
pub(crate) struct Lifecycle {
    pub live: Live,
    /// Spawns and counts connection tasks, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Draining (stop accepting), then closing every connection.
    pub shutdown: Shutdown,
}

/// Accepts clients of virtual `name` on one worker's socket until `stop`
/// (this listener removed by a reload, or the server stopping). Runs on
/// that worker, and so do the connections it accepts.
pub(crate) async fn accept_loop(
    name: String,
    listener: std::net::TcpListener,
    lifecycle: Lifecycle,
    stop: CancellationToken,
) {
    // Registered with this worker's reactor, here on the worker.
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(virtual_server = %name, %error, "cannot register a listening socket; this worker will not accept for it");
            return;
        }
    };
    let resource_log = Throttle::default();
    // One watch for the loop's life: `stop.cancelled()` made anew for each
    // accept would take the token's locks twice per client.
    let mut stopped = std::pin::pin!(StopSignal::new(stop));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped.as_mut() => break,
        };
        let snapshot = lifecycle.live.load();
        let Some(virtual_server) = snapshot.virtual_server(&name) else {
            break;
        };
        let stats = &virtual_server.stats;
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                stats.count_accept_error();
                if is_resource_exhaustion(&error) {
                    if let Some(suppressed) = resource_log.allow() {
                        tracing::warn!(virtual_server = %name, %error, suppressed, "accept failed, backing off {RESOURCE_BACKOFF:?}; raise the open-file limit (ulimit -n) if this persists");
                    }
                    tokio::time::sleep(RESOURCE_BACKOFF).await;
                } else {
                    tracing::debug!(virtual_server = %name, %error, "accept failed for one client");
                }
                continue;
            }
        };
        stats.count_accepted();
        crate::workers::check_placement();
        let guards = virtual_server.client_guards();
        let limit = virtual_server.plan.connection_limit;
        let admission = match stats.try_admit(limit, guards, peer.ip()) {
            Ok(admission) => admission,
            Err(refusal) => {
                refuse(virtual_server, &client, peer, refusal);
                continue;
            }
        };
        let admitted = Admitted {
            client,
            peer,
            virtual_server: Arc::clone(virtual_server),
            shutdown: lifecycle.shutdown.clone(),
            admission,
        };
        virtual_server::spawn(&lifecycle.connections, admitted);
    }
    tracing::debug!(virtual_server = %name, "stopped accepting");
}

/// Closes a client the limits refuse, counting it by reason, with a
/// warning a second at most.
fn refuse(
    virtual_server: &VirtualServer,
    client: &TcpStream,
    peer: SocketAddr,
    refusal: Rejection,
) {
    let stats = &virtual_server.stats;
    stats.count_rejected(refusal);
    if let Some(suppressed) = stats.reject_log.allow() {
        let plan = &virtual_server.plan;
        let (limit, what) = match refusal {
            Rejection::ClientLimit => (
                plan.client_connection_limit.to_string(),
                "this client has client_connection_limit connections open, closing its new ones",
            ),
            Rejection::ClientRate => (
                plan.client_rate_limit.to_string(),
                "this client opens connections faster than client_rate_limit, closing the excess",
            ),
            _ => (
                plan.connection_limit.to_string(),
                "connection limit reached, closing new clients",
            ),
        };
        tracing::warn!(virtual_server = %plan.name, client = %peer, %limit, suppressed, "{what}");
    }
    virtual_server::reset(client);
}

fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
