//! Changing a running vipgate: the handle behind live reload
//! ([`super::reload`]), member admin state and readiness, which the admin
//! endpoint and the signal handler use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::accept::{accept_loop, Lifecycle};
use super::member_decisions::{apply_decisions, configured_states, DecisionsStatus, MemberChange};
use super::reload_history::{config_hash, ReloadStats};
use super::{ConfigSource, Live};
use crate::config::AdminState;
use crate::connections::{Filter, Page};
use crate::pool::Drain;
use crate::service::ServiceManager;
use crate::state_file::{DecisionSet, Decisions};
use crate::sync::lock;
use crate::virtual_server::Listener;
use crate::workers::Workers;

/// Why an admin action was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no pool named \"{0}\"")]
    UnknownPool(String),
    #[error(
        "pool {pool} has no member {member} (members are named by address, e.g. 10.0.0.11:9070)"
    )]
    UnknownMember { pool: String, member: String },
}

/// One virtual's listener, as a reload sees it.
pub(super) struct Listening {
    /// The address in the plan (port 0 stays 0, so an unchanged virtual
    /// keeps its socket).
    pub address: SocketAddr,
    pub stop: CancellationToken,
    /// Copies of the sockets the accept loops own, for a successor.
    pub sockets: Vec<std::net::TcpListener>,
}

/// The parts of a running server that a reload replaces.
pub(super) struct Running {
    pub listeners: HashMap<String, Listening>,
    pub health: JoinSet<()>,
}

/// The handle reloads and admin actions go through.
pub struct Control {
    pub(super) live: Live,
    pub(super) source: Option<ConfigSource>,
    pub(super) lifecycle: Lifecycle,
    /// Accept loops, so a shutdown can wait for them all.
    accept_loops: TaskTracker,
    /// The data path's threads: each runs an accept loop per virtual.
    pub(super) workers: Workers,
    /// One reload at a time; never held by the data path.
    pub(super) running: tokio::sync::Mutex<Running>,
    pub(super) reloads: Arc<ReloadStats>,
    /// Told about reloads (systemd `RELOADING=1`, then `READY=1`).
    pub(super) service: ServiceManager,
    /// The operator's member decisions and the state file that keeps
    /// them; taken by admin actions and reloads, never by the data path.
    pub(super) decisions: std::sync::Mutex<Decisions>,
    /// Bumped on every local decision, for the peers' senders.
    decision_changes: tokio::sync::watch::Sender<u64>,
    /// Cancelled when a successor took over (binary upgrade): the server
    /// then drains, for `upgrade_drain_timeout`.
    replaced: CancellationToken,
    /// Cancelled once a successor has this process's movable connections
    /// (or the attempt is over): the drain waits for it.
    pub(super) moved: CancellationToken,
    /// Set when a shutdown begins: `/ready` then says this node is leaving.
    leaving: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("source", &self.source.as_ref().map(|s| &s.path))
            .finish()
    }
}

