//! Live reload of the configuration file (SIGHUP, `POST /reload`).
//!
//! A reload parses and validates the new file first and builds the whole
//! new snapshot (certificates, secrets, listeners) before anything changes;
//! any error leaves the running configuration as it is. Then it swaps the
//! snapshot once, stops the listeners of removed virtuals, starts those of
//! added ones, restarts the health checker (probe results carry over), and
//! gives connections on removed members `drain_timeout` before closing
//! them. Connections already open keep their member.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::control::{Control, Running};
use super::member_decisions::apply_decisions;
use super::reload_history::config_hash;
use super::{Snapshot, StartError};
use crate::config::{self, ConfigError};
use crate::pool::MemberState;
use crate::sync::lock;
use crate::virtual_server::{self, Listener};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("vipgate was not started from a configuration file, so there is nothing to reload")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("a binary upgrade replaced this process, which only drains its connections; reload the new process (its pid is the service's main pid)")]
    Replaced,
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

impl Control {
    /// Reads the configuration file again and, if it is valid and can be
    /// served, makes it the running one. On any error nothing changes.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        if self.source.is_none() {
            // Not a failed reload: there is nothing to reload.
            return Err(ReloadError::NoFile);
        }
        // Taken before anything is said to systemd: an upgrade holds it
        // while it hands the listeners over, and a reload asked meanwhile
        // must see the process it reloads still serving.
        let running = self.running.lock().await;
        if self.replaced() {
            tracing::warn!("reload refused: a binary upgrade replaced this process, which only drains; reload the new process");
            return Err(ReloadError::Replaced);
        }
        self.service.reloading();
        let result = self.try_reload(running).await;
        let status = self.live.load().status_line();
        match &result {
            Ok(report) => {
                self.service.ready(&status);
                self.reloads.succeeded();
                tracing::info!(
                    config_hash = %report.config_hash,
                    added = ?report.virtuals_added,
                    removed = ?report.virtuals_removed,
                    members_removed = ?report.members_removed,
                    "configuration reloaded"
                );
            }
            Err(error) => {
                self.service
                    .ready(&format!("{status}; the last reload failed (see the log)"));
                self.reloads.failed(error.to_string());
                tracing::error!("reload failed, the running configuration stays:\n{error}");
            }
        }
        result
    }

    async fn try_reload(
        &self,
        mut running: tokio::sync::MutexGuard<'_, Running>,
    ) -> Result<ReloadReport, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoFile)?;
        let (text, plan) = config::load_shared(&source.path, source.snat_share)?;
        for warning in &plan.warnings {
            tracing::warn!("{warning}");
        }
        let current = self.live.load_full();
        if plan.admin != current.plan().admin {
            tracing::warn!("the [admin] table changed; that takes effect at the next restart");
        }
        if plan.settings.worker_threads != current.plan().settings.worker_threads {
            tracing::warn!(
                "settings.worker_threads changed; that takes effect at the next restart"
            );
        }
        if plan.settings.cpu_affinity != current.plan().settings.cpu_affinity {
            tracing::warn!("settings.cpu_affinity changed; that takes effect at the next restart");
        }
        let snapshot = Arc::new(Snapshot::build(plan, Some(&current))?);
        // Everything that can fail is done before anything changes.
        let bound = bind_new_listeners(&running, &snapshot, self.workers.count())?;
        let retiring = removed_members(&current, &snapshot);
        {
            // The state file is read again (it may have moved), and the
            // decisions that still hold set before the snapshot serves.
            let mut decisions = lock(&self.decisions);
            decisions.use_file(snapshot.plan().settings.state_file.as_deref());
            apply_decisions(&snapshot, &mut decisions);
        }

        self.live.store(Arc::clone(&snapshot));
        let (virtuals_added, virtuals_removed) =
            self.switch_listeners(&mut running, &current, &snapshot, bound);
        // The health checker of the new plan; probe results carried over.
        running.health.abort_all();
        snapshot.health().spawn(&mut running.health);
        let members_removed = retiring.iter().map(|m| m.address()).collect();
        self.retire_after_drain(retiring, snapshot.plan().settings.drain_timeout);

        let config_hash = config_hash(&text);
        self.reloads.loaded(config_hash.clone());
        Ok(ReloadReport {
            config_hash,
            virtuals_added,
            virtuals_removed,
            members_removed,
        })
    }

    /// Stops the listeners of removed virtuals and of virtuals whose
    /// address changed, and starts the `bound` ones. Returns the names of
    /// the virtuals added and removed.
    fn switch_listeners(
        &self,
        running: &mut Running,
        current: &Snapshot,
        snapshot: &Snapshot,
        bound: Vec<(String, SocketAddr, Listener)>,
    ) -> (Vec<String>, Vec<String>) {
        let keep: HashSet<&str> = snapshot
            .plan()
            .virtuals
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let changed: HashSet<String> = bound.iter().map(|(name, _, _)| name.clone()).collect();
        let mut removed = Vec::new();
        running.listeners.retain(|name, listening| {
            let stays = keep.contains(name.as_str()) && !changed.contains(name);
            if !stays {
                listening.stop.cancel();
                if !keep.contains(name.as_str()) {
                    removed.push(name.clone());
                }
            }
            stays
        });
        let mut added = Vec::new();
        for (name, address, listener) in bound {
            if current.virtual_server(&name).is_none() {
                added.push(name.clone());
            }
            self.spawn_accept_loop(running, name, address, listener);
        }
        removed.sort();
        (added, removed)
    }

    /// Closes the connections still on members that left the
    /// configuration, once `drain_timeout` has passed (or at shutdown).
    fn retire_after_drain(&self, retiring: Vec<Arc<MemberState>>, drain_timeout: Duration) {
        if retiring.is_empty() {
            return;
        }
        let close: CancellationToken = self.lifecycle.shutdown.closing.clone();
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
}

/// The listeners the new snapshot needs and the running server does not
/// have (new virtuals, changed addresses), bound before anything changes
/// so a busy address fails the reload instead of half-applying it.
fn bind_new_listeners(
    running: &Running,
    snapshot: &Snapshot,
    workers: usize,
) -> Result<Vec<(String, SocketAddr, Listener)>, StartError> {
    let mut bound = Vec::new();
    for virtual_plan in &snapshot.plan().virtuals {
        let unchanged = running
            .listeners
            .get(&virtual_plan.name)
            .is_some_and(|l| l.address == virtual_plan.listen);
        if !unchanged {
            let listener = virtual_server::bind(virtual_plan, workers)?;
            bound.push((virtual_plan.name.clone(), virtual_plan.listen, listener));
        }
    }
    Ok(bound)
}

/// Members of `current` that `snapshot` no longer has.
fn removed_members(current: &Snapshot, snapshot: &Snapshot) -> Vec<Arc<MemberState>> {
    current
        .members()
        .filter(|m| snapshot.member(&m.address()).is_none())
        .cloned()
        .collect()
}
