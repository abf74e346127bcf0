//! The counters of one virtual server, kept across configuration changes:
//! atomics the data path bumps, read as named snapshots ([`VirtualCounts`])
//! by `/status` and `/metrics`, so a new counter is added here and shows in
//! both. What every HTTP request bumps keeps a share per worker
//! (`per_worker`), added up when read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{ConnectionLimit, RateLimit};
use crate::throttle::Throttle;

pub mod clients;
mod per_worker;

use per_worker::WorkerCounters;
pub use per_worker::WorkerHistogram;

/// Buckets of the request-latency histogram, in seconds: from a
/// sub-millisecond answer on the same rack to a member at its
/// idle_timeout.
const REQUEST_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

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

/// Why a client (HTTP: a request) was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The virtual's own connection limit.
    ConnectionLimit,
    /// No member could take it: down, disabled, full, refusing, failing.
    NoMember,
    /// A member could have, but no SNAT port toward it was free.
    SnatExhausted,
    /// This host ran out of file descriptors or memory: no member's fault.
    LocalResources,
    /// The client has `client_connection_limit` connections open already.
    ClientLimit,
    /// The client opens connections faster than `client_rate_limit`.
    ClientRate,
}

impl Rejection {
    /// The `reason` label and `/status` key.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::ConnectionLimit => "connection_limit",
            Rejection::NoMember => "no_member",
            Rejection::SnatExhausted => "snat_exhausted",
            Rejection::LocalResources => "local_resources",
            Rejection::ClientLimit => "client_limit",
            Rejection::ClientRate => "client_rate",
        }
    }
}

/// Counters of one virtual server.
#[derive(Debug)]
pub struct VirtualStats {
    active: AtomicUsize,
    accepted: AtomicU64,
    rejected: [AtomicU64; 6],
    /// Per-client guards, made at the first client of a virtual that has
    /// them.
    clients: std::sync::OnceLock<clients::ClientTable>,
    accept_errors: AtomicU64,
    hellos: Outcomes,
    handshakes: Outcomes,
    /// Requests, persistence and answers of an HTTP virtual.
    pub http: HttpStats,
    /// Limits warnings about refused clients to one a second.
    pub reject_log: Throttle,
    /// rustls warnings about client connections (`tls::alerts`).
    tls_warnings: AtomicU64,
    /// The virtual's name, for log lines that only have the counters.
    name: Arc<str>,
    /// How long client connections lasted.
    duration_seconds: WorkerHistogram,
    /// HTTP virtuals: how long members took to start answering.
    request_seconds: WorkerHistogram,
}

/// ok / rejected (failed) / timed out, for ClientHellos and handshakes.
#[derive(Debug, Default)]
struct Outcomes {
    ok: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
}

/// How one read of a ClientHello or one TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused (malformed, not TLS, too large, cut short) or failed.
    Failed,
    TimedOut,
}

/// A snapshot of the outcomes counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub ok: u64,
    pub failed: u64,
    pub timed_out: u64,
}

/// Clients not served, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RejectionCounts {
    pub connection_limit: u64,
    pub no_member: u64,
    pub snat_exhausted: u64,
    pub local_resources: u64,
    pub client_limit: u64,
    pub client_rate: u64,
    /// Clients not held to the per-client limits because the table of
    /// clients was full (more distinct clients active at once than it
    /// holds).
    pub client_table_full: u64,
}

/// Connections open now and since start (of a virtual: clients; of a
/// member: connections to it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionCounts {
    pub active: usize,
    pub total: u64,
}

/// A snapshot of a virtual's counters. `/status` shows connections and
/// rejections (and, for HTTP virtuals, [`HttpCounts`] beside the
/// persistence); `/metrics` shows all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VirtualCounts {
    /// Clients connected through the virtual now, and accepted since start
    /// (admitted or not).
    pub connections: ConnectionCounts,
    pub rejected: RejectionCounts,
    /// accept(2) failures (out of file descriptors and the like).
    #[serde(skip)]
    pub accept_errors: u64,
    /// ClientHellos read for SNI routing (ok, rejected, timed out).
    #[serde(skip)]
    pub client_hellos: OutcomeCounts,
    /// TLS handshakes vipgate terminated (ok, failed, timed out).
    #[serde(skip)]
    pub handshakes: OutcomeCounts,
    /// rustls warnings about client connections (renegotiation refused,
    /// unexpected messages).
    #[serde(skip)]
    pub tls_warnings: u64,
    #[serde(skip)]
    pub http: HttpCounts,
}