impl Control {
    pub(super) fn new(
        live: Live,
        source: Option<ConfigSource>,
        lifecycle: Lifecycle,
        service: ServiceManager,
        workers: Workers,
    ) -> Control {
        let reloads = Arc::new(ReloadStats::default());
        reloads.loaded(
            source
                .as_ref()
                .map_or_else(String::new, |s| config_hash(&s.text)),
        );
        let snapshot = live.load();
        let mut decisions = Decisions::open(snapshot.plan().settings.state_file.as_deref());
        apply_decisions(&snapshot, &mut decisions);
        let mut health = JoinSet::new();
        snapshot.health().spawn(&mut health);
        Control {
            live,
            source,
            lifecycle,
            accept_loops: TaskTracker::new(),
            workers,
            running: tokio::sync::Mutex::new(Running {
                listeners: HashMap::new(),
                health,
            }),
            reloads,
            service,
            decisions: std::sync::Mutex::new(decisions),
            decision_changes: tokio::sync::watch::Sender::new(0),
            replaced: CancellationToken::new(),
            moved: CancellationToken::new(),
            leaving: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks this node as leaving (a shutdown began): [`readiness`]
    /// fails from now on, whatever the members.
    ///
    /// [`readiness`]: Self::readiness
    pub fn set_leaving(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks this process as replaced by a successor (binary upgrade):
    /// its shutdown drains for `settings.upgrade_drain_timeout`.
    pub fn set_replaced(&self) {
        self.replaced.cancel();
    }

    /// Completes once a successor took over.
    pub async fn when_replaced(&self) {
        self.replaced.cancelled().await;
    }

    /// Whether this process stopped accepting (a shutdown, or a successor
    /// took over).
    pub fn draining(&self) -> bool {
        self.lifecycle.shutdown.draining.is_cancelled()
    }

    /// Whether a successor took over.
    pub fn replaced(&self) -> bool {
        self.replaced.is_cancelled()
    }

    /// The live snapshot.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The operator's member decisions in force, and where they are kept.
    pub fn member_decisions(&self) -> DecisionsStatus {
        DecisionsStatus::of(&lock(&self.decisions))
    }

    /// The decisions to send to a peer.
    pub fn decisions_to_share(&self) -> DecisionSet {
        lock(&self.decisions).to_share()
    }

    /// Changes whenever an operator decides something here (not when a
    /// peer's decisions are merged: the peer sends those itself).
    pub fn decision_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.decision_changes.subscribe()
    }

    /// Takes a peer's decisions (the later decision about each member
    /// wins), sets the members they change, and saves them. How many
    /// members changed.
    pub fn merge_decisions(&self, set: &DecisionSet) -> Result<usize, String> {
        let mut decisions = lock(&self.decisions);
        let changed = decisions.merge_set(set)?;
        if !changed.is_empty() {
            apply_decisions(&self.live.load(), &mut decisions);
            for member in &changed {
                if let Some(decision) = decisions.members().get(member) {
                    tracing::info!(%member, state = %decision.state, "member admin state taken from a peer");
                }
            }
        }
        Ok(changed.len())
    }

    /// Reload counters and the configuration in force.
    pub fn reloads(&self) -> Arc<ReloadStats> {
        Arc::clone(&self.reloads)
    }

    /// How often a worker has moved itself to a free CPU
    /// (`settings.cpu_affinity = "spread"`).
    pub fn worker_cpu_moves(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.workers.cpu_moves()
    }

    /// Starts accepting on `listener` for virtual `name`.
    pub(super) async fn start_listener(
        &self,
        name: String,
        address: SocketAddr,
        listener: Listener,
    ) {
        let mut running = self.running.lock().await;
        self.spawn_accept_loop(&mut running, name, address, listener);
    }

    pub(super) fn spawn_accept_loop(
        &self,
        running: &mut Running,
        name: String,
        address: SocketAddr,
        listener: Listener,
    ) {
        if let Ok(bound) = listener.local_addr() {
            tracing::info!(virtual_server = %name, address = %bound, "listening");
        }
        let stop = self.lifecycle.shutdown.draining.child_token();
        let mut copies = Vec::new();
        // Sockets inherited from a predecessor may be more or fewer than
        // the workers: each worker takes its turn.
        for (index, socket) in listener.into_sockets().into_iter().enumerate() {
            match socket.try_clone() {
                Ok(copy) => copies.push(copy),
                Err(error) => {
                    tracing::warn!(virtual_server = %name, %error, "cannot keep a copy of a listening socket; an upgrade will bind it anew")
                }
            }
            self.accept_loops.spawn_on(
                accept_loop(name.clone(), socket, self.lifecycle.clone(), stop.clone()),
                self.workers.handle(index % self.workers.count()),
            );
        }
        running.listeners.insert(
            name,
            Listening {
                address,
                stop,
                sockets: copies,
            },
        );
    }

    /// Closes the copies of the listening sockets kept for an upgrade, once
    /// the accept loops have ended: then the sockets close (unless a
    /// successor holds them).
    pub(super) async fn close_listening_sockets(&self) {
        let mut running = self.running.lock().await;
        for listening in running.listeners.values_mut() {
            listening.sockets.clear();
        }
    }

    /// Waits for every accept loop to end (after `shutdown.draining`).
    pub(super) async fn accept_loops_stopped(&self) {
        self.accept_loops.close();
        self.accept_loops.wait().await;
    }

    /// Stops the worker threads, once the drain is over.
    pub(super) fn stop_workers(&self) {
        self.workers.stop();
    }

    /// Stops the health checker, at shutdown.
    pub(super) async fn stop_health(&self) {
        self.running.lock().await.health.abort_all();
    }

    /// Whether vipgate can serve: every virtual of the running
    /// configuration is listening and has a usable member (up and enabled)
    /// in its pool, or in one of its SNI routes' pools (a redirect virtual
    /// only needs to listen). `Err` lists what is
    /// missing, one line per virtual.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        if self.leaving.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(vec![
                "vipgate is shutting down: new clients should go to another node".into(),
            ]);
        }
        let snapshot = self.live.load_full();
        let running = self.running.lock().await;
        let mut missing = Vec::new();
        for virtual_plan in &snapshot.plan().virtuals {
            let name = &virtual_plan.name;
            if !running.listeners.contains_key(name) {
                missing.push(format!("virtual {name} is not listening"));
                continue;
            }
            let Some(live) = snapshot.virtual_server(name) else {
                continue;
            };
            if virtual_plan.pool.is_none() {
                // A redirect virtual needs no member.
                continue;
            }
            let pools = std::iter::once(&live.pool).chain(live.sni_routes.iter().map(|(_, p)| p));
            let mut usable = false;
            let mut names: Vec<&str> = Vec::new();
            for pool in pools {
                usable |= pool.members().iter().any(|member| member.usable());
                if !names.contains(&pool.name()) {
                    names.push(pool.name());
                }
            }
            if !usable {
                missing.push(format!(
                    "virtual {name} has no usable member (up and enabled) in pool {}",
                    names.join(", ")
                ));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    /// Sets the admin state of `member` (its address) in `pool`: `enabled`,
    /// `disabled` (no new sessions; persistent ones still come) or
    /// `forced-offline`. Open connections stay either way. Lasts until
    /// changed again, or the configuration's `state` for it is edited;
    /// kept across restarts in `settings.state_file`. The answer says
    /// whether the decision was saved there.
    pub fn set_member_state(
        &self,
        pool: &str,
        member: &str,
        state: AdminState,
    ) -> Result<MemberChange, AdminError> {
        let snapshot = self.live.load();
        let Some(found) = snapshot.pool(pool) else {
            return Err(AdminError::UnknownPool(pool.to_string()));
        };
        let unknown = || AdminError::UnknownMember {
            pool: pool.to_string(),
            member: member.to_string(),
        };
        let address: SocketAddr = member.parse().map_err(|_| unknown())?;
        let target = found
            .members()
            .iter()
            .find(|m| m.state.address() == address)
            .ok_or_else(unknown)?;
        target.state.set_admin_state(state);
        // A new decision ends a timed drain (enabling it is how one is
        // cancelled).
        target.state.set_drain(None);
        tracing::info!(pool, member = %address, state = %state, "member admin state changed");
        let configured = configured_states(snapshot.plan())
            .get(&address)
            .copied()
            .unwrap_or_default();
        let saved = lock(&self.decisions)
            .decide(address, state, configured, crate::clock::unix_millis())
            .map_err(|error| {
                tracing::error!(member = %address, %error, "the member decision holds until vipgate stops, but is not saved");
                error.to_string()
            });
        self.decision_changes.send_modify(|version| *version += 1);
        Ok(MemberChange { address, saved })
    }

    /// Drains `member` of `pool` within `within`: it is disabled (no new
    /// clients, kept across restarts like any decision), and its open
    /// connections are closed at an even pace, idle ones first, the last
    /// by the deadline. Enabling it cancels the drain.
    pub fn drain_member(
        &self,
        pool: &str,
        member: &str,
        within: std::time::Duration,
    ) -> Result<MemberChange, AdminError> {
        let change = self.set_member_state(pool, member, AdminState::Disabled)?;
        if let Some(state) = self.live.load().member(&change.address) {
            let started = tokio::time::Instant::now();
            let initial = state.active_connections();
            state.set_drain(Some(Drain {
                started,
                deadline: started + within,
                initial,
                finished: None,
            }));
            tracing::info!(pool, member = %change.address, connections = initial, ?within, "draining member");
        }
        Ok(change)
    }

    /// A page of the open TCP connections `filter` asks for.
    pub(crate) fn connections(&self, filter: &Filter) -> Page {
        self.live.load().connections.list(filter)
    }
}
