//! Load-balancing algorithms: small pure pieces behind one trait, chosen in
//! the configuration by [`Algorithm`] and built by [`selector`]. An algorithm only decides *which*
//! member; whether a member may be used at all (health, limits, priority
//! group, members already tried for this connection) comes from the
//! [`PoolView`], and so does how far a recovering member is along its slow
//! ramp.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Algorithm;

/// A fresh selector running `algorithm` for a pool whose members have
/// these `ratios`.
pub fn selector(algorithm: Algorithm, ratios: &[u32]) -> Box<dyn Selection> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(ratios.len())),
        Algorithm::Ratio => Box::new(Ratio::new(ratios)),
        Algorithm::LeastConnections => Box::new(LeastConnections::default()),
    }
}

/// What an algorithm may know of the pool at the moment of choosing.
pub trait PoolView {
    /// How many members the pool has (indexes run from 0).
    fn member_count(&self) -> usize;
    /// Whether member `index` may take this connection at all.
    fn eligible(&self, index: usize) -> bool;
    /// Connections open to member `index`.
    fn active(&self, index: usize) -> usize;
    /// Member `index`'s configured weight (1 or more).
    fn ratio(&self, index: usize) -> u32;
    /// How far member `index` is along its slow ramp: 0 just up, 1 full.
    fn ramp(&self, index: usize) -> f64;
    /// What names member `index` the same way in every process: a hash of
    /// its address (see [`address_hash`]). By default its index.
    fn identity(&self, index: usize) -> u64 {
        index as u64
    }
}

/// The eligible member whose weighted score for `client` (a hash of the
/// client's address) is highest: weighted rendezvous hashing. Every
/// process that sees the same members chooses the same one, with no state
/// shared; a member that leaves hands only its own clients to the others,
/// each to the member that scored next for it; and each member gets a
/// share of clients in proportion to its ratio (and slow ramp).
pub fn rendezvous(view: &dyn PoolView, client: u64) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for index in 0..view.member_count() {
        if !view.eligible(index) {
            continue;
        }
        // -ln(u) is an exponential variable; dividing the weight by it
        // makes the highest score land on each member with probability
        // weight / total weight.
        let unit = mix(client ^ view.identity(index).rotate_left(17));
        let unit = (unit >> 11) as f64 / (1u64 << 53) as f64;
        let weight = f64::from(view.ratio(index).max(1)) * view.ramp(index).max(1e-3);
        let score = weight / -(unit.max(f64::MIN_POSITIVE)).ln();
        if best.is_none_or(|(best_score, _)| score > best_score) {
            best = Some((score, index));
        }
    }
    best.map(|(_, index)| index)
}

/// A hash of an address that is the same in every process and on every
/// machine (unlike the standard library's, which is seeded per process):
/// what rendezvous hashing keys clients and members by.
pub fn address_hash(address: std::net::IpAddr, port: u16) -> u64 {
    let bits = match address {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6) ^ (1 << 127),
    };
    mix(mix(bits as u64 ^ u64::from(port)) ^ (bits >> 64) as u64)
}

/// splitmix64's finaliser: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One load-balancing algorithm.
pub trait Selection: Send + Sync + fmt::Debug {
    /// Picks an eligible member, or `None` when there is none. Called once
    /// per connection attempt, concurrently from every worker thread, so it
    /// must not block.
    fn select(&self, view: &dyn PoolView) -> Option<usize>;
}

/// Goes through `order` from `turn` and takes the first eligible member
/// that its ramp admits. A ramping member (share `r` < 1) is admitted on a
/// fraction `r` of its turns, decided by a hash of the turn so that no
/// random source or lock is needed. A turn its ramp refuses goes to one of
/// the other admitted members chosen evenly by the same hash, not to the
/// next in order (which would give one neighbour the whole of it). If only
/// ramping members are eligible and none is admitted, the first of them is
/// taken anyway: a slow member beats a refused client.
///
/// Also returns how many turns to skip: those of ineligible members passed
/// over, so their turns do not fall to the next member twice in a row. A
/// turn refused by a ramp is not skipped: the turn counter moves on
/// normally, which is what keeps a ramping member at its fraction.
fn first_admitted(view: &dyn PoolView, order: &[u32], turn: usize) -> Option<(usize, usize)> {
    let at = |skipped: usize| order[turn.wrapping_add(skipped) % order.len()] as usize;
    let admitted = |index: usize| {
        let ramp = view.ramp(index);
        ramp >= 1.0 || unit_hash(turn, index) < ramp
    };
    let (skipped, first) = (0..order.len())
        .map(|skipped| (skipped, at(skipped)))
        .find(|&(_, index)| view.eligible(index))?;
    if admitted(first) {
        return Some((first, skipped));
    }
    // Two passes over the order rather than a list: nothing allocated per
    // connection.
    let others = || {
        (skipped + 1..order.len())
            .map(at)
            .filter(|&index| index != first && view.eligible(index) && admitted(index))
    };
    let count = others().count();
    if count == 0 {
        return Some((first, 0));
    }
    let pick = ((unit_hash(turn, usize::MAX) * count as f64) as usize).min(count - 1);
    others().nth(pick).map(|index| (index, 0))
}

