//! The mover: one task that closes long-lived connections on purpose, a
//! few at a time, so that their clients reconnect through vipgate to
//! where they belong now. Three reasons, in this order each tick:
//!
//! - a timed drain of a member (the operator's `drain`): its connections
//!   go at an even pace, idle ones first, the last by the deadline;
//! - a pool's `rebalance`: while a member holds more than its share
//!   ([`crate::pool::balance`]), a quiet connection of the fullest one
//!   goes, at most `rate` a second in the pool;
//! - a virtual's `max_connection_lifetime`: the oldest quiet connection
//!   past its limit, from the same per-pool budget.
//!
//! And once a second, the `log_interval` line of connections still open.
//!
//! A connection is only *asked* to leave ([`crate::proxy::Tally`]): its
//! own task closes it with a FIN once nothing is in flight, so no message
//! is cut. Rebalancing never asks a connection opened after its
//! rebalance began: a client it moved is not moved again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::snapshot::Snapshot;
use super::Live;
use crate::config::{ConnectionLimit, DEFAULT_LIFETIME_RATE};
use crate::connections::{Open, Registry};
use crate::logging::Address;
use crate::pool::balance::{judge, Judgement, Load};
use crate::pool::{Drain, Health, Pool};
use crate::proxy::{Leave, LeaveReason, QUIET};

/// How often the mover looks: fine enough that a rate of 20 a second is
/// one connection a tick.
pub(super) const TICK: Duration = Duration::from_millis(50);
/// How often the mover looks while it has nothing to move: a rebalance
/// or a drain starts within a second.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Between two looks for `log_interval` lines.
const LOG_LOOK: Duration = Duration::from_secs(1);
/// Quiet connections kept per member as candidates in one look.
const CANDIDATES: usize = 8;

/// Runs until `stopping` (the server stops accepting: a client closed
/// then could not come back).
pub(super) async fn run(live: Live, stopping: CancellationToken) {
    let mut mover = Mover::default();
    let mut last_log_look = Instant::now();
    let mut pause = IDLE_TICK;
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stopping.cancelled() => return,
        }
        let snapshot = live.load_full();
        let now = Instant::now();
        let log_due = now.saturating_duration_since(last_log_look) >= LOG_LOOK;
        if log_due {
            last_log_look = now;
        }
        // Idle (nothing to move), it wakes once a second, not twenty times.
        pause = if mover.tick(&snapshot, now, log_due) {
            TICK
        } else {
            IDLE_TICK
        };
    }
}

/// What the mover remembers between ticks, per pool name (so a reload
/// does not restart a rebalance).
#[derive(Default)]
struct Mover {
    pools: HashMap<String, Pacer>,
}

/// One pool's budget and rebalance.
struct Pacer {
    tokens: f64,
    refilled: Instant,
    /// Moves this tick may still make: `rate` spread over the ticks, so a
    /// late tick does not move two at once.
    this_tick: u32,
    /// When the current rebalance began; `None` while the pool is even.
    rebalancing_since: Option<Instant>,
}

impl Pacer {
    fn may_move(&self) -> bool {
        self.tokens >= 1.0 && self.this_tick > 0
    }

    fn moved(&mut self) {
        self.tokens -= 1.0;
        self.this_tick -= 1;
    }
}

/// What one look at the open connections found for one pool.
#[derive(Default)]
struct PoolFindings {
    /// Per member index: connections not asked to leave.
    held: Vec<usize>,
    /// Per member index: quiet connections a rebalance may move.
    movable: Vec<Vec<Arc<Open>>>,
    /// The oldest quiet connection past its lifetime.
    expired: Option<Arc<Open>>,
}

/// What one look found for a member address being drained.
#[derive(Default)]
struct DrainFindings {
    /// Not yet asked, most idle first once sorted.
    waiting: Vec<Arc<Open>>,
    /// Asked, and not gone yet (waiting for their client's close).
    asked: Vec<Arc<Open>>,
}

