//! Virtual servers: one listening socket per virtual, its accept loop, and
//! the admission of each new client before it is handed to [`connection`].
//!
//! The accept loop never dies on an error. Running out of file descriptors
//! (EMFILE/ENFILE) or kernel memory backs off briefly and tries again;
//! errors that belong to one aborted client are skipped at once.

mod connection;
mod streams;

pub(crate) use connection::{open, reencrypt, OpenError};
pub(crate) use streams::{Back, Front};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConnectionLimit, Keepalive, SniRoute, VirtualPlan};
use crate::http::{HttpStats, HttpVirtual};
use crate::pool::Pool;
use crate::server::Live;
use crate::snat::SourceNat;
use crate::throttle::Throttle;
use crate::tls::Terminator;

/// Pause after an accept error that will not clear by itself at once
/// (out of file descriptors or memory), so the loop does not spin.
const RESOURCE_BACKOFF: Duration = Duration::from_millis(100);

/// A virtual server as the data path sees it: its plan, its pool and its
/// counters.
#[derive(Debug)]
pub struct VirtualServer {
    pub plan: VirtualPlan,
    /// The pool for clients no SNI route claims.
    pub pool: Arc<Pool>,
    /// Passthrough routing by server name, most specific first.
    pub sni_routes: Vec<(SniRoute, Arc<Pool>)>,
    pub snat: SourceNat,
    /// Set for `tls.mode = "terminate" | "auto"`.
    pub terminator: Option<Terminator>,
    /// Set for `mode = "http"`.
    pub http: Option<Arc<HttpVirtual>>,
    pub stats: Arc<VirtualStats>,
}

/// Counters of one virtual server, kept across configuration changes.
#[derive(Debug)]
pub struct VirtualStats {
    active: AtomicUsize,
    accepted: AtomicU64,
    rejected_connection_limit: AtomicU64,
    rejected_no_member: AtomicU64,
    rejected_snat_exhausted: AtomicU64,
    hello_ok: AtomicU64,
    hello_rejected: AtomicU64,
    hello_timed_out: AtomicU64,
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
    handshakes_timed_out: AtomicU64,
    accept_errors: AtomicU64,
    reject_log: Throttle,
    /// Requests, persistence and answers of an HTTP virtual.
    pub http: HttpStats,
    /// How long client connections lasted.
    duration_seconds: prometheus::Histogram,
}

/// Buckets of the connection-duration histogram, in seconds: agent
/// desktops stay for hours, web requests for milliseconds.
const DURATION_BUCKETS: [f64; 12] = [
    0.001,
    0.01,
    0.1,
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    8.0 * 3600.0,
    24.0 * 3600.0,
];

impl VirtualStats {
    /// Fresh counters for virtual `name`.
    pub fn new(name: &str) -> VirtualStats {
        let duration_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "vipgate_connection_duration_seconds",
                "How long client connections lasted, from accept to close.",
            )
            .const_label("virtual", name)
            .buckets(DURATION_BUCKETS.to_vec()),
        )
        // Fails only for malformed constant options (names, buckets).
        .expect("constant histogram options are valid");
        VirtualStats {
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            rejected_connection_limit: AtomicU64::new(0),
            rejected_no_member: AtomicU64::new(0),
            rejected_snat_exhausted: AtomicU64::new(0),
            hello_ok: AtomicU64::new(0),
            hello_rejected: AtomicU64::new(0),
            hello_timed_out: AtomicU64::new(0),
            handshakes_ok: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            handshakes_timed_out: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            reject_log: Throttle::default(),
            http: HttpStats::default(),
            duration_seconds,
        }
    }

    /// Records the life of one closed client connection.
    pub fn record_duration(&self, lasted: Duration) {
        self.duration_seconds.observe(lasted.as_secs_f64());
    }

    /// The connection-duration histogram, for the metrics page.
    pub fn duration_histogram(&self) -> &prometheus::Histogram {
        &self.duration_seconds
    }
}

impl VirtualStats {
    /// Clients connected through this virtual right now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Clients accepted since start (admitted or not).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Clients closed at once because the virtual's connection limit was
    /// reached.
    pub fn rejected_connection_limit(&self) -> u64 {
        self.rejected_connection_limit.load(Ordering::Relaxed)
    }

    /// Clients closed because no member could take them (all refused, timed
    /// out or at their limits).
    pub fn rejected_no_member(&self) -> u64 {
        self.rejected_no_member.load(Ordering::Relaxed)
    }

    /// Clients closed because no SNAT address had a free port toward any
    /// member that could take them.
    pub fn rejected_snat_exhausted(&self) -> u64 {
        self.rejected_snat_exhausted.load(Ordering::Relaxed)
    }

    /// ClientHellos read for SNI routing: (complete, refused as malformed,
    /// not TLS, too large or cut short, timed out).
    pub fn client_hellos(&self) -> (u64, u64, u64) {
        (
            self.hello_ok.load(Ordering::Relaxed),
            self.hello_rejected.load(Ordering::Relaxed),
            self.hello_timed_out.load(Ordering::Relaxed),
        )
    }

    /// TLS handshakes vipgate terminated: (completed, failed, timed out).
    pub fn handshakes(&self) -> (u64, u64, u64) {
        (
            self.handshakes_ok.load(Ordering::Relaxed),
            self.handshakes_failed.load(Ordering::Relaxed),
            self.handshakes_timed_out.load(Ordering::Relaxed),
        )
    }

