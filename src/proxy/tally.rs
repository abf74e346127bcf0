//! What a pump tells the rest of vipgate while its connection is open:
//! bytes so far each way and when a byte last moved (read by `GET
//! /connections`, the periodic log line and the movers), and the one
//! request that comes the other way: leave, sent by rebalancing, a timed
//! drain or the lifetime limit.
//!
//! Written only by the connection's own task (plain stores, no
//! read-modify-write), read by anyone: no lock, and nothing another
//! connection shares.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::CloseReason;

/// How long no byte must have moved either way before a connection may be
/// asked to leave without being forced: a message is not cut in the
/// middle.
pub const QUIET: Duration = Duration::from_secs(1);

/// How long a leaving connection waits for its client to close after the
/// FIN it was sent, before it closes its side anyway.
pub const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// Why a connection is asked to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LeaveReason {
    /// Its member holds more than its share of the pool (`rebalance`).
    Rebalance = 1,
    /// It reached the virtual's `max_connection_lifetime`.
    Lifetime = 2,
    /// Its member is being drained by the operator.
    Drain = 3,
}

impl LeaveReason {
    /// As `GET /connections` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Rebalance => "rebalance",
            LeaveReason::Lifetime => "lifetime",
            LeaveReason::Drain => "drain",
        }
    }

    /// How the connection's close is logged.
    pub fn close_reason(self) -> CloseReason {
        match self {
            LeaveReason::Rebalance => CloseReason::Rebalanced,
            LeaveReason::Lifetime => CloseReason::LifetimeReached,
            LeaveReason::Drain => CloseReason::Drained,
        }
    }
}

/// A request to leave: why, and whether it waits for the connection to be
/// quiet ([`QUIET`]) or not (a drain behind its pace), or does not even
/// wait for the client's own close after its FIN (a drain at its
/// deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leave {
    pub reason: LeaveReason,
    pub forced: bool,
    pub at_once: bool,
}

const FORCED: u8 = 0x80;
const AT_ONCE: u8 = 0x40;

impl Leave {
    fn encode(self) -> u8 {
        self.reason as u8
            | if self.forced { FORCED } else { 0 }
            | if self.at_once { AT_ONCE } else { 0 }
    }

    /// How insistent: a request replaces a weaker one.
    fn strength(value: u8) -> u8 {
        value & (FORCED | AT_ONCE)
    }

    fn decode(value: u8) -> Option<Leave> {
        let reason = match value & !(FORCED | AT_ONCE) {
            1 => LeaveReason::Rebalance,
            2 => LeaveReason::Lifetime,
            3 => LeaveReason::Drain,
            _ => return None,
        };
        Some(Leave {
            reason,
            forced: value & FORCED != 0,
            at_once: value & AT_ONCE != 0,
        })
    }
}

/// One open connection's live counters and its request to leave.
#[derive(Debug)]
pub struct Tally {
    started: Instant,
    bytes_to_member: AtomicU64,
    bytes_to_client: AtomicU64,
    /// Milliseconds from `started` to the last byte that moved.
    active_ms: AtomicU64,
    /// A [`Leave`], encoded; 0 when none is asked.
    leave: AtomicU8,
    /// Wakes the connection's task, set by its pump at its first poll.
    waker: OnceLock<Waker>,
}

impl Tally {
    /// A connection that starts now.
    pub fn new() -> Tally {
        Tally::resumed(Duration::ZERO, Duration::ZERO, 0, 0)
    }

    /// A connection that started `age` ago and has been idle for `idle`,
    /// with these counts so far (one a predecessor process handed over).
    pub fn resumed(
        age: Duration,
        idle: Duration,
        bytes_to_member: u64,
        bytes_to_client: u64,
    ) -> Tally {
        let now = Instant::now();
        Tally {
            started: now.checked_sub(age).unwrap_or(now),
            bytes_to_member: AtomicU64::new(bytes_to_member),
            bytes_to_client: AtomicU64::new(bytes_to_client),
            active_ms: AtomicU64::new(millis(age.saturating_sub(idle))),
            leave: AtomicU8::new(0),
            waker: OnceLock::new(),
        }
    }

    /// When the connection started.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Bytes delivered to the member and to the client so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_to_member.load(Ordering::Relaxed),
            self.bytes_to_client.load(Ordering::Relaxed),
        )
    }

    /// Since a byte last moved either way.
    pub fn idle(&self) -> Duration {
        let last = self.started + Duration::from_millis(self.active_ms.load(Ordering::Relaxed));
        last.elapsed()
    }

    /// Called by the pump after bytes moved.
    pub(super) fn publish(&self, to_member: u64, to_client: u64, last_activity: Instant) {
        self.bytes_to_member.store(to_member, Ordering::Relaxed);
        self.bytes_to_client.store(to_client, Ordering::Relaxed);
        let since = last_activity.saturating_duration_since(self.started);
        self.active_ms.store(millis(since), Ordering::Relaxed);
    }

    /// Asks the connection to leave. Answers false if it was already asked
    /// as insistently (a forced request replaces one that waits for quiet,
    /// one at once either).
    pub fn ask_to_leave(&self, leave: Leave) -> bool {
        let wanted = leave.encode();
        let held = self.leave.load(Ordering::Relaxed);
        let stronger = held == 0 || Leave::strength(wanted) > Leave::strength(held);
        let asked = stronger
            && self
                .leave
                .compare_exchange(held, wanted, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if asked {
            if let Some(waker) = self.waker.get() {
                waker.wake_by_ref();
            }
        }
        asked
    }

    /// The request to leave, if one stands.
    pub fn leave(&self) -> Option<Leave> {
        Leave::decode(self.leave.load(Ordering::Relaxed))
    }

    /// The pump declined a request that waits for quiet (bytes moved since
    /// it was chosen): the mover may choose it again later.
    pub(super) fn decline(&self) {
        self.leave.store(0, Ordering::Relaxed);
    }

    /// Keeps the waker that wakes the connection's task; the first one
    /// stays (a task's waker does not change while it lives on one
    /// worker).
    pub(super) fn set_waker(&self, waker: impl FnOnce() -> Waker) {
        if self.waker.get().is_none() {
            let _ = self.waker.set(waker());
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_kept_once_and_a_forced_one_replaces_a_quiet_one() {
        let tally = Tally::new();
        assert_eq!(tally.leave(), None);
        let quiet = Leave {
            reason: LeaveReason::Rebalance,
            forced: false,
            at_once: false,
        };
        assert!(tally.ask_to_leave(quiet));
        assert!(!tally.ask_to_leave(quiet));
        assert_eq!(tally.leave(), Some(quiet));
        let forced = Leave {
            reason: LeaveReason::Drain,
            forced: true,
            at_once: false,
        };
        assert!(tally.ask_to_leave(forced));
        assert!(!tally.ask_to_leave(forced));
        assert!(!tally.ask_to_leave(quiet));
        assert_eq!(tally.leave(), Some(forced));
        let at_once = Leave {
            at_once: true,
            ..forced
        };
        assert!(tally.ask_to_leave(at_once));
        assert_eq!(tally.leave(), Some(at_once));
        assert!(!tally.ask_to_leave(forced));
        tally.decline();
        assert_eq!(tally.leave(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_last_byte() {
        let tally = Tally::resumed(Duration::from_secs(10), Duration::from_secs(10), 5, 7);
        assert_eq!(tally.idle(), Duration::from_secs(10));
        tally.publish(6, 8, Instant::now());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(tally.idle(), Duration::from_secs(3));
        assert_eq!(tally.bytes(), (6, 8));
        assert_eq!(tally.age(), Duration::from_secs(13));
    }
}