impl Mover {
    /// One look; true while there is something to move (a drain, a
    /// lifetime, a pool off its share), so the next comes a tick later.
    fn tick(&mut self, snapshot: &Snapshot, now: Instant, log_due: bool) -> bool {
        let drained: Vec<SocketAddr> = snapshot
            .members()
            .filter(|member| member.drain().is_some_and(|drain| drain.finished.is_none()))
            .map(|member| member.address())
            .collect();
        let lifetimes: HashMap<&str, Duration> = snapshot
            .plan()
            .virtuals
            .iter()
            .filter_map(|v| Some((v.name.as_str(), v.max_connection_lifetime?)))
            .collect();
        let log_intervals: HashMap<&str, Duration> = snapshot
            .plan()
            .virtuals
            .iter()
            .filter_map(|v| Some((v.name.as_str(), v.log_interval?)))
            .filter(|_| log_due)
            .collect();
        for pool in snapshot.pools().filter(|pool| pool.rebalance().is_none()) {
            settle(pool);
        }
        let rebalancing = snapshot.pools().any(|pool| self.may_be_uneven(pool));
        let busy = !drained.is_empty() || !lifetimes.is_empty() || rebalancing;
        if !busy && log_intervals.is_empty() {
            return false;
        }
        let mut looked = self.look(snapshot, now, &drained, &lifetimes, &log_intervals);
        // Every member being drained, also one with nothing left open.
        for address in drained {
            let findings = looked.drains.remove(&address).unwrap_or_default();
            drain_member(snapshot, address, findings, now);
        }
        for pool in snapshot.pools() {
            let findings = looked.pools.get(pool.name());
            self.pace_pool(pool, findings, now);
        }
        for open in looked.to_log {
            log_open(&open);
        }
        busy
    }

    /// Whether `pool` rebalances, or may need to: judged first from the
    /// members' own counts (no look at the connections), which a member
    /// shared with another pool overstates; the look then decides.
    fn may_be_uneven(&self, pool: &Pool) -> bool {
        let Some(rebalance) = pool.rebalance() else {
            return false;
        };
        if self
            .pools
            .get(pool.name())
            .is_some_and(|pacer| pacer.rebalancing_since.is_some())
        {
            return true;
        }
        let held: Vec<usize> = pool
            .members()
            .iter()
            .map(|member| member.state.active_connections())
            .collect();
        judge(&loads(pool, &held), rebalance.tolerance).uneven
    }

    /// One pass over the open connections, collecting what this tick
    /// acts on.
    fn look(
        &self,
        snapshot: &Snapshot,
        now: Instant,
        drained: &[SocketAddr],
        lifetimes: &HashMap<&str, Duration>,
        log_intervals: &HashMap<&str, Duration>,
    ) -> Looked {
        let mut looked = Looked::default();
        for pool in snapshot.pools() {
            let members = pool.members().len();
            looked.pools.insert(
                pool.name().to_string(),
                PoolFindings {
                    held: vec![0; members],
                    movable: vec![Vec::new(); members],
                    expired: None,
                },
            );
        }
        snapshot.connections.for_each(|open| {
            let address = open.member_address();
            let asked = open.tally.leave().is_some();
            if drained.contains(&address) {
                let findings = looked.drains.entry(address).or_default();
                if asked {
                    findings.asked.push(Arc::clone(open));
                } else {
                    findings.waiting.push(Arc::clone(open));
                }
            }
            if let Some(interval) = log_intervals.get(&*open.virtual_name) {
                if open.periodic_log_due(*interval) {
                    looked.to_log.push(Arc::clone(open));
                }
            }
            if asked {
                return;
            }
            let Some(findings) = looked.pools.get_mut(open.pool.name()) else {
                return;
            };
            let Some(pool) = snapshot.pool(open.pool.name()) else {
                return;
            };
            let Some(index) = pool.member_by_address(address) else {
                return;
            };
            findings.held[index] += 1;
            let quiet = open.tally.idle() >= QUIET;
            if !quiet {
                return;
            }
            let since = self
                .pools
                .get(pool.name())
                .and_then(|pacer| pacer.rebalancing_since);
            if since.is_some_and(|since| open.tally.started() < since)
                && findings.movable[index].len() < CANDIDATES
            {
                findings.movable[index].push(Arc::clone(open));
            }
            if let Some(lifetime) = lifetimes.get(&*open.virtual_name) {
                let limit = lifetime.mul_f64(0.9 + 0.1 * unit_hash(open.id));
                let older = |other: &Arc<Open>| open.tally.started() < other.tally.started();
                if open.tally.started() + limit <= now
                    && findings.expired.as_ref().is_none_or(older)
                {
                    findings.expired = Some(Arc::clone(open));
                }
            }
        });
        looked
    }

    /// Rebalances `pool` and closes its expired connections, within its
    /// budget.
    fn pace_pool(&mut self, pool: &Pool, findings: Option<&PoolFindings>, now: Instant) {
        let rate = pool
            .rebalance()
            .map_or(DEFAULT_LIFETIME_RATE, |rebalance| rebalance.rate);
        let pacer = self.pools.entry(pool.name().to_string()).or_insert(Pacer {
            tokens: 1.0,
            refilled: now,
            this_tick: 0,
            rebalancing_since: None,
        });
        // A bucket that holds one between ticks, and at most rate x TICK
        // moves a tick: never more than `rate` in any second, plus one.
        // Capped after spending, not before, so a tick that comes a little
        // early loses no fraction of a token.
        let elapsed = now.saturating_duration_since(pacer.refilled).as_secs_f64();
        pacer.tokens += elapsed * f64::from(rate);
        pacer.refilled = now;
        pacer.this_tick = (f64::from(rate) * TICK.as_secs_f64()).ceil().max(1.0) as u32;
        if let Some(findings) = findings {
            spend(pool, pacer, findings, now);
        }
        pacer.tokens = pacer.tokens.min(1.0);
    }
}

