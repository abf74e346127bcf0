//! Changing a running vipgate: live reload of the configuration file
//! (SIGHUP, `POST /reload`) and member admin state (the admin API).
//!
//! A reload parses and validates the new file first and builds the whole
//! new snapshot (certificates, cookie secrets, listeners) before anything
//! changes; any error leaves the running configuration as it is. Then it
//! swaps the snapshot once, stops the listeners of removed virtuals,
//! starts those of added ones, restarts the health checker (probe results
//! carry over), and gives connections on removed members `drain_timeout`
//! before closing them. Connections already open keep their member.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Live, Snapshot, StartError};
use crate::config::{self, AdminState, ConfigError};
use crate::service::{serving_status, ServiceManager};
use crate::virtual_server::{self, Lifecycle};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("vipgate was not started from a configuration file, so there is nothing to reload")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// What a successful reload changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// SHA-256 of the file now running, hex.
    pub config_hash: String,
    pub virtuals_added: Vec<String>,
    pub virtuals_removed: Vec<String>,
    /// Members no longer in any pool: their connections close after
    /// `drain_timeout`.
    pub members_removed: Vec<SocketAddr>,
}

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

/// Reload counters and the configuration in force.
#[derive(Debug, Default)]
pub struct ReloadStats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Unix seconds of the last successful load (the start counts).
    last_success: AtomicU64,
    config_hash: Mutex<String>,
    last_error: Mutex<Option<String>>,
}

impl ReloadStats {
    /// (succeeded, failed) reloads since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Unix seconds of the last successful load.
    pub fn last_success(&self) -> u64 {
        self.last_success.load(Ordering::Relaxed)
    }

    /// SHA-256 of the configuration file in force ("" when not started
    /// from a file).
    pub fn config_hash(&self) -> String {
        self.config_hash
            .lock()
            .map(|hash| hash.clone())
            .unwrap_or_default()
    }

    /// Why the last reload failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|error| error.clone())
    }

    fn loaded(&self, hash: String) {
        if let Ok(mut current) = self.config_hash.lock() {
            *current = hash;
        }
        if let Ok(mut error) = self.last_error.lock() {
            *error = None;
        }
        self.last_success
            .store(crate::clock::unix_seconds(), Ordering::Relaxed);
    }
}

/// One virtual's listener, as the reload sees it.
struct Listening {
    /// The address in the plan (port 0 stays 0, so an unchanged virtual
    /// keeps its socket).
    address: SocketAddr,
    stop: CancellationToken,
}

/// The parts of a running server that a reload replaces.
struct Running {
    listeners: HashMap<String, Listening>,
    health: JoinSet<()>,
}

/// The handle reloads and admin actions go through.
pub struct Control {
    live: Live,
    config_path: Option<PathBuf>,
    lifecycle: Lifecycle,
    /// Accept loops, so a shutdown can wait for them all.
    accept_loops: TaskTracker,
    /// One reload at a time; never held by the data path.
    running: tokio::sync::Mutex<Running>,
    pub reloads: ReloadStats,
    /// Told about reloads (systemd `RELOADING=1`, then `READY=1`).
    service: ServiceManager,
    /// This node's slice of every SNAT pool, taken again at each reload.
    snat_share: Option<config::SnatShare>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("config_path", &self.config_path)
            .finish()
    }
}

