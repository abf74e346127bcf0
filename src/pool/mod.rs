//! Pools and their members.
//!
//! A member is identified by its address. Its runtime state (admin state,
//! connection counts, counters) lives in a [`MemberState`] of atomics held
//! in a [`MemberRegistry`] keyed by that address; its health, as on F5, is
//! judged per pool ([`MemberHealth`], keyed by pool and address). A pool
//! rebuilt from a new configuration picks up the very same state for
//! members that did not change. Choosing a member reads these atomics and
//! takes no lock.
//!
//! `selection` holds the algorithms; this module decides which members
//! they may choose from: healthy, enabled, under their limits, in the active
//! priority group, and not yet tried for this connection.

pub mod balance;
mod member;
mod member_balance;
mod member_health;
mod selection;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::stop_signal::StopTokens;
pub use member::{ByteCounts, Drain, MemberCounts, MemberSlot, MemberState};
pub use member_balance::{Departures, MemberBalance};
pub use member_health::{ramp_fraction, Health, MemberHealth};
pub(crate) use selection::unit_hash;
pub use selection::{
    address_hash, rendezvous, selector, LeastConnections, PoolView, Ratio, RoundRobin, Selection,
    Tried,
};

use crate::config::{
    AdminState, ConnectionLimit, MemberPlan, PoolPlan, RateLimit, Rebalance, ServiceDownAction,
};
use crate::tls::MemberTls;
use std::sync::atomic::{AtomicBool, Ordering};

/// Every member's state, by address, and every pool member's health, by
/// pool and address. Rebuilt on each configuration change, carrying over
/// the state of what stays.
#[derive(Debug, Default)]
pub struct MemberRegistry {
    members: HashMap<SocketAddr, Arc<MemberState>>,
    health: HashMap<(String, SocketAddr), Arc<MemberHealth>>,
    balance: HashMap<(String, SocketAddr), Arc<MemberBalance>>,
}

impl MemberRegistry {
    /// The state for `address`: the existing one from `previous` if it had
    /// the address, a fresh one otherwise.
    pub fn state_for(
        &mut self,
        address: SocketAddr,
        previous: Option<&MemberRegistry>,
        close_all: &StopTokens,
    ) -> Arc<MemberState> {
        self.members
            .entry(address)
            .or_insert_with(|| {
                previous
                    .and_then(|p| p.members.get(&address).cloned())
                    .unwrap_or_else(|| Arc::new(MemberState::new(address, close_all)))
            })
            .clone()
    }

    /// The health of `address` in `pool`: carried over from `previous`, or
    /// new (unchecked when `monitored`, up otherwise).
    pub fn health_for(
        &mut self,
        pool: &str,
        state: &MemberState,
        monitored: bool,
        previous: Option<&MemberRegistry>,
    ) -> Arc<MemberHealth> {
        let key = (pool.to_string(), state.address());
        let carried = previous.and_then(|p| p.health.get(&key).cloned());
        self.health
            .entry(key)
            .or_insert_with(|| {
                carried.unwrap_or_else(|| {
                    Arc::new(MemberHealth::new(monitored, state.retired_signal()))
                })
            })
            .clone()
    }

    /// The balance of `address` in `pool`: carried over from `previous`,
    /// or new.
    pub fn balance_for(
        &mut self,
        pool: &str,
        address: SocketAddr,
        previous: Option<&MemberRegistry>,
    ) -> Arc<MemberBalance> {
        let key = (pool.to_string(), address);
        let carried = previous.and_then(|p| p.balance.get(&key).cloned());
        self.balance
            .entry(key)
            .or_insert_with(|| carried.unwrap_or_default())
            .clone()
    }

    pub fn get(&self, address: &SocketAddr) -> Option<&Arc<MemberState>> {
        self.members.get(address)
    }

