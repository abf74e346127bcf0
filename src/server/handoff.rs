//! What a vipgate started by a binary upgrade takes from the one it
//! replaces (the exchange itself is `upgrade`'s): the listening sockets
//! (the same sockets, so no client in an accept queue is lost and none is
//! refused), the probes' last verdicts and each member's health (so no
//! member is "unchecked" for a probe round, and none that is down takes
//! agents), and the operator's member decisions.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Control, Snapshot};
use crate::pool::Health;
use crate::state_file::DecisionSet;

/// The state carried from the old process to the new one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CarriedState {
    pub probes: Vec<CarriedProbe>,
    pub members: Vec<CarriedHealth>,
    pub decisions: Option<DecisionSet>,
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
    /// The sockets of virtual `name` bound to `address` (the bound one,
    /// or the plan's when it names a port), taken out.
    pub(super) fn take_listener(
        &mut self,
        name: &str,
        address: SocketAddr,
    ) -> Option<Vec<std::net::TcpListener>> {
        let index = self.listeners.iter().position(|listener| {
            listener.virtual_name == name
                && (listener.address == address
                    || (address.port() == 0 && listener.address.ip() == address.ip()))
        })?;
        Some(self.listeners.swap_remove(index).sockets)
    }
}

/// Sets the carried probe verdicts and member health on `snapshot`, before
/// its health checker starts.
pub(super) fn restore(snapshot: &Snapshot, state: &CarriedState) {
    for carried in &state.probes {
        let found = snapshot
            .health()
            .probes()
            .find(|(key, _)| key.monitor == carried.monitor && key.target == carried.target);
        if let (Some((_, status)), Some(health)) = (found, Health::from_name(&carried.health)) {
            status.carry(health, carried.detail.clone());
        }
    }
    for carried in &state.members {
        let health = Health::from_name(&carried.health);
        if let (Some(member), Some(health)) = (
            snapshot.members_health(&carried.pool, carried.member),
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
        CarriedState {
            probes,
            members,
            decisions: Some(self.decisions_to_share()),
        }
    }

    /// Copies of every listening socket (the same sockets, for a
    /// successor), by virtual and bound address.
    pub async fn listening_sockets(&self) -> std::io::Result<Vec<InheritedListener>> {
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
        Ok(listeners)
    }
}
