//! Source-address persistence (F5's `source_addr`): which member each
//! client address used last, so that its next connection goes there too.
//!
//! One [`Records`] table serves the whole process: every worker thread,
//! every virtual, every snapshot (a reload keeps it, and a virtual keeps
//! its records when its pool changes, as long as the member's address is
//! still in it). It is bounded: past `settings.persistence_records` the
//! least recently used record is dropped and counted.
//!
//! A record stays while the client has a connection open through it and
//! for `timeout` after the last one ends (HTTP: after its last request).
//! The table is split into shards by client address, each behind its own
//! lock, taken once as a connection starts and once as it ends; never
//! while bytes move.
//!
//! A client without a record is not balanced by the pool's algorithm but
//! by a hash of its address over the members (see
//! [`crate::pool::Pool::reserve_for_client`]): both nodes of a pair then
//! send it to the same member after a failover without exchanging
//! records, and a member that leaves moves only its own clients.

use crate::config::{AdminState, SourcePersistence};
use crate::pool::{address_hash, Choice, Pool};
use crate::sync::lock;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Shards of the table: enough that two workers rarely meet on one lock.
const SHARDS: usize = 32;

/// Every source-address persistence record of the process.
#[derive(Debug)]
pub struct Records {
    shards: Box<[Mutex<Shard>]>,
    /// Records each shard holds at most.
    per_shard: usize,
    /// Records dropped to make room, since the start.
    dropped: AtomicU64,
}

/// Which virtual and which (masked) client address a record is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    virtual_name: Arc<str>,
    client: IpAddr,
}

#[derive(Debug)]
struct Record {
    member: SocketAddr,
    /// Connections open through it now.
    open: u32,
    /// When its last connection ended or its last request was answered,
    /// in [`crate::clock::millis`].
    last_used_ms: u64,
    /// Its place in the shard's use order (the newest entry in `order`
    /// for this key).
    turn: u64,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Key, Record>,
    /// Keys in the order they were used, oldest first. A key used again
    /// is pushed again; older entries for it are skipped (their turn is
    /// not the record's) and swept out when they outnumber the records.
    order: VecDeque<(Key, u64)>,
    next_turn: u64,
}