/// Moves what `pool`'s budget allows: a rebalance first, then the oldest
/// connection past its lifetime.
fn spend(pool: &Pool, pacer: &mut Pacer, findings: &PoolFindings, now: Instant) {
    if let Some(rebalance) = pool.rebalance() {
        // Hysteresis: a rebalance starts past the tolerance and goes on
        // to half of it, so the pool does not hover at the edge (and
        // clients still reconnecting land well inside it).
        let tolerance = if pacer.rebalancing_since.is_some() {
            rebalance.tolerance / 2.0
        } else {
            rebalance.tolerance
        };
        let judgement = judge(&loads(pool, &findings.held), tolerance);
        rebalance_pool(pool, pacer, &judgement, findings, now);
    }
    if pacer.may_move() {
        if let Some(open) = &findings.expired {
            if ask(open, LeaveReason::Lifetime, false) {
                pacer.moved();
                tracing::info!(target: "vipgate::connection", virtual_server = %open.virtual_name, client = %Address(open.client), member = %Address(open.member_address()), age_s = open.tally.age().as_secs(), "closing a connection at its max_connection_lifetime");
            }
        }
    }
}

#[derive(Default)]
struct Looked {
    pools: HashMap<String, PoolFindings>,
    drains: HashMap<SocketAddr, DrainFindings>,
    to_log: Vec<Arc<Open>>,
}

/// Each member of `pool` as the judgement sees it, with `held`
/// connections each.
fn loads(pool: &Pool, held: &[usize]) -> Vec<Load> {
    let in_use = pool.priority_in_use();
    pool.members()
        .iter()
        .enumerate()
        .map(|(index, member)| {
            let weight = member.usable().then(|| {
                if in_use.is_some_and(|lowest| member.priority < lowest) {
                    0.0
                } else {
                    f64::from(member.ratio.max(1)) * pool.ramp(index)
                }
            });
            Load {
                connections: held.get(index).copied().unwrap_or(0),
                weight,
                limit: match member.connection_limit {
                    ConnectionLimit::Unlimited => None,
                    ConnectionLimit::At(limit) => Some(limit as usize),
                },
            }
        })
        .collect()
}

/// One tick of a pool's rebalance: starts or ends it, steers new clients
/// away from the members at or above their share meanwhile, and moves
/// what the budget allows from the fullest members.
fn rebalance_pool(
    pool: &Pool,
    pacer: &mut Pacer,
    judgement: &Judgement,
    findings: &PoolFindings,
    now: Instant,
) {
    if !judgement.uneven {
        if pacer.rebalancing_since.take().is_some() {
            tracing::info!(pool = pool.name(), shares = %shares_line(pool, &findings.held, judgement), "pool even again, rebalancing stopped");
        }
        settle(pool);
        return;
    }
    if pacer.rebalancing_since.is_none() {
        pacer.rebalancing_since = Some(now);
        tracing::info!(pool = pool.name(), shares = %shares_line(pool, &findings.held, judgement), "pool uneven, rebalancing");
    }
    pool.set_rebalancing(true);
    for (member, over) in pool.members().iter().zip(&judgement.at_or_over) {
        member.balance.set_over_share(*over);
    }
    let Some(to) = judgement.emptiest else { return };
    for &from in &judgement.sources {
        for open in &findings.movable[from] {
            if !pacer.may_move() {
                return;
            }
            if open.tally.idle() >= QUIET && ask(open, LeaveReason::Rebalance, false) {
                pacer.moved();
                let share = |index: usize| {
                    format!(
                        "{} holds {} of a share of {:.0}",
                        pool.members()[index].state.address(),
                        findings.held[index],
                        judgement.shares[index]
                    )
                };
                tracing::info!(target: "vipgate::connection", pool = pool.name(), client = %Address(open.client), from = %share(from), to = %share(to), "moving a client to rebalance the pool");
            }
        }
    }
}

/// The pool is even (or does not rebalance): nobody is passed over.
fn settle(pool: &Pool) {
    pool.set_rebalancing(false);
    for member in pool.members() {
        member.balance.set_over_share(false);
    }
}

