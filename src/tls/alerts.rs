//! What rustls says about a client connection. rustls logs (through the
//! `log` crate, at WARN) things any client can provoke: a refused
//! renegotiation ("Sending warning alert NoRenegotiation"), a duplicate
//! SNI, an unexpected message. At WARN and without context they would
//! let any client fill the log, and say nothing an operator can act on.
//! Here they become DEBUG lines that name the virtual and the client, and
//! are counted per virtual (`vipgate_tls_warnings_total`).
//!
//! rustls does not know which connection it is logging for, so the
//! connection task carries that in a task-local value, set once for the
//! task's life, and read only when rustls logs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::stats::VirtualStats;

tokio::task_local! {
    static CLIENT: TlsClient;
}

/// The client connection a task serves, as rustls' log lines need it.
struct TlsClient {
    stats: Arc<VirtualStats>,
    peer: SocketAddr,
}

/// Runs `serving` (one client connection of a TLS-terminating virtual)
/// with its virtual and peer known to [`rustls_said`].
pub(crate) fn attributed<F: Future>(
    stats: Arc<VirtualStats>,
    peer: SocketAddr,
    serving: F,
) -> impl Future<Output = F::Output> {
    // Not an async fn: it would keep `serving` twice (as its argument and
    // inside the scope), a copy of an idle connection's whole state.
    CLIENT.scope(TlsClient { stats, peer }, serving)
}

/// Has [`rustls_said`] take rustls' `log` records (see
/// `logging::claim_log_records`); idempotent.
pub(crate) fn claim_rustls_records() {
    let claimed = crate::logging::claim_log_records("rustls", rustls_said);
    debug_assert!(claimed, "another crate's log records were claimed first");
}

/// A log record from rustls: counted against the client's virtual when it
/// is a warning or an error and comes from a client connection, and
/// logged at DEBUG with the virtual and the client when known.
pub(crate) fn rustls_said(record: &log::Record<'_>) {
    if record.level() > log::Level::Warn {
        // rustls' own tracing of handshakes, for whoever asked for it.
        tracing::trace!(target: "vipgate::tls", rustls = %record.args());
        return;
    }
    let known = CLIENT.try_with(|client| {
        client.stats.count_tls_warning();
        tracing::debug!(
            target: "vipgate::tls",
            virtual_server = %client.stats.name(),
            client = %client.peer,
            rustls = %record.args(),
            "TLS warning on a client connection"
        );
    });
    if known.is_err() {
        // A member or monitor connection: nothing to attribute it to.
        tracing::debug!(target: "vipgate::tls", rustls = %record.args(), "TLS warning");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn attribution_does_not_copy_the_connection_state() {
        let serving = async {
            let state = [7u8; 1024];
            tokio::task::yield_now().await;
            state[1023]
        };
        let alone = std::mem::size_of_val(&serving);
        let stats = std::sync::Arc::new(crate::stats::VirtualStats::new("v", 1));
        let attributed = super::attributed(stats, "127.0.0.1:1".parse().unwrap(), serving);
        let size = std::mem::size_of_val(&attributed);
        assert!(
            size <= alone + 128,
            "{size} bytes for a {alone}-byte connection"
        );
    }
}