impl Records {
    /// An empty table holding about `capacity` records at most.
    pub fn new(capacity: usize) -> Records {
        Records {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn shard(&self, client: IpAddr) -> &Mutex<Shard> {
        let bits = match client {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                (bits as u64) ^ ((bits >> 64) as u64)
            }
        };
        // Fibonacci hashing: neighbouring addresses land on different
        // shards.
        let index = (bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
        &self.shards[index % SHARDS]
    }

    /// The member `client` (of `virtual_name`, masked by `persistence`)
    /// used last, if its record is still live: a connection is open
    /// through it, or the last ended less than the timeout ago.
    pub fn member_for(
        &self,
        virtual_name: &Arc<str>,
        persistence: &SourcePersistence,
        client: IpAddr,
    ) -> Option<SocketAddr> {
        let key = Key {
            virtual_name: Arc::clone(virtual_name),
            client: persistence.record_key(client),
        };
        let shard = lock(self.shard(key.client));
        let record = shard.map.get(&key)?;
        let timeout = u64::try_from(persistence.timeout.as_millis()).unwrap_or(u64::MAX);
        let live =
            record.open > 0 || crate::clock::millis().saturating_sub(record.last_used_ms) < timeout;
        live.then_some(record.member)
    }

    /// Records that `client` has a connection open to `member`; the
    /// ticket ends it when dropped.
    pub fn opened(
        self: &Arc<Self>,
        virtual_name: &Arc<str>,
        persistence: &SourcePersistence,
        client: IpAddr,
        member: SocketAddr,
    ) -> Ticket {
        let key = Key {
            virtual_name: Arc::clone(virtual_name),
            client: persistence.record_key(client),
        };
        self.touch(&key, member, 1);
        Ticket {
            records: Arc::clone(self),
            key,
            forget: AtomicBool::new(false),
        }
    }

    /// Records that `client` was just served by `member` (an HTTP
    /// request): the timeout runs from now.
    pub fn used(
        &self,
        virtual_name: &Arc<str>,
        persistence: &SourcePersistence,
        client: IpAddr,
        member: SocketAddr,
    ) {
        let key = Key {
            virtual_name: Arc::clone(virtual_name),
            client: persistence.record_key(client),
        };
        self.touch(&key, member, 0);
    }

    /// Points the record at `member` (a new one if needed), counts
    /// `opening` more connections open through it, and marks it used now.
    fn touch(&self, key: &Key, member: SocketAddr, opening: u32) {
        let mut guard = lock(self.shard(key.client));
        let shard = &mut *guard;
        let turn = shard.next_turn;
        shard.next_turn += 1;
        let now = crate::clock::millis();
        let record = shard.map.entry(key.clone()).or_insert(Record {
            member,
            open: 0,
            last_used_ms: now,
            turn,
        });
        record.member = member;
        record.open = record.open.saturating_add(opening);
        record.last_used_ms = now;
        record.turn = turn;
        shard.order.push_back((key.clone(), turn));
        let dropped = shard.make_room(self.per_shard);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// A connection through the record of `key` ended.
    fn closed(&self, key: &Key, forget: bool) {
        let mut shard = lock(self.shard(key.client));
        let Some(record) = shard.map.get_mut(key) else {
            // Dropped to make room meanwhile.
            return;
        };
        record.open = record.open.saturating_sub(1);
        record.last_used_ms = crate::clock::millis();
        if forget && record.open == 0 {
            shard.map.remove(key);
        }
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).map.len()).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records dropped to make room since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The most records the table holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

impl Shard {
    /// Drops the least recently used records until at most `limit` are
    /// left; answers how many went.
    fn make_room(&mut self, limit: usize) -> u64 {
        let mut dropped = 0;
        while self.map.len() > limit {
            let Some((key, turn)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|record| record.turn == turn) {
                self.map.remove(&key);
                dropped += 1;
            }
        }
        // Entries of keys used again since pile up; sweep them when they
        // are as many as the records, so the order stays within twice the
        // limit and each entry is swept at most once.
        if self.order.len() > 2 * limit.max(self.map.len()) + 16 {
            let map = &self.map;
            self.order
                .retain(|(key, turn)| map.get(key).is_some_and(|record| record.turn == *turn));
        }
        dropped
    }
}

/// One virtual's source-address persistence: its rule and the process's
/// records.
#[derive(Debug, Clone)]
pub struct SourceAffinity {
    virtual_name: Arc<str>,
    rule: SourcePersistence,
    records: Arc<Records>,
}

impl SourceAffinity {
    pub fn new(virtual_name: Arc<str>, rule: SourcePersistence, records: Arc<Records>) -> Self {
        SourceAffinity {
            virtual_name,
            rule,
            records,
        }
    }

    /// Where `client` goes in `pool`: the member of its live record, if
    /// that is still in the pool and not being drained (a disabled member
    /// still takes its persistent clients, as on an F5); and how to choose
    /// when it cannot take the connection: by the hash of the client's
    /// address, the same on every node of a pair.
    pub fn choice(&self, pool: &Pool, client: IpAddr) -> (Option<usize>, Choice) {
        let recorded = self
            .records
            .member_for(&self.virtual_name, &self.rule, client)
            .and_then(|address| pool.member_by_address(address))
            .filter(|&index| {
                let state = &pool.members()[index].state;
                // Only a disabled member can be draining: the lock behind
                // `drain` is not taken for the others.
                state.admin_state() != AdminState::Disabled || state.drain().is_none()
            });
        let masked = self.rule.record_key(client);
        (recorded, Choice::Hash(address_hash(masked, 0)))
    }

    /// Records a connection of `client` open to `member`, until the ticket
    /// is dropped.
    pub fn opened(&self, client: IpAddr, member: SocketAddr) -> Ticket {
        self.records
            .opened(&self.virtual_name, &self.rule, client, member)
    }

    /// Records a request of `client` answered by `member`.
    pub fn used(&self, client: IpAddr, member: SocketAddr) {
        self.records
            .used(&self.virtual_name, &self.rule, client, member);
    }
}

/// A connection's hold on its record: while it lives the record does not
/// expire; dropping it starts the timeout.
#[derive(Debug)]
pub struct Ticket {
    records: Arc<Records>,
    key: Key,
    forget: AtomicBool,
}

impl Ticket {
    /// Removes the record when this connection ends, if no other
    /// connection holds it then: for a connection vipgate closed to move
    /// its client (rebalancing, a lifetime, a drain), whose next
    /// connection must be free to land elsewhere.
    pub fn forget(&self) {
        self.forget.store(true, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.records
            .closed(&self.key, self.forget.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn persistence(timeout: Duration, ipv4_prefix: u8) -> SourcePersistence {
        SourcePersistence {
            timeout,
            ipv4_prefix,
            ipv6_prefix: 64,
        }
    }

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_record_lives_while_open_and_for_the_timeout_after() {
        let records = Arc::new(Records::new(1000));
        let web: Arc<str> = "web".into();
        let rule = persistence(Duration::from_millis(80), 32);
        let client: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(records.member_for(&web, &rule, client), None);
        let ticket = records.opened(&web, &rule, client, address("127.0.0.11:80"));
        std::thread::sleep(Duration::from_millis(120));
        // Open: does not expire.
        assert_eq!(
            records.member_for(&web, &rule, client),
            Some(address("127.0.0.11:80"))
        );
        drop(ticket);
        assert_eq!(
            records.member_for(&web, &rule, client),
            Some(address("127.0.0.11:80"))
        );
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(records.member_for(&web, &rule, client), None);
        // Another virtual has its own records.
        let other: Arc<str> = "other".into();
        let _held = records.opened(&web, &rule, client, address("127.0.0.12:80"));
        assert_eq!(records.member_for(&other, &rule, client), None);
    }

    #[test]
    fn a_mask_groups_clients_and_ipv6_uses_its_prefix() {
        let records = Arc::new(Records::new(1000));
        let web: Arc<str> = "web".into();
        let rule = persistence(Duration::from_secs(60), 24);
        let member = address("127.0.0.12:80");
        records.used(&web, &rule, "10.1.1.1".parse().unwrap(), member);
        assert_eq!(
            records.member_for(&web, &rule, "10.1.1.200".parse().unwrap()),
            Some(member)
        );
        assert_eq!(
            records.member_for(&web, &rule, "10.1.2.1".parse().unwrap()),
            None
        );
        records.used(&web, &rule, "2001:db8:1:2::1".parse().unwrap(), member);
        assert_eq!(
            records.member_for(&web, &rule, "2001:db8:1:2:ffff::9".parse().unwrap()),
            Some(member)
        );
        assert_eq!(
            records.member_for(&web, &rule, "2001:db8:1:3::1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn a_full_table_drops_the_least_recently_used() {
        let records = Arc::new(Records::new(SHARDS * 4));
        let web: Arc<str> = "web".into();
        let rule = persistence(Duration::from_secs(60), 32);
        let member = address("127.0.0.11:80");
        let first: IpAddr = "10.0.0.1".parse().unwrap();
        records.used(&web, &rule, first, member);
        for n in 0..20_000u32 {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0B00_0000 + n));
            records.used(&web, &rule, client, member);
            // The first client keeps using it: never the oldest.
            if n % 8 == 0 {
                records.used(&web, &rule, first, member);
            }
        }
        assert!(records.len() <= records.capacity(), "{}", records.len());
        assert!(records.dropped() >= 20_000 - records.capacity() as u64);
        assert_eq!(records.member_for(&web, &rule, first), Some(member));
        // Every shard's order stays bounded, however often a key is used.
        for shard in records.shards.iter() {
            let shard = lock(shard);
            assert!(shard.order.len() <= 2 * records.per_shard + 17);
        }
    }

    #[test]
    fn a_forgotten_record_goes_when_its_last_connection_ends() {
        let records = Arc::new(Records::new(100));
        let web: Arc<str> = "web".into();
        let rule = persistence(Duration::from_secs(60), 24);
        let member = address("127.0.0.11:80");
        let one = records.opened(&web, &rule, "10.1.1.1".parse().unwrap(), member);
        let two = records.opened(&web, &rule, "10.1.1.2".parse().unwrap(), member);
        one.forget();
        drop(one);
        // Another client of the same /24 still holds it.
        assert!(records
            .member_for(&web, &rule, "10.1.1.3".parse().unwrap())
            .is_some());
        two.forget();
        drop(two);
        assert!(records.is_empty());
    }
}
