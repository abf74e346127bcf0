//! What a vipgate started by a binary upgrade takes from the one it
//! replaces (the exchange itself is `upgrade`'s): the listening sockets
//! (the same sockets, so no client in an accept queue is lost and none is
//! refused), the probes' last verdicts and each member's health (so no
//! member is "unchecked" for a probe round, and none that is down takes
//! agents), and the operator's member decisions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::control::Running;
use super::{Control, Snapshot};
use crate::health::ProbeKey;
use crate::pool::{Drain, Health};
use crate::state_file::DecisionSet;
use crate::virtual_server::{self, hand_over::HandOver, hand_over::Moving};

/// The state carried from the old process to the new one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CarriedState {
    pub probes: Vec<CarriedProbe>,
    pub members: Vec<CarriedHealth>,
    pub decisions: Option<DecisionSet>,
    /// Binary upgrades the old process had gone through.
    #[serde(default)]
    pub upgrades: u64,
    /// Timed drains under way (or finished), so a drain goes on at its
    /// pace through an upgrade.
    #[serde(default)]
    pub drains: Vec<CarriedDrain>,
}

/// One member's timed drain, in times relative to the hand-over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CarriedDrain {
    pub member: SocketAddr,
    /// Since the drain started.
    pub elapsed_ms: u64,
    /// From its start to its deadline.
    pub within_ms: u64,
    pub initial: usize,
    pub finished: bool,
}

/// One probe's last verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CarriedProbe {
    pub monitor: String,
    pub target: SocketAddr,
    pub health: String,
    pub detail: String,
}

/// One member's health in one pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CarriedHealth {
    pub pool: String,
    pub member: SocketAddr,
    pub health: String,
}

/// One virtual's listening sockets, as the old process had them.
#[derive(Debug)]
pub struct InheritedListener {
    pub virtual_name: String,
    /// The address the socket is bound to.
    pub address: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Everything a new process inherits.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: Vec<InheritedListener>,
    pub state: CarriedState,
    /// The process handed over from, while it drains.
    pub predecessor: Option<u32>,
}

impl Inherited {
    /// The sockets bound to `address` (a virtual renamed since keeps its
    /// address's sockets), or, for a plan with port 0, those virtual
    /// `name` had on that IP; taken out.
    pub(super) fn take_listener(
        &mut self,
        name: &str,
        address: SocketAddr,
    ) -> Option<Vec<std::net::TcpListener>> {
        let index = self.listeners.iter().position(|listener| {
            listener.address == address
                || (address.port() == 0
                    && listener.virtual_name == name
                    && listener.address.ip() == address.ip())
        })?;
        Some(self.listeners.swap_remove(index).sockets)
    }
}

/// Sets the carried probe verdicts and member health on `snapshot`, before
/// its health checker starts.
pub(super) fn restore(snapshot: &Snapshot, state: &CarriedState) {
    for carried in &state.probes {
        let key = ProbeKey {
            monitor: carried.monitor.clone(),
            target: carried.target,
        };
        let found = snapshot.health().probe(&key);
        if let (Some(status), Some(health)) = (found, Health::from_name(&carried.health)) {
            status.carry(health, carried.detail.clone());
        }
    }
    let now = tokio::time::Instant::now();
    for carried in &state.drains {
        if let Some(member) = snapshot.member(&carried.member) {
            let started = now
                .checked_sub(Duration::from_millis(carried.elapsed_ms))
                .unwrap_or(now);
            member.set_drain(Some(Drain {
                started,
                deadline: started + Duration::from_millis(carried.within_ms),
                initial: carried.initial,
                finished: carried.finished.then_some(now),
            }));
        }
    }
    for carried in &state.members {
        let health = Health::from_name(&carried.health);
        if let (Some(member), Some(health)) = (
            snapshot.member_health(&carried.pool, carried.member),
            health,
        ) {
            member.set(health);
        }
    }
}

impl Control {
    /// The state a successor process carries over.
    pub fn carried_state(&self) -> CarriedState {
        let snapshot = self.live.load();
        let probes = snapshot
            .health()
            .probes()
            .map(|(key, status)| {
                let (health, detail) = status.verdict();
                CarriedProbe {
                    monitor: key.monitor.clone(),
                    target: key.target,
                    health: health.as_str().to_string(),
                    detail,
                }
            })
            .collect();
        let members = snapshot
            .pools()
            .flat_map(|pool| {
                pool.members().iter().map(|member| CarriedHealth {
                    pool: pool.name().to_string(),
                    member: member.state.address(),
                    health: member.health.health().as_str().to_string(),
                })
            })
            .collect();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let drains = snapshot
            .members()
            .filter_map(|member| {
                let drain = member.drain()?;
                Some(CarriedDrain {
                    member: member.address(),
                    elapsed_ms: millis(drain.started.elapsed()),
                    within_ms: millis(drain.deadline.saturating_duration_since(drain.started)),
                    initial: drain.initial,
                    finished: drain.finished.is_some(),
                })
            })
            .collect();
        CarriedState {
            probes,
            members,
            decisions: Some(self.decisions_to_share()),
            upgrades: self.reloads.counts().upgrades,
            drains,
        }
    }

