//! The accept loop of each virtual, where the live snapshot is: every new
//! client finds the virtual as the current configuration has it, is
//! admitted under its connection limit, and becomes a task the lifecycle
//! counts (so a shutdown can drain it).
//!
//! The loop never dies on an error. Running out of file descriptors
//! (EMFILE/ENFILE) or kernel memory backs off briefly and tries again;
//! errors that belong to one aborted client are skipped at once.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Live;
use crate::stats::Rejection;
use crate::stop_signal::{Shutdown, StopSignal};
use crate::throttle::Throttle;
use crate::virtual_server::{self, Admitted};

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
        let Some(admission) = stats.try_admit(virtual_server.plan.connection_limit) else {
            stats.count_rejected(Rejection::ConnectionLimit);
            if let Some(suppressed) = stats.reject_log.allow() {
                tracing::warn!(
                    virtual_server = %name,
                    client = %peer,
                    limit = %virtual_server.plan.connection_limit,
                    suppressed,
                    "connection limit reached, closing new clients"
                );
            }
            virtual_server::reset(&client);
            continue;
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

fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