impl VirtualStats {
    /// Fresh counters for virtual `name`, with a share for each of
    /// `workers` worker threads where every request counts.
    pub fn new(name: &str, workers: usize) -> VirtualStats {
        let histogram = |metric: &str, help: &str, buckets: &[f64]| {
            WorkerHistogram::new(
                prometheus::HistogramOpts::new(metric, help)
                    .const_label("virtual", name)
                    .buckets(buckets.to_vec()),
                workers,
            )
            // Fails only for malformed constant options (names, buckets).
            .expect("constant histogram options are valid")
        };
        let duration_seconds = histogram(
            "vipgate_connection_duration_seconds",
            "How long client connections lasted, from accept to close.",
            &DURATION_BUCKETS,
        );
        let request_seconds = histogram(
            "vipgate_http_request_seconds",
            "HTTP virtuals: time from a request's head to the first byte of its member's answer (connecting included).",
            &REQUEST_BUCKETS,
        );
        VirtualStats {
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            rejected: Default::default(),
            accept_errors: AtomicU64::new(0),
            hellos: Outcomes::default(),
            handshakes: Outcomes::default(),
            http: HttpStats::new(workers),
            reject_log: Throttle::default(),
            tls_warnings: AtomicU64::new(0),
            name: name.into(),
            clients: std::sync::OnceLock::new(),
            duration_seconds,
            request_seconds,
        }
    }

    /// The virtual's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// rustls warned about a client connection (a refused renegotiation,
    /// an unexpected message).
    pub fn count_tls_warning(&self) {
        self.tls_warnings.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything, as one consistent-enough snapshot for the status page
    /// and the metrics.
    pub fn counts(&self) -> VirtualCounts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let outcomes = |o: &Outcomes| OutcomeCounts {
            ok: read(&o.ok),
            failed: read(&o.failed),
            timed_out: read(&o.timed_out),
        };
        VirtualCounts {
            connections: ConnectionCounts {
                active: self.active_connections(),
                total: read(&self.accepted),
            },
            rejected: RejectionCounts {
                connection_limit: read(&self.rejected[0]),
                no_member: read(&self.rejected[1]),
                snat_exhausted: read(&self.rejected[2]),
                local_resources: read(&self.rejected[3]),
                client_limit: read(&self.rejected[4]),
                client_rate: read(&self.rejected[5]),
                client_table_full: self
                    .clients
                    .get()
                    .map_or(0, clients::ClientTable::full_count),
            },
            accept_errors: read(&self.accept_errors),
            client_hellos: outcomes(&self.hellos),
            handshakes: outcomes(&self.handshakes),
            tls_warnings: read(&self.tls_warnings),
            http: self.http.counts(),
        }
    }

    /// Clients connected through this virtual right now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Clients closed without being served for `reason`.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }

    pub fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_rejected(&self, reason: Rejection) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_hello(&self, outcome: Outcome) {
        self.hellos.count(outcome);
    }

    pub fn count_handshake(&self, outcome: Outcome) {
        self.handshakes.count(outcome);
    }

    /// Records the life of one closed client connection.
    pub fn record_duration(&self, lasted: Duration) {
        self.duration_seconds.observe(lasted.as_secs_f64());
    }

    /// The connection-duration histogram, for the metrics page.
    pub fn duration_histogram(&self) -> &WorkerHistogram {
        &self.duration_seconds
    }

    /// Records how long a member took to start answering a request.
    pub fn record_request(&self, waited: Duration) {
        self.request_seconds.observe(waited.as_secs_f64());
    }

    /// The request-latency histogram (HTTP virtuals), for the metrics page.
    pub fn request_histogram(&self) -> &WorkerHistogram {
        &self.request_seconds
    }

    /// The place of a client a predecessor process admitted (binary
    /// upgrade): taken whatever the limits say, as the connection exists,
    /// but counted for its client too, so the per-client limits still
    /// hold after the upgrade.
    pub fn adopt(self: &Arc<Self>, guards: ClientGuards, peer: std::net::IpAddr) -> Admission {
        self.active.fetch_add(1, Ordering::Relaxed);
        let client = if guards.is_off() {
            NO_CLIENT_SLOT
        } else {
            let table = self.clients.get_or_init(clients::ClientTable::default);
            let now = crate::clock::millis().saturating_mul(1000);
            match table.admit(peer, ConnectionLimit::Unlimited, RateLimit::Unlimited, now) {
                Ok(Some(slot)) => slot,
                _ => NO_CLIENT_SLOT,
            }
        };
        Admission {
            stats: self.clone(),
            client,
        }
    }