    /// The health of `address` in `pool`.
    pub fn health(&self, pool: &str, address: SocketAddr) -> Option<&Arc<MemberHealth>> {
        self.health.get(&(pool.to_string(), address))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<MemberState>> {
        self.members.values()
    }
}

/// A member as one pool sees it: this pool's settings for it, and the
/// shared state.
#[derive(Debug)]
pub struct Member {
    pub connection_limit: ConnectionLimit,
    pub connect_rate_limit: RateLimit,
    pub ratio: u32,
    pub priority: i64,
    /// The name HTTP URL persistence knows it by.
    pub route: Option<String>,
    /// Shared by every pool that lists the address.
    pub state: Arc<MemberState>,
    /// This pool's verdict on it.
    pub health: Arc<MemberHealth>,
    /// This pool's rebalancing of it.
    pub balance: Arc<MemberBalance>,
    /// A hash of its address, the same in every process: what
    /// source-address persistence chooses by.
    identity: u64,
}

impl Member {
    /// Up in this pool and enabled: may take new connections.
    pub fn usable(&self) -> bool {
        self.health.health() == Health::Up && self.state.admin_state() == AdminState::Enabled
    }
}

/// A connection slot reserved on one member of a pool: which member (its
/// index in [`Pool::members`], what persistence and per-member signals are
/// keyed by) and the slot itself, which frees itself when dropped.
#[derive(Debug)]
pub struct Reservation {
    pub index: usize,
    pub slot: MemberSlot,
}

/// A pool ready for the data path.
#[derive(Debug)]
pub struct Pool {
    name: String,
    members: Vec<Member>,
    selection: Box<dyn Selection>,
    action_on_service_down: ServiceDownAction,
    slow_ramp: Duration,
    min_active_members: usize,
    /// The members' distinct priorities, highest first: computed once, so
    /// choosing a member allocates nothing.
    priorities: Vec<i64>,
    member_tls: Option<MemberTls>,
    rebalance: Option<Rebalance>,
    /// Set by the mover while some member is off its share.
    rebalancing: AtomicBool,
}

impl Pool {
    /// `monitored(member)` tells whether a member has any monitor in this
    /// pool (its own rule or its node's); unmonitored members are up from
    /// the start.
    pub fn new(
        plan: &PoolPlan,
        registry: &mut MemberRegistry,
        previous: Option<&MemberRegistry>,
        close_all: &StopTokens,
        monitored: impl Fn(&MemberPlan) -> bool,
    ) -> Pool {
        let members: Vec<Member> = plan
            .members
            .iter()
            .map(|member| {
                let state = registry.state_for(member.address, previous, close_all);
                let health = registry.health_for(&plan.name, &state, monitored(member), previous);
                let balance = registry.balance_for(&plan.name, member.address, previous);
                Member {
                    identity: selection::address_hash(member.address.ip(), member.address.port()),
                    balance,
                    connection_limit: member.connection_limit,
                    connect_rate_limit: member.connect_rate_limit,
                    ratio: member.ratio,
                    priority: member.priority,
                    route: member.route.clone(),
                    state,
                    health,
                }
            })
            .collect();
        let ratios: Vec<u32> = members.iter().map(|m| m.ratio).collect();
        let mut priorities: Vec<i64> = members.iter().map(|m| m.priority).collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        Pool {
            name: plan.name.clone(),
            selection: selector(plan.algorithm, &ratios),
            members,
            action_on_service_down: plan.action_on_service_down,
            slow_ramp: plan.slow_ramp,
            min_active_members: plan.min_active_members,
            priorities,
            member_tls: None,
            rebalance: plan.rebalance,
            rebalancing: AtomicBool::new(false),
        }
    }

    /// A pool with no member, for a virtual that sends nothing to members
    /// (a redirect virtual): every choice finds none.
    pub fn without_members(name: &str) -> Pool {
        Pool {
            name: name.to_string(),
            members: Vec::new(),
            selection: selector(crate::config::Algorithm::RoundRobin, &[]),
            action_on_service_down: ServiceDownAction::None,
            slow_ramp: Duration::ZERO,
            min_active_members: 0,
            priorities: Vec::new(),
            member_tls: None,
            rebalance: None,
            rebalancing: AtomicBool::new(false),
        }
    }

    /// The pool's `rebalance`, if set.
    pub fn rebalance(&self) -> Option<Rebalance> {
        self.rebalance
    }

    /// Whether the pool is rebalancing now (some member off its share).
    pub fn rebalancing(&self) -> bool {
        self.rebalancing.load(Ordering::Relaxed)
    }

    pub fn set_rebalancing(&self, rebalancing: bool) {
        self.rebalancing.store(rebalancing, Ordering::Relaxed);
    }

    /// Wraps connections to the members in TLS (re-encryption).
    pub fn with_member_tls(mut self, member_tls: Option<MemberTls>) -> Pool {
        self.member_tls = member_tls;
        self
    }

