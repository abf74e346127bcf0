//! Per-client guards of a virtual (`client_connection_limit`,
//! `client_rate_limit`): how many connections each client address has open
//! and how fast it opens new ones, so that one desktop stuck in a
//! reconnect loop cannot take a proxy's capacity from the other agents.
//!
//! A fixed table of [`ENTRIES`] slots, shared by every worker (so a limit
//! holds for the whole process) without a lock: a slot is claimed with a
//! compare-and-swap on its key, and found again by hashing the address and
//! looking at a few neighbours. A slot whose client has no connection open
//! and whose rate bucket is full again is free for another client: entries
//! expire by themselves. When every slot a client could use is held by
//! clients that are active at that very moment (more than the table holds
//! at once), that client is not limited, and counted
//! (`vipgate_client_table_full_total`): bounded memory first.
//!
//! An IPv4 client is its address; an IPv6 client is its /64 prefix (one
//! host's privacy addresses are one client).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::{ConnectionLimit, RateLimit};

/// Slots in a virtual's table: the most distinct clients active at once
/// that the guards follow. 65,536 slots of 24 bytes: 1.5 MiB, allocated
/// only for a virtual with a client limit.
pub const ENTRIES: usize = 1 << 16;

/// Neighbouring slots looked at for one client.
const PROBES: usize = 8;

/// An empty slot's key.
const EMPTY: u64 = 0;

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRefusal {
    /// It has `client_connection_limit` connections open already.
    Connections,
    /// It opened connections faster than `client_rate_limit`.
    Rate,
}

/// The table of one virtual.
#[derive(Debug)]
pub struct ClientTable {
    slots: Box<[Slot]>,
    full: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    key: AtomicU64,
    open: AtomicU32,
    /// When the client's rate bucket is full again, in microseconds of
    /// [`crate::clock::millis`] x 1000 (a generic cell rate algorithm, as
    /// members' `connect_rate_limit`).
    full_at_micros: AtomicU64,
}

impl Default for ClientTable {
    fn default() -> ClientTable {
        ClientTable {
            slots: (0..ENTRIES).map(|_| Slot::default()).collect(),
            full: AtomicU64::new(0),
        }
    }
}

impl ClientTable {
    /// Counts one new connection of `client` under the limits: `Ok` with
    /// its slot (to [`release`](Self::release) when it ends; `None` when
    /// the table had no room and the client goes unlimited), or why it is
    /// refused.
    pub fn admit(
        &self,
        client: IpAddr,
        limit: ConnectionLimit,
        rate: RateLimit,
        now_micros: u64,
    ) -> Result<Option<u32>, ClientRefusal> {
        let key = key_of(client);
        // A slot may change hands between finding and counting (its client
        // gone, another claims it): counted only once it still holds the
        // key after the count.
        let claimed = (0..3).find_map(|_| {
            let index = self.slot_of(key, now_micros)?;
            let slot = &self.slots[index];
            let before = slot.open.fetch_add(1, Ordering::AcqRel);
            if slot.key.load(Ordering::Acquire) == key {
                Some((index, before))
            } else {
                slot.open.fetch_sub(1, Ordering::AcqRel);
                None
            }
        });
        let Some((index, before)) = claimed else {
            self.full.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let slot = &self.slots[index];
        if !limit.admits(before as usize) {
            slot.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ClientRefusal::Connections);
        }
        if let RateLimit::PerSecond(per_second) = rate {
            if !take_token(&slot.full_at_micros, per_second, now_micros) {
                slot.open.fetch_sub(1, Ordering::AcqRel);
                return Err(ClientRefusal::Rate);
            }
        }
        Ok(Some(index as u32))
    }