    /// accept(2) failures (out of file descriptors and the like).
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    fn try_admit(self: &Arc<Self>, limit: ConnectionLimit) -> Option<Admission> {
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        if limit.admits(before) {
            Some(Admission(self.clone()))
        } else {
            self.active.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

/// One admitted client; frees its place under the connection limit on drop.
#[derive(Debug)]
struct Admission(Arc<VirtualStats>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("virtuals.{virtual_name}: cannot listen on {address}: {error}{}", bind_hint(.error))]
pub struct BindError {
    pub virtual_name: String,
    pub address: SocketAddr,
    /// Shown in the message; not chained, so it is not printed twice.
    pub error: io::Error,
}

fn bind_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::AddrInUse => " (another process, or another virtual, already listens there)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        _ => "",
    }
}

/// Opens the listening socket of a virtual.
///
/// IP_FREEBIND lets a standby instance of a keepalived/VRRP pair listen on a
/// VIP it does not hold yet.
pub fn bind(plan: &VirtualPlan) -> Result<TcpListener, BindError> {
    let open = || -> io::Result<TcpListener> {
        let socket = Socket::new(
            Domain::for_address(plan.listen),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if plan.listen.is_ipv4() {
            socket.set_freebind_v4(true)?;
        } else {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&plan.listen.into())?;
        socket.listen(plan.backlog as i32)?;
        TcpListener::from_std(socket.into())
    };
    open().map_err(|error| BindError {
        virtual_name: plan.name.clone(),
        address: plan.listen,
        error,
    })
}

/// What every accept loop shares with the server.
#[derive(Clone)]
pub(crate) struct Lifecycle {
    pub live: Live,
    /// Spawns and counts connection tasks, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Cancelled when the server stops accepting.
    pub stop_accepting: CancellationToken,
    /// Cancelled when open connections must close (drain timeout over).
    pub close_connections: CancellationToken,
}

/// Accepts clients of virtual `name` until `stop` (this listener removed
/// by a reload, or the server stopping).
pub(crate) async fn accept_loop(
    name: String,
    listener: TcpListener,
    lifecycle: Lifecycle,
    stop: CancellationToken,
) {
    let resource_log = Throttle::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let snapshot = lifecycle.live.load();
        let Some(virtual_server) = snapshot.virtual_server(&name) else {
            break;
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                virtual_server
                    .stats
                    .accept_errors
                    .fetch_add(1, Ordering::Relaxed);
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
        virtual_server
            .stats
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        let stats = &virtual_server.stats;
        let Some(admission) = stats.try_admit(virtual_server.plan.connection_limit) else {
            stats
                .rejected_connection_limit
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = stats.reject_log.allow() {
                tracing::warn!(
                    virtual_server = %name,
                    client = %peer,
                    limit = %virtual_server.plan.connection_limit,
                    suppressed,
                    "connection limit reached, closing new clients"
                );
            }
            reset(&client);
            continue;
        };
        lifecycle.connections.spawn(connection::serve(
            client,
            peer,
            Arc::clone(virtual_server),
            lifecycle.close_connections.clone(),
            lifecycle.stop_accepting.clone(),
            admission,
        ));
    }
    tracing::debug!(virtual_server = %name, "stopped accepting");
}

fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl VirtualServer {
    /// The pool for a client asking for `server_name`.
    pub fn route(&self, server_name: Option<&str>) -> &Arc<Pool> {
        self.sni_routes
            .iter()
            .find(|(route, _)| {
                route.pattern == "*" || server_name.is_some_and(|name| route.matches(name))
            })
            .map_or(&self.pool, |(_, pool)| pool)
    }
}

/// Socket options for both legs of a proxied connection.
pub(crate) fn tune(stream: &TcpStream, keepalive: Keepalive) {
    // Both legs carry interactive traffic: never hold a small write back.
    let _ = stream.set_nodelay(true);
    if let Keepalive::On {
        idle,
        interval,
        probes,
    } = keepalive
    {
        let params = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(probes);
        let socket = SockRef::from(stream);
        if let Err(error) = socket.set_tcp_keepalive(&params) {
            tracing::debug!(%error, "cannot set TCP keepalive");
        }
        // Keepalive probes only go out on a quiet connection. One with
        // data the peer never acknowledges (its client moved to the other
        // node of a pair, and its reset went there too) would otherwise
        // retransmit for a quarter of an hour: give up as keepalive would.
        let give_up = idle + interval * probes;
        if let Err(error) = socket.set_tcp_user_timeout(Some(give_up)) {
            tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
        }
    }
}

/// Closes a client with a reset: it learns at once that it was refused.
fn reset(client: &TcpStream) {
    let _ = SockRef::from(client).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tune_sets_nodelay_and_the_configured_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune(
            &stream,
            Keepalive::On {
                idle: Duration::from_secs(61),
                interval: Duration::from_secs(7),
                probes: 3,
            },
        );
        let socket = SockRef::from(&stream);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(61)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(61 + 7 * 3)),
            "unacknowledged data gives up as keepalive would"
        );

        let plain = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune(&plain, Keepalive::Off);
        assert!(!SockRef::from(&plain).keepalive().unwrap());
    }

    #[tokio::test]
    async fn listeners_use_freebind_and_report_bind_errors_with_a_hint() {
        let plan = crate::config::parse(
            "[pools.p]\nmembers = [ { address = \"127.0.0.11:1\" } ]\n[virtuals.v]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\n",
            "t",
        )
        .unwrap();
        let mut virtual_plan = plan.virtuals[0].clone();
        let listener = bind(&virtual_plan).unwrap();
        assert!(SockRef::from(&listener).freebind_v4().unwrap());
        virtual_plan.listen = listener.local_addr().unwrap();
        let error = bind(&virtual_plan).unwrap_err().to_string();
        assert!(
            error.starts_with("virtuals.v: cannot listen on 127.0.0.100:"),
            "{error}"
        );
        assert!(
            error.contains("another process, or another virtual, already listens there"),
            "{error}"
        );
    }
}
