//! Pools and their members.
//!
//! A member is identified by its address. Its runtime state (connection
//! counts, byte and failure counters) lives in a [`MemberState`] of atomics
//! held in a [`MemberRegistry`] keyed by that address, so a pool rebuilt from
//! a new configuration picks up the very same state for members that did not
//! change. The data path only ever touches these atomics: choosing a member
//! takes no lock.

mod selection;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

pub use selection::{Algorithm, RoundRobin, Selection, Tried};

use crate::config::{ConnectionLimit, PoolPlan};
use crate::throttle::Throttle;

/// The live counters of one member address.
#[derive(Debug)]
pub struct MemberState {
    address: SocketAddr,
    active: AtomicUsize,
    total: AtomicU64,
    connect_failures: AtomicU64,
    bytes_to_member: AtomicU64,
    bytes_to_client: AtomicU64,
    failure_log: Throttle,
}

impl MemberState {
    fn new(address: SocketAddr) -> MemberState {
        MemberState {
            address,
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes_to_member: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            failure_log: Throttle::default(),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
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

    /// Bytes sent to this member and back to clients, counted as connections
    /// close.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_to_member.load(Ordering::Relaxed),
            self.bytes_to_client.load(Ordering::Relaxed),
        )
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

    /// Takes one connection slot if `limit` leaves room. The slot is given
    /// back when the returned guard is dropped.
    pub fn try_reserve(self: &Arc<Self>, limit: ConnectionLimit) -> Option<MemberSlot> {
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        if limit.admits(before) {
            Some(MemberSlot(self.clone()))
        } else {
            self.active.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
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

/// Every member's state, by address. Rebuilt on each configuration change,
/// carrying over the state of addresses that stay.
#[derive(Debug, Default)]
pub struct MemberRegistry {
    members: HashMap<SocketAddr, Arc<MemberState>>,
}

impl MemberRegistry {
    /// The state for `address`: the existing one from `previous` if it had
    /// the address, a fresh one otherwise.
    pub fn state_for(
        &mut self,
        address: SocketAddr,
        previous: Option<&MemberRegistry>,
    ) -> Arc<MemberState> {
        self.members
            .entry(address)
            .or_insert_with(|| {
                previous
                    .and_then(|p| p.members.get(&address).cloned())
                    .unwrap_or_else(|| Arc::new(MemberState::new(address)))
            })
            .clone()
    }

    pub fn get(&self, address: &SocketAddr) -> Option<&Arc<MemberState>> {
        self.members.get(address)
    }
}

/// A member as one pool sees it: its address, this pool's limit for it, and
/// the shared state.
#[derive(Debug)]
pub struct Member {
    pub connection_limit: ConnectionLimit,
    pub state: Arc<MemberState>,
}

/// A pool ready for the data path.
#[derive(Debug)]
pub struct Pool {
    name: String,
    members: Vec<Member>,
    selection: Box<dyn Selection>,
}

impl Pool {
    pub fn new(
        plan: &PoolPlan,
        registry: &mut MemberRegistry,
        previous: Option<&MemberRegistry>,
    ) -> Pool {
        let members = plan
            .members
            .iter()
            .map(|member| Member {
                connection_limit: member.connection_limit,
                state: registry.state_for(member.address, previous),
            })
            .collect::<Vec<_>>();
        Pool {
            name: plan.name.clone(),
            selection: plan.algorithm.selector(members.len()),
            members,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Chooses a member not in `tried` and reserves a connection slot on it.
    /// `None` when every member is tried or at its connection limit.
    pub fn reserve(&self, tried: &mut Tried) -> Option<MemberSlot> {
        // A slot can be taken by another connection between the limit check
        // and the reservation; such a member counts as tried, so this loop
        // ends after at most one pass over the pool.
        loop {
            let index = self.selection.select(&mut |index| {
                let member = &self.members[index];
                !tried.contains(index)
                    && member
                        .connection_limit
                        .admits(member.state.active_connections())
            })?;
            tried.insert(index);
            let member = &self.members[index];
            if let Some(slot) = member.state.try_reserve(member.connection_limit) {
                return Some(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemberPlan;

    fn plan(limits: &[ConnectionLimit]) -> PoolPlan {
        PoolPlan {
            name: "p".into(),
            algorithm: Algorithm::RoundRobin,
            members: limits
                .iter()
                .enumerate()
                .map(|(i, &connection_limit)| MemberPlan {
                    address: format!("127.0.0.{}:9070", 11 + i).parse().unwrap(),
                    connection_limit,
                })
                .collect(),
        }
    }

    #[test]
    fn reserve_respects_member_limits_and_releases_on_drop() {
        let mut registry = MemberRegistry::default();
        let pool = Pool::new(
            &plan(&[ConnectionLimit::At(1), ConnectionLimit::At(1)]),
            &mut registry,
            None,
        );
        let first = pool.reserve(&mut Tried::default()).unwrap();
        let second = pool.reserve(&mut Tried::default()).unwrap();
        assert_ne!(first.member().address(), second.member().address());
        assert!(pool.reserve(&mut Tried::default()).is_none());
        drop(first);
        let third = pool.reserve(&mut Tried::default()).unwrap();
        assert_eq!(third.member().active_connections(), 1);
    }

    #[test]
    fn reserve_skips_tried_members() {
        let mut registry = MemberRegistry::default();
        let pool = Pool::new(&plan(&[ConnectionLimit::Unlimited; 3]), &mut registry, None);
        let mut tried = Tried::default();
        let mut seen = Vec::new();
        while let Some(slot) = pool.reserve(&mut tried) {
            seen.push(slot.member().address());
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn registry_keeps_state_of_members_that_stay() {
        let mut first = MemberRegistry::default();
        let pool = Pool::new(&plan(&[ConnectionLimit::Unlimited; 2]), &mut first, None);
        pool.members()[0].state.record_connected();
        let mut second = MemberRegistry::default();
        let rebuilt = Pool::new(
            &plan(&[ConnectionLimit::Unlimited; 1]),
            &mut second,
            Some(&first),
        );
        assert_eq!(rebuilt.members()[0].state.total_connections(), 1);
        assert!(Arc::ptr_eq(
            &rebuilt.members()[0].state,
            &pool.members()[0].state
        ));
    }
}