    /// The TLS client side toward the members, when the pool re-encrypts.
    pub fn member_tls(&self) -> Option<&MemberTls> {
        self.member_tls.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The lowest priority group taking new connections now (F5 priority
    /// group activation), or `None` when the pool does not use priority
    /// groups (`min_active_members = 0`).
    pub fn priority_in_use(&self) -> Option<i64> {
        (self.min_active_members > 0).then(|| self.active_priority(&Tried::default()))
    }

    /// How far member `index` is along its slow ramp: 0 just back up, 1 a
    /// full share.
    pub fn ramp(&self, index: usize) -> f64 {
        self.members
            .get(index)
            .map_or(1.0, |member| member.health.ramp(self.slow_ramp))
    }

    pub fn action_on_service_down(&self) -> ServiceDownAction {
        self.action_on_service_down
    }

    /// Chooses a member not in `tried` and reserves a connection slot on it.
    /// `None` when no member can take the connection.
    pub fn reserve(&self, tried: &mut Tried) -> Option<MemberSlot> {
        self.reserve_indexed(tried).map(|reserved| reserved.slot)
    }

    /// [`reserve`](Self::reserve), also telling which member (its index in
    /// [`members`](Self::members)).
    pub fn reserve_indexed(&self, tried: &mut Tried) -> Option<Reservation> {
        self.reserve_by(tried, Choice::Algorithm)
    }

    /// Reserves a slot for a client of a source-address persistence
    /// virtual that has no live record: the member its address hashes to
    /// (weighted rendezvous hashing over the members that may take it),
    /// so that every node of a pair chooses alike without sharing
    /// records. `client` is [`selection::address_hash`] of its masked
    /// address.
    pub fn reserve_for_client(&self, tried: &mut Tried, client: u64) -> Option<Reservation> {
        self.reserve_by(tried, Choice::Hash(client))
    }

    fn reserve_by(&self, tried: &mut Tried, choice: Choice) -> Option<Reservation> {
        // A slot can be taken by another connection between the check and
        // the reservation; such a member counts as tried, so this loop ends
        // after at most one pass over the pool. One that only lost its
        // last rate token to another connection is not full, only busy
        // this moment: it is skipped for this pass but given back (not
        // tried) when the pass ends, so that a paced client waits for the
        // next token instead of being refused (as 2 to 6 of 50 were, 1 to
        // 1.5 s before their connect timeout).
        let mut raced = Tried::default();
        loop {
            // Members this connection already tried (refused, timed out,
            // full) do not keep their priority group active, so a group that
            // failed it hands over to the next, as a monitor would.
            let lowest_priority = self.active_priority(tried);
            let view = View {
                pool: self,
                tried,
                lowest_priority,
                balancing: true,
            };
            // Members a rebalancing pool holds above their share are a last
            // resort, not a refusal.
            let select = |view: &View| match choice {
                Choice::Algorithm => self.selection.select(view),
                Choice::Hash(client) => selection::rendezvous(view, client),
            };
            let Some(index) = select(&view).or_else(|| {
                select(&View {
                    balancing: false,
                    ..view
                })
            }) else {
                tried.forget(&raced);
                return None;
            };
            tried.insert(index);
            let member = &self.members[index];
            if let Some(slot) = member
                .state
                .try_reserve(member.connection_limit, member.connect_rate_limit)
            {
                return Some(Reservation { index, slot });
            }
            if member.connect_rate_limit != RateLimit::Unlimited
                && member
                    .connection_limit
                    .admits(member.state.active_connections())
            {
                raced.insert(index);
            }
        }
    }

    /// [`reserve_indexed`](Self::reserve_indexed), waiting (until
    /// `deadline` at most) while every member that could take the
    /// connection is only held back by its `connect_rate_limit`: a
    /// reconnect storm is paced to the rate the members accept instead of
    /// refused. Members down, disabled or full are not waited for.
    pub async fn reserve_paced(
        &self,
        tried: &mut Tried,
        deadline: tokio::time::Instant,
        choice: Choice,
    ) -> Option<Reservation> {
        loop {
            if let Some(reserved) = self.reserve_by(tried, choice) {
                return Some(reserved);
            }
            let wait = self.rate_wait(tried)?;
            let until = tokio::time::Instant::now() + wait;
            if until > deadline {
                return None;
            }
            tokio::time::sleep_until(until).await;
        }
    }

    /// The next member for a connection: the one its persistence names
    /// (`preferred`, taken, so it is tried once) if it can take it, else
    /// as [`reserve_paced`](Self::reserve_paced) chooses. A preferred
    /// member that is down, forced offline or full counts as tried, and
    /// the connection is balanced over the others.
    pub async fn reserve_next(
        &self,
        preferred: &mut Option<usize>,
        tried: &mut Tried,
        deadline: tokio::time::Instant,
        choice: Choice,
    ) -> Option<Reservation> {
        if let Some(index) = preferred.take() {
            if let Some(slot) = self.reserve_persistent(index, tried) {
                return Some(Reservation { index, slot });
            }
        }
        self.reserve_paced(tried, deadline, choice).await
    }

    /// How long until a member that could take a connection (usable, not
    /// tried, under its connection limit, in the active priority group)
    /// has room in its connect rate; `None` when no such member is only
    /// rate-limited.
    fn rate_wait(&self, tried: &Tried) -> Option<std::time::Duration> {
        let lowest_priority = self.active_priority(tried);
        self.members
            .iter()
            .enumerate()
            .filter(|(index, member)| {
                !tried.contains(*index)
                    && member.priority >= lowest_priority
                    && member.usable()
                    && member
                        .connection_limit
                        .admits(member.state.active_connections())
                    && member.connect_rate_limit != RateLimit::Unlimited
            })
            .map(|(_, member)| member.state.rate_wait(member.connect_rate_limit))
            .min()
            // A member that has room now was not chosen for another reason
            // (a race with another connection): look again at once, soon.
            .map(|wait| wait.max(std::time::Duration::from_millis(1)))
    }

    /// The member at `index`, for a request whose persistence names it, as
    /// F5 does: it must be up and not forced offline (a disabled member
    /// still takes its persistent clients), and under its limits. Counts as
    /// tried either way, so a fallback to balancing skips it.
    pub fn reserve_persistent(&self, index: usize, tried: &mut Tried) -> Option<MemberSlot> {
        let member = self.members.get(index)?;
        tried.insert(index);
        let state = &member.state;
        if member.health.health() != Health::Up || state.admin_state() == AdminState::ForcedOffline
        {
            return None;
        }
        state.try_reserve(member.connection_limit, member.connect_rate_limit)
    }

    /// The index of the member with this `route`.
    pub fn member_by_route(&self, route: &str) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.route.as_deref() == Some(route))
    }