/// A number in [0, 1) that looks random but depends only on its inputs
/// (splitmix64).
pub(crate) fn unit_hash(turn: usize, index: usize) -> f64 {
    let x = mix((turn as u64) ^ ((index as u64) << 40));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Round-robin over a fixed order of turns, skipping ineligible members
/// without giving their turn to their neighbour.
#[derive(Debug)]
struct Turns {
    order: Vec<u32>,
    /// The turn counter; `order[next % len]` is due next.
    next: AtomicUsize,
}

impl Turns {
    fn new(order: Vec<u32>) -> Turns {
        Turns {
            order,
            next: AtomicUsize::new(0),
        }
    }

    fn select(&self, view: &dyn PoolView) -> Option<usize> {
        if self.order.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let (index, skipped) = first_admitted(view, &self.order, turn)?;
        if skipped > 0 {
            // Without this the member after a down one would get two turns
            // in a row. If another thread moved the counter meanwhile, its
            // turn stands and ours is simply spent.
            let _ = self.next.compare_exchange(
                turn.wrapping_add(1),
                turn.wrapping_add(skipped + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Some(index)
    }
}

/// `round-robin`.
#[derive(Debug)]
pub struct RoundRobin(Turns);

impl RoundRobin {
    pub fn new(members: usize) -> RoundRobin {
        RoundRobin(Turns::new((0..members as u32).collect()))
    }
}

impl Selection for RoundRobin {
    fn select(&self, view: &dyn PoolView) -> Option<usize> {
        self.0.select(view)
    }
}

/// `ratio`: round-robin over a schedule computed once, at configuration
/// time, by smooth weighted round-robin. Choosing is then as cheap and
/// lock-free as plain round-robin.
#[derive(Debug)]
pub struct Ratio(Turns);

impl Ratio {
    pub fn new(ratios: &[u32]) -> Ratio {
        Ratio(Turns::new(smooth_schedule(ratios)))
    }
}

impl Selection for Ratio {
    fn select(&self, view: &dyn PoolView) -> Option<usize> {
        self.0.select(view)
    }
}

/// One cycle of smooth weighted round-robin (as nginx interleaves weights),
/// with the ratios first divided by their greatest common divisor.
fn smooth_schedule(ratios: &[u32]) -> Vec<u32> {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let divisor = ratios.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = ratios
        .iter()
        .map(|&r| i64::from(r.max(1) / divisor))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (current, weight) in current.iter_mut().zip(&weights) {
                *current += weight;
            }
            let best = (0..current.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= total;
            best as u32
        })
        .collect()
}

/// `least-connections`: fewest open connections per unit of ratio, counting
/// the new one, and scaled by the slow ramp so a member that just recovered
/// with no connections does not take the whole reconnect wave. Ties go
/// round-robin.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl Selection for LeastConnections {
    fn select(&self, view: &dyn PoolView) -> Option<usize> {
        let count = view.member_count();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(f64, usize)> = None;
        for step in 0..count {
            let index = start.wrapping_add(step) % count;
            if !view.eligible(index) {
                continue;
            }
            let weight = f64::from(view.ratio(index).max(1)) * view.ramp(index).max(1e-3);
            let load = (view.active(index) + 1) as f64 / weight;
            if best.is_none_or(|(best_load, _)| load < best_load) {
                best = Some((load, index));
            }
        }
        best.map(|(_, index)| index)
    }
}

/// The members already tried for one connection (F5 "reselect"), so a retry
/// goes to a different one. Allocation-free for pools of up to 128 members.
#[derive(Debug, Default)]
pub struct Tried {
    first: u128,
    rest: Vec<usize>,
}

impl Tried {
    pub fn insert(&mut self, index: usize) {
        if index < 128 {
            self.first |= 1 << index;
        } else {
            self.rest.push(index);
        }
    }

    /// Forgets every member of `others`: they may be tried again.
    pub fn forget(&mut self, others: &Tried) {
        self.first &= !others.first;
        self.rest.retain(|index| !others.rest.contains(index));
    }

    pub fn contains(&self, index: usize) -> bool {
        if index < 128 {
            self.first & (1 << index) != 0
        } else {
            self.rest.contains(&index)
        }
    }
}

#[cfg(test)]
mod tests;