    /// Takes a place under the virtual's and the client's limits for a
    /// new client from `peer`, released when the returned guard drops; or
    /// why not.
    pub fn try_admit(
        self: &Arc<Self>,
        limit: ConnectionLimit,
        guards: ClientGuards,
        peer: std::net::IpAddr,
    ) -> Result<Admission, Rejection> {
        let client = if guards.is_off() {
            NO_CLIENT_SLOT
        } else {
            let table = self.clients.get_or_init(clients::ClientTable::default);
            let now = crate::clock::millis().saturating_mul(1000);
            match table.admit(peer, guards.connections, guards.rate, now) {
                Ok(slot) => slot.unwrap_or(NO_CLIENT_SLOT),
                Err(clients::ClientRefusal::Connections) => return Err(Rejection::ClientLimit),
                Err(clients::ClientRefusal::Rate) => return Err(Rejection::ClientRate),
            }
        };
        let admission = Admission {
            stats: self.clone(),
            client,
        };
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        if limit.admits(before) {
            Ok(admission)
        } else {
            // Dropped: gives both places back.
            drop(admission);
            Err(Rejection::ConnectionLimit)
        }
    }

    /// Connections open from `client` now, as the per-client guards count
    /// them (0 when the virtual has none).
    pub fn open_from(&self, client: std::net::IpAddr) -> u32 {
        self.clients
            .get()
            .map_or(0, |table| table.open_from(client))
    }
}

/// The per-client limits of a virtual (`client_connection_limit`,
/// `client_rate_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientGuards {
    pub connections: ConnectionLimit,
    pub rate: RateLimit,
}

impl ClientGuards {
    fn is_off(&self) -> bool {
        self.connections == ConnectionLimit::Unlimited && self.rate == RateLimit::Unlimited
    }
}

/// An admission's client slot when the client is not counted.
const NO_CLIENT_SLOT: u32 = u32::MAX;

impl Outcomes {
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Failed => &self.failed,
            Outcome::TimedOut => &self.timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One admitted client; frees its place under the connection limits on
/// drop.
#[derive(Debug)]
pub struct Admission {
    stats: Arc<VirtualStats>,
    /// Its slot in the per-client table, or [`NO_CLIENT_SLOT`].
    client: u32,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let (Some(table), true) = (self.stats.clients.get(), self.client != NO_CLIENT_SLOT) {
            table.release(self.client);
        }
    }
}

/// What an HTTP virtual counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpEvent {
    Request,
    PersistenceHit,
    PersistenceMiss,
    PersistenceReroute,
    CookieSet,
    /// A 503: no member could take the request.
    NoMember,
    /// A 502: the member failed while answering.
    MemberFailed,
    /// A 504: the member did not answer within idle_timeout.
    MemberTimedOut,
    /// A 408: request headers not complete within header_timeout.
    RequestTimeout,
    Upgrade,
    /// A 400: a request hyper could not parse, without `Host`, or with a
    /// malformed body.
    BadRequest,
    /// A 431: a request head over max_header_size.
    HeaderTooLarge,
    /// A request that came over HTTP/2.
    Http2Request,
    /// A member's answer, by status class (1xx to 5xx).
    MemberAnswered1xx,
    MemberAnswered2xx,
    MemberAnswered3xx,
    MemberAnswered4xx,
    MemberAnswered5xx,
    /// A redirect a `redirect` virtual answered with.
    Redirected,
}

impl HttpEvent {
    /// The event counting a member's answer with `status`.
    pub fn member_answered(status: http::StatusCode) -> HttpEvent {
        match status.as_u16() {
            100..=199 => HttpEvent::MemberAnswered1xx,
            200..=299 => HttpEvent::MemberAnswered2xx,
            300..=399 => HttpEvent::MemberAnswered3xx,
            400..=499 => HttpEvent::MemberAnswered4xx,
            _ => HttpEvent::MemberAnswered5xx,
        }
    }
}

/// Counters of an HTTP virtual, by [`HttpEvent`]: bumped on every
/// request, so kept per worker.
#[derive(Debug)]
pub struct HttpStats {
    events: WorkerCounters<19>,
}

impl HttpStats {
    /// Counters for `workers` worker threads.
    pub fn new(workers: usize) -> HttpStats {
        HttpStats {
            events: WorkerCounters::new(workers),
        }
    }

    pub fn count(&self, event: HttpEvent) {
        self.events.add(event as usize, 1);
    }

