//! The runtime state of one member address, shared by every pool that
//! lists it: administrative state, connection counts, the connect rate
//! bucket, and the signal that closes its connections once it left the
//! configuration. All atomics: the data path reads them without a lock.
//! (Health is judged per pool: [`super::member_health`].)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::stop_signal::StopTokens;
use serde::Serialize;

use crate::config::{AdminState, ConnectionLimit, RateLimit};
use crate::stats::ConnectionCounts;
use crate::throttle::Throttle;

/// The live counters and states of one member address.
#[derive(Debug)]
pub struct MemberState {
    address: SocketAddr,
    admin: AtomicU8,
    active: AtomicUsize,
    total: AtomicU64,
    connect_failures: AtomicU64,
    bytes_to_member: AtomicU64,
    bytes_to_client: AtomicU64,
    rate: RateBucket,
    /// Cancelled when the member left the configuration and the drain
    /// timeout after the reload ran out: closes every connection still on
    /// it. A child of the server's close signal; parent of each pool's
    /// reset signal for it. A pair: see [`StopTokens`].
    retired: StopTokens,
    failure_log: Throttle,
    /// Time from starting a connect to the member being connected.
    connect_seconds: prometheus::Histogram,
    /// The operator's timed drain, if one was asked: read by the mover
    /// and the status page, never by the data path.
    drain: std::sync::Mutex<Option<Drain>>,
}

/// A timed drain of one member address: it takes no new clients, and its
/// connections are closed at an even pace so the last is gone by
/// `deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub started: tokio::time::Instant,
    pub deadline: tokio::time::Instant,
    /// Its connections when the drain started.
    pub initial: usize,
    /// When its last connection was gone: the member is drained.
    pub finished: Option<tokio::time::Instant>,
}

impl Drain {
    /// How many connections may still be open at `now` to keep the pace:
    /// `initial` at the start, falling evenly to none at the deadline.
    pub fn allowed_at(&self, now: tokio::time::Instant) -> usize {
        let total = self
            .deadline
            .saturating_duration_since(self.started)
            .as_secs_f64();
        let left = self.deadline.saturating_duration_since(now).as_secs_f64();
        if total <= 0.0 || left <= 0.0 {
            return 0;
        }
        (self.initial as f64 * left / total).ceil() as usize
    }
}

/// Buckets of the connect-latency histogram, in seconds: 100 us to 5 s.
const CONNECT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 5.0,
];