/// One tick of a member's timed drain.
fn drain_member(
    snapshot: &Snapshot,
    address: SocketAddr,
    mut findings: DrainFindings,
    now: Instant,
) {
    let Some(member) = snapshot.member(&address) else {
        return;
    };
    let Some(mut drain) = member.drain() else {
        return;
    };
    let open = findings.waiting.len();
    if open + findings.asked.len() == 0 {
        drain.finished = Some(now);
        member.set_drain(Some(drain));
        tracing::info!(member = %address, took_s = now.saturating_duration_since(drain.started).as_secs(), "member drained: its last connection is gone");
        return;
    }
    if now >= drain.deadline {
        // The deadline: whatever is left goes now, without waiting for a
        // client that ignores its FIN.
        for open in findings.waiting.iter().chain(&findings.asked) {
            open.tally.ask_to_leave(Leave {
                reason: LeaveReason::Drain,
                forced: true,
                at_once: true,
            });
        }
        return;
    }
    let excess = open.saturating_sub(drain.allowed_at(now));
    // Idle ones first, most idle first.
    findings
        .waiting
        // Each idle time read once: it changes while the sort runs, and a
        // sort whose keys move under it may panic.
        .sort_by_cached_key(|open| std::cmp::Reverse(open.tally.idle()));
    for open in findings.waiting.iter().take(excess) {
        ask(open, LeaveReason::Drain, true);
    }
}

/// A shutdown's paced drain (`settings.paced_drain`): the process's open
/// TCP connections, and those that arrive meanwhile, are asked to leave at
/// an even pace, most idle first, so that the last is asked by the end of
/// `within` and the clients reconnect to other nodes a few at a time.
pub(super) struct ShutdownDrain {
    drain: Drain,
}

impl ShutdownDrain {
    pub(super) fn new(connections: &Registry, within: Duration) -> ShutdownDrain {
        let initial = connections.count();
        let started = Instant::now();
        tracing::info!(
            open = initial,
            ?within,
            "closing the open connections at an even pace before leaving"
        );
        ShutdownDrain {
            drain: Drain {
                started,
                deadline: started + within,
                initial,
                finished: None,
            },
        }
    }

    /// Whether the pace is over: every connection is asked at once now.
    pub(super) fn done(&self, now: Instant) -> bool {
        now >= self.drain.deadline
    }

    /// When the pace ends.
    pub(super) fn deadline(&self) -> Instant {
        self.drain.deadline
    }

    /// Asks as many connections to leave as the pace wants by `now`.
    pub(super) fn tick(&self, connections: &Registry, now: Instant) {
        let mut waiting: Vec<Arc<Open>> = Vec::new();
        connections.for_each(|open| {
            if open.tally.leave().is_none() {
                waiting.push(Arc::clone(open));
            }
        });
        let excess = waiting.len().saturating_sub(self.drain.allowed_at(now));
        if excess == 0 {
            return;
        }
        // Keys read once (see `drain_member`).
        waiting.sort_by_cached_key(|open| std::cmp::Reverse(open.tally.idle()));
        for open in waiting.iter().take(excess) {
            ask(open, LeaveReason::Drain, true);
        }
    }
}

/// Asks `open` to leave; false if it already was.
fn ask(open: &Open, reason: LeaveReason, forced: bool) -> bool {
    open.tally.ask_to_leave(Leave {
        reason,
        forced,
        at_once: false,
    })
}

/// `log_interval`'s line for a connection still open.
fn log_open(open: &Open) {
    let (bytes_to_member, bytes_to_client) = open.tally.bytes();
    tracing::info!(
        target: "vipgate::connection",
        virtual_server = %open.virtual_name,
        client = %Address(open.client),
        member = %Address(open.member_address()),
        source = open.source.map(|source| tracing::field::display(Address(source))),
        bytes_to_member,
        bytes_to_client,
        age_s = open.tally.age().as_secs(),
        idle_s = open.tally.idle().as_secs(),
        "connection open"
    );
}

/// "127.0.0.11:9070 1500/1000, ..." for the rebalance log lines.
fn shares_line(pool: &Pool, held: &[usize], judgement: &Judgement) -> String {
    pool.members()
        .iter()
        .enumerate()
        .map(|(index, member)| {
            let health = if member.health.health() == Health::Up {
                ""
            } else {
                " (not up)"
            };
            format!(
                "{} {}/{:.0}{health}",
                member.state.address(),
                held.get(index).copied().unwrap_or(0),
                judgement.shares[index]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A number in [0, 1) fixed per connection: its own lifetime's jitter.
fn unit_hash(id: u64) -> f64 {
    crate::pool::unit_hash(id as usize, 0)
}