/// SHA-256 of a configuration text, hex.
pub fn config_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Control {
    pub(super) fn new(
        live: Live,
        config_path: Option<PathBuf>,
        config_hash: String,
        lifecycle: Lifecycle,
        service: ServiceManager,
        snat_share: Option<config::SnatShare>,
    ) -> Control {
        let reloads = ReloadStats::default();
        reloads.loaded(config_hash);
        let mut health = JoinSet::new();
        live.load().health.spawn(&mut health);
        Control {
            live,
            config_path,
            lifecycle,
            accept_loops: TaskTracker::new(),
            running: tokio::sync::Mutex::new(Running {
                listeners: HashMap::new(),
                health,
            }),
            reloads,
            service,
            snat_share,
        }
    }

    /// The live snapshot.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Starts accepting on `listener` for virtual `name`.
    pub(super) async fn start_listener(
        &self,
        name: String,
        address: SocketAddr,
        listener: TcpListener,
    ) {
        let mut running = self.running.lock().await;
        self.spawn_accept_loop(&mut running, name, address, listener);
    }

    fn spawn_accept_loop(
        &self,
        running: &mut Running,
        name: String,
        address: SocketAddr,
        listener: TcpListener,
    ) {
        if let Ok(bound) = listener.local_addr() {
            tracing::info!(virtual_server = %name, address = %bound, "listening");
        }
        let stop = self.lifecycle.stop_accepting.child_token();
        self.accept_loops.spawn(virtual_server::accept_loop(
            name.clone(),
            listener,
            self.lifecycle.clone(),
            stop.clone(),
        ));
        running.listeners.insert(name, Listening { address, stop });
    }

    /// Waits for every accept loop to end (after `stop_accepting`).
    pub(super) async fn accept_loops_stopped(&self) {
        self.accept_loops.close();
        self.accept_loops.wait().await;
    }

    /// Stops the health checker, at shutdown.
    pub(super) async fn stop_health(&self) {
        self.running.lock().await.health.abort_all();
    }

    /// Reads the configuration file again and, if it is valid and can be
    /// served, makes it the running one. On any error nothing changes.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        if self.config_path.is_none() {
            // Not a failed reload: there is nothing to reload.
            return Err(ReloadError::NoFile);
        }
        self.service.reloading();
        let result = self.try_reload().await;
        let status = serving_status(&self.live.load());
        match &result {
            Ok(_) => self.service.ready(&status),
            Err(_) => self
                .service
                .ready(&format!("{status}; the last reload failed (see the log)")),
        }
        match &result {
            Ok(report) => {
                self.reloads.succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    config_hash = %report.config_hash,
                    added = ?report.virtuals_added,
                    removed = ?report.virtuals_removed,
                    members_removed = ?report.members_removed,
                    "configuration reloaded"
                );
            }
            Err(error) => {
                self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.reloads.last_error.lock() {
                    *last = Some(error.to_string());
                }
                tracing::error!("reload failed, the running configuration stays:\n{error}");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let mut running = self.running.lock().await;
        let (text, plan) = config::load_shared(path, self.snat_share)?;
        for warning in &plan.warnings {
            tracing::warn!("{warning}");
        }
        let current = self.live.load_full();
        if plan.admin != current.plan.admin {
            tracing::warn!("the [admin] table changed; that takes effect at the next restart");
        }
        let snapshot = Snapshot::build(plan, Some(&current))?;

        // Bind every new listener before anything changes, so a busy
        // address fails the reload instead of half-applying it.
        let mut bound = Vec::new();
        for virtual_plan in &snapshot.plan.virtuals {
            let unchanged = running
                .listeners
                .get(&virtual_plan.name)
                .is_some_and(|l| l.address == virtual_plan.listen);
            if !unchanged {
                let listener = virtual_server::bind(virtual_plan).map_err(StartError::from)?;
                bound.push((virtual_plan.name.clone(), virtual_plan.listen, listener));
            }
        }
        let keep: HashSet<String> = snapshot
            .plan
            .virtuals
            .iter()
            .map(|v| v.name.clone())
            .collect();
        let members_removed: Vec<SocketAddr> = current
            .members()
            .map(|m| m.address())
            .filter(|address| snapshot.member(address).is_none())
            .collect();
        let retiring: Vec<_> = members_removed
            .iter()
            .filter_map(|address| current.member(address).cloned())
            .collect();
        let drain_timeout = snapshot.plan.settings.drain_timeout;

        let snapshot = Arc::new(snapshot);
        self.live.store(Arc::clone(&snapshot));

        // Listeners of removed virtuals, and of virtuals whose address
        // changed (their new socket is among `bound`).
        let mut virtuals_removed = Vec::new();
        let changed: HashSet<String> = bound.iter().map(|(name, _, _)| name.clone()).collect();
        running.listeners.retain(|name, listening| {
            let stays = keep.contains(name) && !changed.contains(name);
            if !stays {
                listening.stop.cancel();
                if !keep.contains(name) {
                    virtuals_removed.push(name.clone());
                }
            }
            stays
        });
        let mut virtuals_added = Vec::new();
        for (name, address, listener) in bound {
            if !current.plan.virtuals.iter().any(|v| v.name == name) {
                virtuals_added.push(name.clone());
            }
            self.spawn_accept_loop(&mut running, name, address, listener);
        }
        virtuals_removed.sort();

        // The health checker of the new plan; probe results carried over.
        running.health.abort_all();
        snapshot.health.spawn(&mut running.health);

        if !retiring.is_empty() {
            let close = self.lifecycle.close_connections.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(drain_timeout) => {}
                    () = close.cancelled() => {}
                }
                for member in retiring {
                    if member.active_connections() > 0 {
                        tracing::info!(member = %member.address(), open = member.active_connections(), "removed member's drain time is over, closing its connections");
                    }
                    member.retire();
                }
            });
        }

        let config_hash = config_hash(&text);
        self.reloads.loaded(config_hash.clone());
        Ok(ReloadReport {
            config_hash,
            virtuals_added,
            virtuals_removed,
            members_removed,
        })
    }

    /// Whether vipgate can serve: every virtual of the running
    /// configuration is listening and has a usable member (up and enabled)
    /// in its pool, or in one of its SNI routes' pools. `Err` lists what is
    /// missing, one line per virtual.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
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
            let pools = std::iter::once(&live.pool).chain(live.sni_routes.iter().map(|(_, p)| p));
            let mut usable = false;
            let mut seen = Vec::new();
            for pool in pools {
                usable |= pool.members().iter().any(|member| member.usable());
                if !seen.contains(&pool.name()) {
                    seen.push(pool.name());
                }
            }
            if !usable {
                missing.push(format!(
                    "virtual {name} has no usable member (up and enabled) in pool {}",
                    seen.join(", ")
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
    /// changed again or vipgate restarts (a reload keeps it).
    pub fn set_member_state(
        &self,
        pool: &str,
        member: &str,
        state: AdminState,
    ) -> Result<SocketAddr, AdminError> {
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
        tracing::info!(pool, member = %address, state = %state, "member admin state changed");
        Ok(address)
    }
}