impl MemberState {
    /// A new member address; `close_all` is the server's close signal.
    pub fn new(address: SocketAddr, close_all: &StopTokens) -> MemberState {
        let retired = close_all.child();
        let connect_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "vipgate_member_connect_seconds",
                "Time to connect to the member (TCP, and TLS when re-encrypting).",
            )
            .const_label("member", address.to_string())
            .buckets(CONNECT_BUCKETS.to_vec()),
        )
        // Fails only for malformed constant options (names, buckets).
        .expect("constant histogram options are valid");
        MemberState {
            address,
            admin: AtomicU8::new(AdminState::Enabled as u8),
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes_to_member: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            rate: RateBucket::default(),
            retired,
            failure_log: Throttle::default(),
            connect_seconds,
            drain: std::sync::Mutex::new(None),
        }
    }

    /// The timed drain asked of this member, if any (finished or not).
    pub fn drain(&self) -> Option<Drain> {
        *crate::sync::lock(&self.drain)
    }

    /// Starts, updates or (with `None`) ends a timed drain.
    pub fn set_drain(&self, drain: Option<Drain>) {
        *crate::sync::lock(&self.drain) = drain;
    }

    /// The signal a connection of a pool without `action_on_service_down
    /// = "reset"` listens to: cancelled only when the member was removed
    /// from the configuration and its drain time is over (or at shutdown).
    pub fn retired_signal(&self) -> &StopTokens {
        &self.retired
    }

    /// Closes every connection still on this member (it left the
    /// configuration and its drain time is over).
    pub fn retire(&self) {
        self.retired.cancel();
    }

    /// Records how long one connect took.
    pub fn record_connect_time(&self, took: Duration) {
        self.connect_seconds.observe(took.as_secs_f64());
    }

    /// The connect-latency histogram, for the metrics page.
    pub fn connect_histogram(&self) -> &prometheus::Histogram {
        &self.connect_seconds
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    pub fn set_admin_state(&self, state: AdminState) {
        self.admin.store(state as u8, Ordering::Relaxed);
    }

    /// The member's counters, for the status page and the metrics.
    pub fn counts(&self) -> MemberCounts {
        MemberCounts {
            connections: ConnectionCounts {
                active: self.active_connections(),
                total: self.total.load(Ordering::Relaxed),
            },
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            bytes: ByteCounts {
                to_member: self.bytes_to_member.load(Ordering::Relaxed),
                to_client: self.bytes_to_client.load(Ordering::Relaxed),
            },
        }
    }

    /// Connections to this member open right now (including ones still
    /// connecting).
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections established to this member since start.
    pub fn total_connections(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Connect attempts that were refused, timed out or failed otherwise.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Limits connect-failure warnings for this member to one a second.
    pub fn failure_log(&self) -> &Throttle {
        &self.failure_log
    }

    pub fn record_connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_connected(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_bytes(&self, to_member: u64, to_client: u64) {
        self.bytes_to_member.fetch_add(to_member, Ordering::Relaxed);
        self.bytes_to_client.fetch_add(to_client, Ordering::Relaxed);
    }

    /// Whether the connect rate leaves room for one more now (without
    /// taking it).
    pub fn rate_allows(&self, limit: RateLimit) -> bool {
        // Read the clock only for members that have a rate limit.
        limit == RateLimit::Unlimited || self.rate.allows(limit, crate::clock::millis())
    }

    /// How long until the connect rate leaves room for one more (zero when
    /// it does now).
    pub fn rate_wait(&self, limit: RateLimit) -> std::time::Duration {
        match limit {
            RateLimit::Unlimited => std::time::Duration::ZERO,
            RateLimit::PerSecond(_) => self.rate.wait(limit, crate::clock::millis()),
        }
    }

    /// The slot of a connection a predecessor process opened (binary
    /// upgrade): counted whatever the limits, as the connection exists.
    pub fn adopt(self: &Arc<Self>) -> MemberSlot {
        self.active.fetch_add(1, Ordering::Relaxed);
        MemberSlot(self.clone())
    }

    /// Takes one connection slot if `limit` and the connect rate leave room.
    /// The slot is given back when the returned guard is dropped.
    pub fn try_reserve(
        self: &Arc<Self>,
        limit: ConnectionLimit,
        rate: RateLimit,
    ) -> Option<MemberSlot> {
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        // The rate token is only spent when the limit admits, and the clock
        // only read for members that have a rate limit.
        let admitted = limit.admits(before)
            && (rate == RateLimit::Unlimited || self.rate.take(rate, crate::clock::millis()));
        if admitted {
            Some(MemberSlot(self.clone()))
        } else {
            self.active.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

/// A snapshot of a member address's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemberCounts {
    /// Connections (HTTP: requests) open now, including ones connecting,
    /// and established since start.
    pub connections: ConnectionCounts,
    /// Connects refused, timed out, or whose TLS handshake failed.
    pub connect_failures: u64,
    pub bytes: ByteCounts,
}

/// Bytes carried through a member, counted as connections close.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ByteCounts {
    pub to_member: u64,
    pub to_client: u64,
}

/// One reserved connection to a member; releases it on drop.
#[derive(Debug)]
pub struct MemberSlot(Arc<MemberState>);

impl MemberSlot {
    pub fn member(&self) -> &Arc<MemberState> {
        &self.0
    }
}

impl Drop for MemberSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A token bucket for new connections, as a generic cell rate algorithm:
/// one atomic holding the time (in microseconds) at which the bucket will be
/// full again. Holds up to one second of the rate as burst.
#[derive(Debug, Default)]
struct RateBucket {
    full_at_micros: AtomicU64,
}

impl RateBucket {
    fn allows(&self, limit: RateLimit, now_millis: u64) -> bool {
        match limit {
            RateLimit::Unlimited => true,
            RateLimit::PerSecond(rate) => {
                let (now, cost, burst) = Self::units(rate, now_millis);
                self.full_at_micros.load(Ordering::Relaxed).max(now) + cost <= now + burst
            }
        }
    }

    fn wait(&self, limit: RateLimit, now_millis: u64) -> std::time::Duration {
        let RateLimit::PerSecond(rate) = limit else {
            return std::time::Duration::ZERO;
        };
        let (now, cost, burst) = Self::units(rate, now_millis);
        let next = self.full_at_micros.load(Ordering::Relaxed).max(now) + cost;
        std::time::Duration::from_micros(next.saturating_sub(now + burst))
    }

    fn take(&self, limit: RateLimit, now_millis: u64) -> bool {
        let RateLimit::PerSecond(rate) = limit else {
            return true;
        };
        let (now, cost, burst) = Self::units(rate, now_millis);
        self.full_at_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |full_at| {
                let next = full_at.max(now) + cost;
                (next <= now + burst).then_some(next)
            })
            .is_ok()
    }

    /// Now, the cost of one connection and the burst allowance, in
    /// microseconds.
    fn units(rate: u32, now_millis: u64) -> (u64, u64, u64) {
        let cost = 1_000_000 / u64::from(rate.max(1));
        (now_millis * 1000, cost.max(1), 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_bucket_allows_one_second_of_burst_then_refills() {
        let bucket = RateBucket::default();
        let limit = RateLimit::PerSecond(5);
        let start = 10_000;
        let taken = (0..10).filter(|_| bucket.take(limit, start)).count();
        assert_eq!(taken, 5);
        assert!(!bucket.allows(limit, start));
        assert_eq!(
            bucket.wait(limit, start),
            std::time::Duration::from_millis(200),
            "one connection's worth of time"
        );
        // One connection's worth of time later, one more.
        assert!(bucket.take(limit, start + 200));
        assert!(!bucket.take(limit, start + 200));
        assert_eq!(
            bucket.wait(RateLimit::Unlimited, start),
            std::time::Duration::ZERO
        );
        assert!(bucket.take(RateLimit::Unlimited, start));
    }

    #[test]
    fn a_drain_allows_fewer_connections_evenly_to_none_at_its_deadline() {
        let started = tokio::time::Instant::now();
        let drain = Drain {
            started,
            deadline: started + Duration::from_secs(20),
            initial: 600,
            finished: None,
        };
        assert_eq!(drain.allowed_at(started), 600);
        assert_eq!(drain.allowed_at(started + Duration::from_secs(5)), 450);
        assert_eq!(drain.allowed_at(started + Duration::from_secs(10)), 300);
        assert_eq!(drain.allowed_at(started + Duration::from_millis(19_990)), 1);
        assert_eq!(drain.allowed_at(started + Duration::from_secs(20)), 0);
        assert_eq!(drain.allowed_at(started + Duration::from_secs(30)), 0);
    }
}
