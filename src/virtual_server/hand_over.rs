//! Established connections moving to a successor process (binary
//! upgrade).
//!
//! A connection can move when both its sides are bare sockets: a plain TCP
//! virtual, or TLS passthrough (vipgate never decrypts it), toward a
//! member reached without re-encryption. Then the connection is two
//! sockets and a little bookkeeping, and the kernel keeps every byte not
//! yet read in the sockets themselves. TLS that vipgate terminates or
//! re-encrypts (its keys live in this process), HTTP virtuals and their
//! tunnels cannot move: they finish here.
//!
//! In the old process: once the successor serves, the upgrade calls
//! [`HandOver::begin`] and fires `Shutdown::handing_over`, which only the
//! movable pumps listen to. Each stops where it is and puts its sockets,
//! the bytes it read and had not yet written (in a pipe each way: waiting
//! to write them out could wait forever on two peers that both wait to
//! send) and where it stands here ([`HandOver::put`]); the upgrade sends them
//! on in batches ([`HandOver::next_batch`]) until every movable
//! connection has come, those still connecting or reading a ClientHello
//! included. In the new process, `connection::adopt` makes each a session
//! again: the same virtual, pool and member, its SNAT port, counters and
//! idle time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::proxy::{InFlight, Standing};
use crate::sync::lock;

/// How long the old process waits for its movable connections to come
/// (connects and ClientHellos in progress finish first); one still not
/// ready then is closed.
pub const GATHER_LIMIT: Duration = Duration::from_secs(10);

/// What the new process needs to go on with a connection; its two sockets
/// travel beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MovedConnection {
    pub virtual_name: String,
    pub pool: String,
    pub member: SocketAddr,
    pub client: SocketAddr,
    /// The member socket's local address: its SNAT port.
    pub source: Option<SocketAddr>,
    /// Since the client was accepted, in milliseconds.
    pub age_ms: u64,
    pub standing: Standing,
    /// Bytes read from the client and not yet written to the member (then
    /// a pipe holding them travels too), and the other way.
    #[serde(default)]
    pub pending_to_member: usize,
    #[serde(default)]
    pub pending_to_client: usize,
}

/// One connection on its way: the description, both sockets, and the
/// bytes in flight each way.
#[derive(Debug)]
pub struct Moving {
    pub connection: MovedConnection,
    pub client: std::net::TcpStream,
    pub member: std::net::TcpStream,
    pub to_member: Option<InFlight>,
    pub to_client: Option<InFlight>,
}

impl Moving {
    /// Closes both sockets with a reset, so neither side takes the end for
    /// a complete answer.
    pub fn reset(self) {
        for socket in [&self.client, &self.member] {
            let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
        }
    }
}

/// One process's side of moving connections; shared by every virtual.
#[derive(Debug, Default)]
pub struct HandOver {
    /// Set once the successor serves: movable connections stop and come.
    wanted: AtomicBool,
    /// Movable connections alive here (from the accept on, for virtuals
    /// whose connections can move): the ones still to come. An atomic, so
    /// the data path takes no lock.
    movable: AtomicUsize,
    /// Connections ready to go; at most the movable ones, so bounded by
    /// the connection limits.
    ready: Mutex<Ready>,
    arrived: Condvar,
}

#[derive(Debug, Default)]
struct Ready {
    connections: Vec<Moving>,
    /// The upgrade took its last batch: later ones close.
    closed: bool,
}

impl HandOver {
    /// Counts one connection that may move; the guard gives it back.
    pub fn count_movable(self: &Arc<Self>) -> MovableGuard {
        self.movable.fetch_add(1, Ordering::Relaxed);
        MovableGuard(Some(Arc::clone(self)))
    }

    /// Movable connections alive in this process.
    pub fn movable(&self) -> usize {
        self.movable.load(Ordering::Relaxed)
    }

    /// Whether a connection whose stop signal fired should move.
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    /// From now on, movable connections come here when their stop signal
    /// fires (the caller fires it).
    pub fn begin(&self) {
        self.wanted.store(true, Ordering::Release);
    }

    /// Hands one connection to the upgrade. `false` when the upgrade is
    /// over: the connection was closed (with a reset, so neither side takes
    /// the end for a complete answer).
    pub fn put(&self, moving: Moving) -> bool {
        let mut ready = lock(&self.ready);
        if ready.closed {
            drop(ready);
            moving.reset();
            return false;
        }
        ready.connections.push(moving);
        self.arrived.notify_one();
        true
    }

    /// Takes no more connections, and closes those waiting (the successor
    /// went away).
    pub fn close(&self) {
        let waiting = {
            let mut ready = lock(&self.ready);
            ready.closed = true;
            std::mem::take(&mut ready.connections)
        };
        for moving in waiting {
            moving.reset();
        }
    }

    /// Up to `most` connections ready to go, waiting for some while others
    /// may still come; `None` once every movable connection came or
    /// `deadline` passed (then later ones close). Blocks: for the upgrade's
    /// thread.
    pub fn next_batch(&self, most: usize, deadline: Instant) -> Option<Vec<Moving>> {
        let mut ready = lock(&self.ready);
        loop {
            if !ready.connections.is_empty() {
                let take = ready.connections.len().min(most);
                return Some(ready.connections.drain(..take).collect());
            }
            if self.movable() == 0 || Instant::now() >= deadline {
                ready.closed = true;
                return None;
            }
            // A connection that ends without moving only lowers the count:
            // look again every few milliseconds rather than be told.
            ready = match self.arrived.wait_timeout(ready, Duration::from_millis(20)) {
                Ok((ready, _)) => ready,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// One movable connection counted in [`HandOver::movable`] until dropped.
#[derive(Debug)]
pub struct MovableGuard(Option<Arc<HandOver>>);

impl MovableGuard {
    /// A connection that cannot move.
    pub fn none() -> MovableGuard {
        MovableGuard(None)
    }

    /// No longer counted (the connection turned out not to be movable).
    pub fn release(&mut self) {
        if let Some(hand_over) = self.0.take() {
            hand_over.movable.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Still counted.
    pub fn counted(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for MovableGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batches_end_when_every_movable_connection_came_or_ended() {
        let hand_over = Arc::new(HandOver::default());
        let first = hand_over.count_movable();
        let mut second = hand_over.count_movable();
        assert_eq!(hand_over.movable(), 2);
        hand_over.begin();
        assert!(hand_over.put(moving()));
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(hand_over.next_batch(10, deadline).map(|b| b.len()), Some(1));
        // The second ends without moving: nothing more to wait for.
        second.release();
        assert!(hand_over.next_batch(10, deadline).is_none());
        assert!(!hand_over.put(moving()), "too late: closed");
    }

    /// A connection on its way, over a real loopback pair.
    fn moving() -> Moving {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (member, _) = listener.accept().unwrap();
        Moving {
            connection: MovedConnection {
                virtual_name: "v".into(),
                pool: "p".into(),
                member: member.local_addr().unwrap(),
                client: client.local_addr().unwrap(),
                source: None,
                age_ms: 1,
                standing: Standing::default(),
                pending_to_member: 0,
                pending_to_client: 0,
            },
            client,
            member,
            to_member: None,
            to_client: None,
        }
    }
}