    /// A connection counted by [`admit`](Self::admit) ended.
    pub fn release(&self, index: u32) {
        if let Some(slot) = self.slots.get(index as usize) {
            slot.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Clients that went unlimited because the table was full.
    pub fn full_count(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    /// Connections open from `client` (for tests and status).
    pub fn open_from(&self, client: IpAddr) -> u32 {
        let key = key_of(client);
        self.neighbours(key)
            .map(|index| &self.slots[index])
            .find(|slot| slot.key.load(Ordering::Acquire) == key)
            .map_or(0, |slot| slot.open.load(Ordering::Acquire))
    }

    /// The slot of `key`: its own, else one claimed for it (an empty one,
    /// or one whose client is gone), else `None`.
    fn slot_of(&self, key: u64, now_micros: u64) -> Option<usize> {
        for index in self.neighbours(key) {
            if self.slots[index].key.load(Ordering::Acquire) == key {
                return Some(index);
            }
        }
        for index in self.neighbours(key) {
            let slot = &self.slots[index];
            let held = slot.key.load(Ordering::Acquire);
            let gone = held == EMPTY
                || (slot.open.load(Ordering::Acquire) == 0
                    && slot.full_at_micros.load(Ordering::Acquire) <= now_micros);
            if gone
                && slot
                    .key
                    .compare_exchange(held, key, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // The previous client's bucket was full: a fresh one is too.
                return Some(index);
            }
        }
        None
    }

    fn neighbours(&self, key: u64) -> impl Iterator<Item = usize> {
        // Fibonacci hashing spreads neighbouring addresses apart.
        let start = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as usize;
        (0..PROBES).map(move |step| (start + step) % ENTRIES)
    }
}

/// The table key of a client: an IPv4 address, or an IPv6 /64 prefix;
/// never [`EMPTY`].
fn key_of(client: IpAddr) -> u64 {
    let key = match client.to_canonical() {
        IpAddr::V4(v4) => (1u64 << 63) | u64::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    };
    key.max(1)
}

/// Takes one token from a bucket holding a second of `per_second`.
fn take_token(full_at_micros: &AtomicU64, per_second: u32, now: u64) -> bool {
    let interval = 1_000_000 / u64::from(per_second.max(1));
    let burst = 1_000_000;
    let mut current = full_at_micros.load(Ordering::Relaxed);
    loop {
        let start = current.max(now);
        let next = start + interval;
        if next > now + burst {
            return false;
        }
        match full_at_micros.compare_exchange_weak(
            current,
            next,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_is_held_to_its_connections_and_rate() {
        let table = ClientTable::default();
        let limit = ConnectionLimit::At(2);
        let first = table.admit(ip("10.0.0.1"), limit, RateLimit::Unlimited, 0);
        let second = table.admit(ip("10.0.0.1"), limit, RateLimit::Unlimited, 0);
        assert!(matches!((first, second), (Ok(Some(_)), Ok(Some(_)))));
        assert_eq!(
            table.admit(ip("10.0.0.1"), limit, RateLimit::Unlimited, 0),
            Err(ClientRefusal::Connections)
        );
        assert!(table
            .admit(ip("10.0.0.2"), limit, RateLimit::Unlimited, 0)
            .is_ok());
        table.release(first.unwrap().unwrap());
        assert_eq!(table.open_from(ip("10.0.0.1")), 1);
        assert!(table
            .admit(ip("10.0.0.1"), limit, RateLimit::Unlimited, 0)
            .is_ok());

        // 5 a second, a second of burst: 5 at once, then one each 200 ms.
        let rate = RateLimit::PerSecond(5);
        let unlimited = ConnectionLimit::Unlimited;
        for _ in 0..5 {
            assert!(table.admit(ip("10.0.0.3"), unlimited, rate, 0).is_ok());
        }
        assert_eq!(
            table.admit(ip("10.0.0.3"), unlimited, rate, 0),
            Err(ClientRefusal::Rate)
        );
        assert!(table
            .admit(ip("10.0.0.3"), unlimited, rate, 200_000)
            .is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix() {
        let table = ClientTable::default();
        let limit = ConnectionLimit::At(1);
        let one = ConnectionLimit::At(1);
        assert!(table
            .admit(ip("2001:db8::1"), limit, RateLimit::Unlimited, 0)
            .is_ok());
        assert_eq!(
            table.admit(ip("2001:db8::2"), one, RateLimit::Unlimited, 0),
            Err(ClientRefusal::Connections),
            "the same /64"
        );
        assert!(table
            .admit(ip("2001:db8:0:1::1"), one, RateLimit::Unlimited, 0)
            .is_ok());
        assert!(table.admit(ip("::1"), one, RateLimit::Unlimited, 0).is_ok());
    }

    #[test]
    fn the_table_stays_bounded_and_reuses_the_slots_of_clients_gone() {
        let table = ClientTable::default();
        let limit = ConnectionLimit::At(1);
        // 100,000 distinct clients, each connecting once and leaving: every
        // one is counted (the slots of those gone are taken again).
        let mut unlimited = 0;
        for n in 0..100_000u32 {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            match table.admit(client, limit, RateLimit::Unlimited, 0) {
                Ok(Some(slot)) => table.release(slot),
                Ok(None) => unlimited += 1,
                Err(refusal) => panic!("{client} refused: {refusal:?}"),
            }
        }
        assert_eq!(unlimited, 0);
        // 100,000 held at once: the table holds what it can, the rest go
        // unlimited and are counted; its size never changes.
        let mut held = 0;
        for n in 0..100_000u32 {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + n));
            if let Ok(Some(_)) = table.admit(client, limit, RateLimit::Unlimited, 0) {
                held += 1;
            }
        }
        assert!(held <= ENTRIES && held > ENTRIES / 2, "{held}");
        assert_eq!(table.full_count(), 100_000 - held as u64);
        assert_eq!(table.slots.len(), ENTRIES);
    }
}