    /// The index of the member at `address`.
    pub fn member_by_address(&self, address: SocketAddr) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.state.address() == address)
    }

    /// The lowest priority in use (F5 priority group activation): groups are
    /// taken from the highest priority down until together they have
    /// `min_active_members` usable members not yet tried.
    fn active_priority(&self, tried: &Tried) -> i64 {
        if self.min_active_members == 0 {
            return i64::MIN;
        }
        let mut usable = 0;
        for &priority in &self.priorities {
            usable += self
                .members
                .iter()
                .enumerate()
                .filter(|(index, m)| {
                    m.priority == priority && m.usable() && !tried.contains(*index)
                })
                .count();
            if usable >= self.min_active_members {
                return priority;
            }
        }
        i64::MIN
    }
}

/// How a member is chosen for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// By the pool's algorithm.
    Algorithm,
    /// By weighted rendezvous hashing of this client hash (source-address
    /// persistence): see [`Pool::reserve_for_client`].
    Hash(u64),
}

/// The pool as one selection sees it.
#[derive(Clone, Copy)]
struct View<'a> {
    pool: &'a Pool,
    tried: &'a Tried,
    lowest_priority: i64,
    /// Pass over members the pool's rebalancing holds above their share.
    balancing: bool,
}

impl PoolView for View<'_> {
    fn member_count(&self) -> usize {
        self.pool.members.len()
    }

    fn eligible(&self, index: usize) -> bool {
        let member = &self.pool.members[index];
        !self.tried.contains(index)
            && member.priority >= self.lowest_priority
            && member.usable()
            && !(self.balancing && member.balance.over_share())
            && member
                .connection_limit
                .admits(member.state.active_connections())
            && member.state.rate_allows(member.connect_rate_limit)
    }

    fn active(&self, index: usize) -> usize {
        self.pool.members[index].state.active_connections()
    }

    fn ratio(&self, index: usize) -> u32 {
        self.pool.members[index].ratio
    }

    fn ramp(&self, index: usize) -> f64 {
        self.pool.members[index].health.ramp(self.pool.slow_ramp)
    }

    fn identity(&self, index: usize) -> u64 {
        self.pool.members[index].identity
    }
}

#[cfg(test)]
mod tests;
