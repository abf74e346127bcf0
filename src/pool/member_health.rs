//! The health of one member as one pool judges it, F5's pool member
//! status: the same address can be up in a pool that monitors it on one
//! port and down in another that monitors it on a second port. Written by
//! the health checker only; the data path reads atomics.
//!
//! What follows from health lives here too: the slow-ramp clock (a member
//! ramps up in the pool where it came back) and the signal that closes the
//! pool's connections to the member when it goes down there
//! (`action_on_service_down = "reset"`).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::stop_signal::StopTokens;
use arc_swap::ArcSwap;

/// `up_since` of a member that has not recovered from being down: members
/// up from the start share the load evenly at once; only a member coming
/// back from down ramps up.
const NOT_RAMPING: u64 = u64::MAX;

/// What the monitors say of a member. Stored in an atomic as its `u8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Monitored, but its first probe round has not finished: no traffic.
    Unchecked = 0,
    Up = 1,
    Down = 2,
}

impl Health {
    /// The health stored as `value` (what `self as u8` gave).
    fn from_u8(value: u8) -> Health {
        match value {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unchecked,
        }
    }

    /// The health [`as_str`](Self::as_str) names.
    pub fn from_name(name: &str) -> Option<Health> {
        [Health::Unchecked, Health::Up, Health::Down]
            .into_iter()
            .find(|health| health.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unchecked => "unchecked",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// One pool member's health, its slow-ramp clock and its reset signal.
#[derive(Debug)]
pub struct MemberHealth {
    health: AtomicU8,
    /// [`crate::clock::millis`] when it last came back up after being down,
    /// for slow ramp; [`NOT_RAMPING`] if it never was down.
    up_since: AtomicU64,
    /// Cancelled (and replaced) when the member goes down in a pool with
    /// `action_on_service_down = "reset"`.
    reset: ArcSwap<StopTokens>,
    /// The member address's retirement signal (itself a child of the
    /// server's close signal), parent of every `reset` token: a removed
    /// member or a shutdown closes these connections too.
    retired: StopTokens,
    /// Times it went down after being up: what shows a member that flaps.
    times_down: AtomicU64,
}

impl MemberHealth {
    /// A new pool member: `monitored` ones start unchecked, others up.
    /// `retired` is the member address's retirement signal.
    pub fn new(monitored: bool, retired: &StopTokens) -> MemberHealth {
        let initial = if monitored {
            Health::Unchecked
        } else {
            Health::Up
        };
        MemberHealth {
            health: AtomicU8::new(initial as u8),
            up_since: AtomicU64::new(NOT_RAMPING),
            reset: ArcSwap::from_pointee(retired.child()),
            retired: retired.clone(),
            times_down: AtomicU64::new(0),
        }
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Records a new verdict; the health checker is the only writer.
    /// Coming back from down starts the slow ramp.
    pub fn set(&self, health: Health) {
        let before = Health::from_u8(self.health.swap(health as u8, Ordering::Relaxed));
        if before == Health::Down && health == Health::Up {
            self.up_since
                .store(crate::clock::millis(), Ordering::Relaxed);
        }
        if before == Health::Up && health == Health::Down {
            self.times_down.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Times the member went from up to down in this pool since it was
    /// added (HAProxy's `chkdown`): a member that flaps counts up.
    pub fn times_down(&self) -> u64 {
        self.times_down.load(Ordering::Relaxed)
    }

    /// How far along its slow ramp the member is, from 0 (just came up) to
    /// 1 (full share). Always 1 when `slow_ramp` is zero.
    pub fn ramp(&self, slow_ramp: Duration) -> f64 {
        let up_since = self.up_since.load(Ordering::Relaxed);
        if slow_ramp.is_zero() || up_since == NOT_RAMPING {
            return 1.0;
        }
        let up_for = crate::clock::millis().saturating_sub(up_since);
        ramp_fraction(Duration::from_millis(up_for), slow_ramp)
    }

    /// The signal a connection of a pool with `action_on_service_down =
    /// "reset"` listens to.
    pub fn reset_signal(&self) -> StopTokens {
        self.reset.load().as_ref().clone()
    }

    /// Closes every connection listening to [`reset_signal`](Self::reset_signal).
    pub fn reset_connections(&self) {
        let previous = self.reset.swap(Arc::new(self.retired.child()));
        previous.cancel();
    }
}

/// Linear slow-ramp share after being up for `up_for`.
pub fn ramp_fraction(up_for: Duration, slow_ramp: Duration) -> f64 {
    if slow_ramp.is_zero() {
        1.0
    } else {
        (up_for.as_secs_f64() / slow_ramp.as_secs_f64()).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_grows_linearly_and_stops_at_full() {
        let ramp = Duration::from_secs(60);
        assert_eq!(ramp_fraction(Duration::ZERO, ramp), 0.0);
        assert_eq!(ramp_fraction(Duration::from_secs(15), ramp), 0.25);
        assert_eq!(ramp_fraction(Duration::from_secs(90), ramp), 1.0);
        assert_eq!(ramp_fraction(Duration::ZERO, Duration::ZERO), 1.0);
    }

    #[test]
    fn coming_up_restarts_the_ramp_and_reset_cancels_only_current_connections() {
        let retired = StopTokens::root();
        let member = MemberHealth::new(true, &retired);
        assert_eq!(member.health(), Health::Unchecked);
        member.set(Health::Up);
        assert_eq!(
            member.ramp(Duration::from_secs(3600)),
            1.0,
            "up from the start: no ramp"
        );
        member.set(Health::Down);
        member.set(Health::Up);
        assert!(
            member.ramp(Duration::from_secs(3600)) < 0.01,
            "back from down: ramps"
        );
        assert_eq!(MemberHealth::new(false, &retired).health(), Health::Up);

        let before = member.reset_signal();
        member.reset_connections();
        assert!(before.all.is_cancelled() && before.plain.is_cancelled());
        assert!(!member.reset_signal().all.is_cancelled());
        retired.plain.cancel();
        let now = member.reset_signal();
        assert!(
            now.plain.is_cancelled() && !now.all.is_cancelled(),
            "a hand-over reaches only the plain connections"
        );
        retired.cancel();
        assert!(
            member.reset_signal().all.is_cancelled(),
            "retiring the address reaches every pool's reset signal"
        );
    }
}