    /// Copies of every listening socket (the same sockets, for a
    /// successor), by virtual and bound address, and the hold that keeps
    /// them the whole set: no reload may add or remove a listener until the
    /// successor has answered (else it would bind an address this process
    /// just took, or miss one).
    pub async fn hold_listening_sockets(
        &self,
    ) -> std::io::Result<(ReloadsHeld<'_>, Vec<InheritedListener>)> {
        let running = self.running.lock().await;
        let mut listeners = Vec::new();
        for (name, listening) in &running.listeners {
            let sockets = listening
                .sockets
                .iter()
                .map(std::net::TcpListener::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            let address = match sockets.first() {
                Some(socket) => socket.local_addr()?,
                None => listening.address,
            };
            listeners.push(InheritedListener {
                virtual_name: name.clone(),
                address,
                sockets,
            });
        }
        Ok((ReloadsHeld { _running: running }, listeners))
    }
}

impl Control {
    /// Old side, once the successor serves: every movable connection stops
    /// reading, writes out what it holds and comes to the returned
    /// hand-over (see [`crate::virtual_server::hand_over`]).
    pub fn start_moving_connections(&self) -> Arc<HandOver> {
        let hand_over = Arc::clone(&self.live.load().hand_over);
        hand_over.begin();
        self.lifecycle.shutdown.handing_over.cancel();
        hand_over
    }

    /// Old side: the movable connections were sent (or the attempt is
    /// over); the drain may end.
    pub fn connections_moved(&self) {
        self.moved.cancel();
    }

    /// Completes once [`connections_moved`](Self::connections_moved) was
    /// called, if this process was replaced; at once otherwise.
    pub(super) async fn when_connections_moved(&self) {
        if self.replaced() {
            self.moved.cancelled().await;
        }
    }

    /// New side: serves each connection of `batch` on a worker, as the old
    /// process left it. One that no longer fits the configuration is
    /// closed, with a warning.
    pub fn adopt_connections(&self, batch: Vec<Moving>) {
        let snapshot = self.live.load();
        for moving in batch {
            let name = &moving.connection.virtual_name;
            let Some(virtual_server) = snapshot.virtual_server(name).cloned() else {
                tracing::warn!(virtual_server = %name, client = %moving.connection.client, "a connection handed over belongs to a virtual no longer configured; closed");
                continue;
            };
            let tasks = self.lifecycle.connections.clone();
            let shutdown = self.lifecycle.shutdown.clone();
            // Spread over the workers as the kernel spreads new clients.
            let worker = usize::from(moving.connection.client.port()) % self.workers.count();
            self.workers.handle(worker).spawn(async move {
                let client = moving.connection.client;
                if let Err(why) = virtual_server::adopt(&tasks, virtual_server, shutdown, moving) {
                    tracing::warn!(%client, "a connection handed over was closed: {why}");
                }
            });
        }
    }
}

/// While held, reloads wait; dropped once a binary upgrade is decided.
pub struct ReloadsHeld<'a> {
    _running: tokio::sync::MutexGuard<'a, Running>,
}

impl std::fmt::Debug for ReloadsHeld<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ReloadsHeld")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str) -> InheritedListener {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        InheritedListener {
            virtual_name: name.to_string(),
            address: socket.local_addr().unwrap(),
            sockets: vec![socket],
        }
    }

    #[test]
    fn sockets_go_by_address_and_a_port_zero_plan_by_name() {
        let (kept, renamed, dropped) = (listener("kept"), listener("old-name"), listener("gone"));
        let (kept_at, renamed_at) = (kept.address, renamed.address);
        let mut inherited = Inherited {
            listeners: vec![kept, renamed, dropped],
            ..Inherited::default()
        };
        assert!(
            inherited.take_listener("new-name", renamed_at).is_some(),
            "renamed, same address"
        );
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(inherited.take_listener("kept", any_port).is_some());
        assert!(
            inherited.take_listener("kept", kept_at).is_none(),
            "taken once"
        );
        assert!(inherited.take_listener("other", any_port).is_none());
        assert_eq!(
            inherited.listeners.len(),
            1,
            "the removed virtual's socket is left"
        );
    }
}
