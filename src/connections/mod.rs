//! The connections open right now, each with what an operator asks about
//! it (client, member, source address, age, idle time, bytes each way)
//! and the one thing another part of vipgate may ask of it: to leave.
//!
//! A TCP connection registers as it reaches its member and is removed as
//! it ends. [`Registry`] keeps the records in 32 shards, each behind its
//! own lock, taken once when a connection starts and once when it ends:
//! never while bytes move, and never by all connections at once. Readers
//! (`GET /connections`, the periodic log line, the movers that rebalance,
//! drain and enforce lifetimes) copy what they need shard by shard.
//! The same registry serves every snapshot: connections outlive reloads.

mod listing;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pool::Pool;
use crate::proxy::Tally;
use crate::sync::lock;

pub use listing::{Filter, Page};

/// Shards of the registry: enough that two workers registering at the
/// same moment rarely meet on one lock.
const SHARDS: usize = 32;

/// One open connection: what it registered with, under an id.
#[derive(Debug)]
pub struct Open {
    /// Unique in this process, rising: `GET /connections` pages by it.
    pub id: u64,
    opening: Opening,
    /// The connection's age, in milliseconds, when the periodic log line
    /// was last written for it.
    logged_ms: AtomicU64,
}

impl std::ops::Deref for Open {
    type Target = Opening;

    fn deref(&self) -> &Opening {
        &self.opening
    }
}

impl AsRef<Tally> for Open {
    fn as_ref(&self) -> &Tally {
        &self.tally
    }
}

impl Open {
    /// The member's address.
    pub fn member_address(&self) -> SocketAddr {
        self.pool.members()[self.member].state.address()
    }

    /// Whether the periodic log line is due (`interval` since the last
    /// one, or since the start), and if so, counts it as written.
    pub fn periodic_log_due(&self, interval: Duration) -> bool {
        let age = u64::try_from(self.tally.age().as_millis()).unwrap_or(u64::MAX);
        let last = self.logged_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        if age.saturating_sub(last) < interval {
            return false;
        }
        self.logged_ms.store(age, Ordering::Relaxed);
        true
    }
}

/// What a connection registers with.
#[derive(Debug)]
pub struct Opening {
    pub virtual_name: Arc<str>,
    pub pool: Arc<Pool>,
    /// The member's index in `pool`.
    pub member: usize,
    pub client: SocketAddr,
    /// The address the member sees the connection come from (the SNAT
    /// address and port, or vipgate's own).
    pub source: Option<SocketAddr>,
    pub tally: Tally,
    /// Its hold on its client's source-address persistence record, when
    /// the virtual persists by source address (boxed: 8 bytes in every
    /// record instead of 56, for the few virtuals that persist).
    pub persistence: Option<Box<crate::source_persistence::Ticket>>,
}

/// Every open connection of one vipgate process.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Mutex<Shard>]>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct Shard {
    entries: Vec<Option<Arc<Open>>>,
    /// Vacant places in `entries`, reused before it grows.
    vacant: Vec<usize>,
    count: usize,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl Registry {
    /// Connections registered now.
    pub fn count(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).count).sum()
    }

    /// Registers a connection; it stays listed until the returned guard
    /// is dropped.
    pub fn register(self: &Arc<Self>, opening: Opening) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let open = Arc::new(Open {
            id,
            opening,
            logged_ms: AtomicU64::new(0),
        });
        let shard = &self.shards[id as usize % SHARDS];
        let mut shard = lock(shard);
        let place = match shard.vacant.pop() {
            Some(place) => {
                shard.entries[place] = Some(Arc::clone(&open));
                place
            }
            None => {
                shard.entries.push(Some(Arc::clone(&open)));
                shard.entries.len() - 1
            }
        };
        shard.count += 1;
        Registered {
            registry: Arc::clone(self),
            place: place as u32,
            open,
        }
    }

    /// Calls `visit` with every open connection, one shard's lock held at
    /// a time: `visit` must be quick and must not register or end a
    /// connection.
    pub fn for_each(&self, mut visit: impl FnMut(&Arc<Open>)) {
        for shard in self.shards.iter() {
            for open in lock(shard).entries.iter().flatten() {
                visit(open);
            }
        }
    }

    fn remove(&self, id: u64, place: usize) {
        let mut shard = lock(&self.shards[id as usize % SHARDS]);
        let held = shard.entries.get(place).and_then(Option::as_ref);
        if held.is_some_and(|open| open.id == id) {
            shard.entries[place] = None;
            shard.vacant.push(place);
            shard.count -= 1;
        }
        // A shard that emptied after a peak gives its memory back.
        if shard.count == 0 && shard.entries.len() > 1024 {
            *shard = Shard::default();
        }
    }
}

/// A connection's place in the registry, given up when dropped.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    place: u32,
    open: Arc<Open>,
}

impl Registered {
    pub fn open(&self) -> &Arc<Open> {
        &self.open
    }
}

impl std::ops::Deref for Registered {
    type Target = Open;

    fn deref(&self) -> &Open {
        &self.open
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.open.id, self.place as usize);
    }
}