    pub fn counts(&self) -> HttpCounts {
        let read = |event: HttpEvent| self.events.sum(event as usize);
        HttpCounts {
            requests: read(HttpEvent::Request),
            persistence_hits: read(HttpEvent::PersistenceHit),
            persistence_misses: read(HttpEvent::PersistenceMiss),
            persistence_reroutes: read(HttpEvent::PersistenceReroute),
            cookies_set: read(HttpEvent::CookieSet),
            answered_503: read(HttpEvent::NoMember),
            answered_502: read(HttpEvent::MemberFailed),
            answered_504: read(HttpEvent::MemberTimedOut),
            answered_408: read(HttpEvent::RequestTimeout),
            upgrades: read(HttpEvent::Upgrade),
            answered_400: read(HttpEvent::BadRequest),
            answered_431: read(HttpEvent::HeaderTooLarge),
            http2_requests: read(HttpEvent::Http2Request),
            redirects: read(HttpEvent::Redirected),
            member_answers: MemberAnswers {
                informational: read(HttpEvent::MemberAnswered1xx),
                success: read(HttpEvent::MemberAnswered2xx),
                redirection: read(HttpEvent::MemberAnswered3xx),
                client_error: read(HttpEvent::MemberAnswered4xx),
                server_error: read(HttpEvent::MemberAnswered5xx),
            },
        }
    }
}

/// A snapshot of [`HttpStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HttpCounts {
    /// Requests received.
    pub requests: u64,
    /// Requests sent to the member their persistence named.
    pub persistence_hits: u64,
    /// Requests without persistence information, balanced.
    pub persistence_misses: u64,
    /// Requests whose persistence named a member that could not take them
    /// (unknown, down, full, or a forged or expired cookie): balanced.
    pub persistence_reroutes: u64,
    /// Persistence cookies set (new sessions, re-routes and renewals).
    pub cookies_set: u64,
    /// 503 answers: no member could take the request.
    pub answered_503: u64,
    /// Redirects a `redirect` virtual answered with.
    pub redirects: u64,
    /// 502 answers: the member failed while answering.
    pub answered_502: u64,
    /// 504 answers: the member did not answer within idle_timeout.
    pub answered_504: u64,
    /// 408 answers: request headers not complete within header_timeout.
    pub answered_408: u64,
    /// Connections switched to another protocol (WebSocket) and tunnelled.
    pub upgrades: u64,
    /// 400 answers: a request that could not be parsed, had no `Host`, or
    /// had a malformed body.
    pub answered_400: u64,
    /// 431 answers: a request head over max_header_size.
    pub answered_431: u64,
    /// Requests that came over HTTP/2 (also counted in `requests`).
    pub http2_requests: u64,
    /// The members' answers by status class.
    pub member_answers: MemberAnswers,
}

/// Members' answers passed to clients, by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemberAnswers {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_back_what_was_counted_by_name() {
        let stats = Arc::new(VirtualStats::new("v", 2));
        stats.count_rejected(Rejection::SnatExhausted);
        stats.count_rejected(Rejection::LocalResources);
        stats.count_rejected(Rejection::LocalResources);
        stats.count_handshake(Outcome::TimedOut);
        stats.http.count(HttpEvent::NoMember);
        let off = ClientGuards {
            connections: ConnectionLimit::Unlimited,
            rate: RateLimit::Unlimited,
        };
        let client = std::net::IpAddr::from([10, 0, 0, 1]);
        let admitted = stats
            .try_admit(ConnectionLimit::At(1), off, client)
            .unwrap();
        assert_eq!(
            stats.try_admit(ConnectionLimit::At(1), off, client).err(),
            Some(Rejection::ConnectionLimit)
        );
        let counts = stats.counts();
        assert_eq!(counts.connections.active, 1);
        assert_eq!(
            counts.rejected,
            RejectionCounts {
                snat_exhausted: 1,
                local_resources: 2,
                ..RejectionCounts::default()
            }
        );
        assert_eq!(counts.handshakes.timed_out, 1);
        assert_eq!(counts.http.answered_503, 1);
        drop(admitted);
        assert_eq!(stats.active_connections(), 0);

        // A client at its own limit is refused, others not; its place comes
        // back when its connection ends.
        let one_each = ClientGuards {
            connections: ConnectionLimit::At(1),
            rate: RateLimit::Unlimited,
        };
        let unlimited = ConnectionLimit::Unlimited;
        let first = stats.try_admit(unlimited, one_each, client).unwrap();
        assert_eq!(
            stats.try_admit(unlimited, one_each, client).err(),
            Some(Rejection::ClientLimit)
        );
        let other = std::net::IpAddr::from([10, 0, 0, 2]);
        assert!(stats.try_admit(unlimited, one_each, other).is_ok());
        assert_eq!(stats.open_from(client), 1);
        drop(first);
        assert_eq!(stats.open_from(client), 0);
        assert!(stats.try_admit(unlimited, one_each, client).is_ok());
        // A connection carried over by an upgrade is let in whatever the
        // limit, and counted for its client: the next one is refused.
        let carried = stats.adopt(one_each, other);
        assert_eq!(stats.open_from(other), 1);
        assert_eq!(
            stats.try_admit(unlimited, one_each, other).err(),
            Some(Rejection::ClientLimit)
        );
        drop(carried);
    }
}
