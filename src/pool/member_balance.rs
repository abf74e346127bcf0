//! One pool member's part in keeping long-lived connections even: whether
//! the pool's rebalancing holds it above its share right now (new clients
//! then go elsewhere, whatever the algorithm), and how many of its
//! connections were closed so that their clients reconnect elsewhere, by
//! why. Keyed by pool and address like health, and carried across reloads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use crate::proxy::LeaveReason;

#[derive(Debug, Default)]
pub struct MemberBalance {
    over_share: AtomicBool,
    rebalanced: AtomicU64,
    lifetime: AtomicU64,
    drained: AtomicU64,
}

/// Connections closed so that their clients reconnect, by why.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Departures {
    /// By the pool's `rebalance`.
    pub rebalanced: u64,
    /// At the virtual's `max_connection_lifetime`.
    pub lifetime: u64,
    /// By a timed drain of the member.
    pub drained: u64,
}

impl MemberBalance {
    /// Whether a rebalancing pool holds this member at or above its share:
    /// it is then passed over for new clients.
    pub fn over_share(&self) -> bool {
        self.over_share.load(Ordering::Relaxed)
    }

    /// Set by the pool's mover as it judges the pool.
    pub fn set_over_share(&self, over: bool) {
        // Read first: the flag sits on a line every selection reads, so a
        // write that changes nothing is spared.
        if self.over_share() != over {
            self.over_share.store(over, Ordering::Relaxed);
        }
    }

    /// Counts one connection that left for `reason`.
    pub fn count(&self, reason: LeaveReason) {
        let counter = match reason {
            LeaveReason::Rebalance => &self.rebalanced,
            LeaveReason::Lifetime => &self.lifetime,
            LeaveReason::Drain => &self.drained,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn departures(&self) -> Departures {
        Departures {
            rebalanced: self.rebalanced.load(Ordering::Relaxed),
            lifetime: self.lifetime.load(Ordering::Relaxed),
            drained: self.drained.load(Ordering::Relaxed),
        }
    }
}
