//! Load-balancing algorithms: small pure pieces behind one trait, chosen in
//! the configuration by [`Algorithm`]. An algorithm only decides *which*
//! member; whether a member may be used at all (health, limits, members
//! already tried for this connection) is the caller's `eligible` predicate.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

/// `algorithm = "..."` in a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Each new connection goes to the next eligible member in list order.
    #[default]
    RoundRobin,
}

impl Algorithm {
    /// A fresh selector for a pool of `members` members.
    pub fn selector(self, members: usize) -> Box<dyn Selection> {
        match self {
            Algorithm::RoundRobin => Box::new(RoundRobin::new(members)),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::RoundRobin => "round-robin",
        })
    }
}

/// One load-balancing algorithm.
pub trait Selection: Send + Sync + fmt::Debug {
    /// Picks the index of a member for which `eligible` holds, or `None`
    /// when there is none. Called once per connection attempt, concurrently
    /// from every worker thread, so it must not block.
    fn select(&self, eligible: &mut dyn FnMut(usize) -> bool) -> Option<usize>;
}

/// Round-robin over the members in configuration order, skipping the
/// ineligible ones without giving their turn to their neighbour.
#[derive(Debug)]
pub struct RoundRobin {
    members: usize,
    /// The turn counter; member `next % members` is due next.
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(members: usize) -> RoundRobin {
        RoundRobin {
            members,
            next: AtomicUsize::new(0),
        }
    }
}

impl Selection for RoundRobin {
    fn select(&self, eligible: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        if self.members == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        for skipped in 0..self.members {
            let index = turn.wrapping_add(skipped) % self.members;
            if eligible(index) {
                if skipped > 0 {
                    // Without this the member after a down one would get two
                    // turns in a row. If another thread moved the counter
                    // meanwhile, its turn stands and ours is simply spent.
                    let _ = self.next.compare_exchange(
                        turn.wrapping_add(1),
                        turn.wrapping_add(skipped + 1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return Some(index);
            }
        }
        None
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

    pub fn contains(&self, index: usize) -> bool {
        if index < 128 {
            self.first & (1 << index) != 0
        } else {
            self.rest.contains(&index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(
        selection: &dyn Selection,
        rounds: usize,
        eligible: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        (0..rounds)
            .map(|_| selection.select(&mut |i| eligible(i)).expect("a member"))
            .collect()
    }

    #[test]
    fn round_robin_visits_members_in_order() {
        let rr = RoundRobin::new(3);
        assert_eq!(picks(&rr, 7, |_| true), vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_skips_ineligible_without_doubling_the_next() {
        let rr = RoundRobin::new(4);
        // Member 1 is down: the others share evenly, in order.
        assert_eq!(picks(&rr, 6, |i| i != 1), vec![0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn round_robin_with_nothing_eligible_is_none() {
        let rr = RoundRobin::new(2);
        assert_eq!(rr.select(&mut |_| false), None);
        assert_eq!(RoundRobin::new(0).select(&mut |_| true), None);
    }

    #[test]
    fn round_robin_is_even_across_threads() {
        let rr = std::sync::Arc::new(RoundRobin::new(4));
        let counts: Vec<[usize; 4]> = (0..4)
            .map(|_| {
                let rr = rr.clone();
                std::thread::spawn(move || {
                    let mut counts = [0; 4];
                    for _ in 0..10_000 {
                        counts[rr.select(&mut |_| true).unwrap()] += 1;
                    }
                    counts
                })
            })
            .map(|thread| thread.join().unwrap())
            .collect();
        for member in 0..4 {
            let total: usize = counts.iter().map(|c| c[member]).sum();
            assert_eq!(total, 10_000, "member {member}");
        }
    }

    #[test]
    fn tried_set_small_and_large_indexes() {
        let mut tried = Tried::default();
        for index in [0, 5, 127, 128, 1000] {
            assert!(!tried.contains(index));
            tried.insert(index);
            assert!(tried.contains(index));
        }
        assert!(!tried.contains(6));
        assert!(!tried.contains(129));
    }

    #[test]
    fn algorithm_names_parse() {
        #[derive(Deserialize)]
        struct Holder {
            algorithm: Algorithm,
        }
        let holder: Holder = toml::from_str("algorithm = \"round-robin\"").unwrap();
        assert_eq!(holder.algorithm, Algorithm::RoundRobin);
        assert!(toml::from_str::<Holder>("algorithm = \"fastest\"").is_err());
    }
}
