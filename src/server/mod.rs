//! The running load balancer: the live [`Snapshot`] of configuration and
//! state, the listeners, and the lifecycle from start to a drained
//! shutdown.
//!
//! Everything the data path reads lives in one `ArcSwap<Snapshot>`. A new
//! configuration becomes a new snapshot built from the old one (member and
//! virtual counters are carried over by identity) and is swapped in once;
//! connections already open keep the pool they started with.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Mode, Plan, Snat, Tls};
use crate::health::{self, HealthPlan};
use crate::http::{HttpError, HttpVirtual};
use crate::pool::{MemberRegistry, MemberState, Pool};
use crate::service::{serving_status, ServiceManager};
use crate::snat::{Automap, SnatPool, SourceNat};
use crate::tls::{MemberTls, Terminator, TlsError};
use crate::virtual_server::{self, BindError, Lifecycle, VirtualServer, VirtualStats};

mod control;

pub use control::{config_hash, AdminError, Control, ReloadError, ReloadReport, ReloadStats};

/// The live snapshot, shared by every accept loop.
pub type Live = Arc<ArcSwap<Snapshot>>;

/// One consistent view of the configuration and the runtime state it uses.
#[derive(Debug)]
pub struct Snapshot {
    plan: Plan,
    pools: BTreeMap<String, Arc<Pool>>,
    virtuals: HashMap<String, Arc<VirtualServer>>,
    members: MemberRegistry,
    health: HealthPlan,
    snat_pools: BTreeMap<String, Arc<SnatPool>>,
    /// Cancelled when open connections must close (the drain timeout of a
    /// shutdown ran out). The same token across snapshots.
    close_connections: CancellationToken,
}

impl Snapshot {
    /// Builds the runtime view of `plan`, reusing the state of members and
    /// virtuals that `previous` already had.
    pub fn build(plan: Plan, previous: Option<&Snapshot>) -> Result<Snapshot, StartError> {
        let close_connections =
            previous.map_or_else(CancellationToken::new, |p| p.close_connections.clone());
        let mut members = MemberRegistry::default();
        let previous_members = previous.map(|p| &p.members);
        let pools: BTreeMap<String, Arc<Pool>> = plan
            .pools
            .iter()
            .map(|(name, pool_plan)| {
                let monitored = |member: &_| health::monitored(&plan, member);
                let member_tls =
                    MemberTls::load(&pool_plan.tls).map_err(|error| StartError::PoolTls {
                        pool: name.clone(),
                        error,
                    })?;
                let pool = Pool::new(
                    pool_plan,
                    &mut members,
                    previous_members,
                    &close_connections,
                    monitored,
                )
                .with_member_tls(member_tls);
                Ok((name.clone(), Arc::new(pool)))
            })
            .collect::<Result<_, StartError>>()?;
        for pool in plan.pools.values() {
            for member in &pool.members {
                if previous_members
                    .and_then(|p| p.get(&member.address))
                    .is_none()
                {
                    if let Some(state) = members.get(&member.address) {
                        state.set_admin_state(member.admin);
                    }
                }
            }
        }
        let health = HealthPlan::build(&plan, &members, previous.map(|p| &p.health))?;
        let snat_pools = build_snat_pools(&plan, previous);
        let virtuals = plan
            .virtuals
            .iter()
            .map(|virtual_plan| {
                let stats = previous
                    .and_then(|p| p.virtuals.get(&virtual_plan.name))
                    .map_or_else(
                        || Arc::new(VirtualStats::new(&virtual_plan.name)),
                        |v| Arc::clone(&v.stats),
                    );
                let pool = Arc::clone(&pools[&virtual_plan.pool]);
                let sni_routes = match &virtual_plan.tls {
                    Tls::Passthrough { sni_routes, .. } => sni_routes
                        .iter()
                        .map(|route| (route.clone(), Arc::clone(&pools[&route.pool])))
                        .collect(),
                    Tls::Off | Tls::Terminate(_) => Vec::new(),
                };
                let snat = match &virtual_plan.snat {
                    Snat::None => SourceNat::None,
                    Snat::Automap => SourceNat::Automap(Arc::new(Automap::build(
                        plan.pools_of(virtual_plan)
                            .flat_map(|p| p.members.iter().map(|m| m.address)),
                    ))),
                    Snat::Pool(name) => SourceNat::Pool(Arc::clone(&snat_pools[name])),
                };
                let terminator = match &virtual_plan.tls {
                    Tls::Terminate(terminate) => Some(Terminator::load(terminate).map_err(
                        |error| StartError::Tls {
                            virtual_name: virtual_plan.name.clone(),
                            error,
                        },
                    )?),
                    _ => None,
                };
                let http = match &virtual_plan.mode {
                    Mode::Http(http) => Some(Arc::new(
                        HttpVirtual::load(http, pool.members().len()).map_err(|error| {
                            StartError::Http {
                                virtual_name: virtual_plan.name.clone(),
                                error,
                            }
                        })?,
                    )),
                    Mode::Tcp => None,
                };
                let virtual_server = VirtualServer {
                    plan: virtual_plan.clone(),
                    pool,
                    http,
                    sni_routes,
                    snat,
                    terminator,
                    stats,
                };
                Ok((virtual_plan.name.clone(), Arc::new(virtual_server)))
            })
            .collect::<Result<_, StartError>>()?;
        Ok(Snapshot {
            plan,
            pools,
            virtuals,
            members,
            health,
            snat_pools,
            close_connections,
        })
    }

    /// The SNAT pools in use, with their port accounting.
    pub fn snat_pools(&self) -> impl Iterator<Item = &Arc<SnatPool>> {
        self.snat_pools.values()
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn virtual_server(&self, name: &str) -> Option<&Arc<VirtualServer>> {
        self.virtuals.get(name)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every pool, by name.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    /// The state of the member at `address`, whichever pools it is in.
    pub fn member(&self, address: &SocketAddr) -> Option<&Arc<MemberState>> {
        self.members.get(address)
    }

    /// Reads the certificates of every virtual that terminates TLS again.
    /// A virtual whose new files are broken keeps its current ones; the
    /// result says which.
    pub fn reload_certificates(&self) -> Vec<(String, Result<(), TlsError>)> {
        let mut results: Vec<(String, Result<(), TlsError>)> = self
            .virtuals
            .iter()
            .filter_map(|(name, v)| Some((name.clone(), v.terminator.as_ref()?.reload())))
            .collect();
        results.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, result) in &results {
            match result {
                Ok(()) => tracing::info!(virtual_server = %name, "certificates reloaded"),
                Err(error) => {
                    tracing::error!(virtual_server = %name, %error, "certificate reload failed, keeping the current certificates")
                }
            }
        }
        results
    }

    /// Every member's state.
    pub fn members(&self) -> impl Iterator<Item = &Arc<MemberState>> {
        self.members.iter()
    }

    /// The health probes and their latest verdicts.
    pub fn health(&self) -> &HealthPlan {
        &self.health
    }

    /// Counters of virtual `name`.
    pub fn virtual_stats(&self, name: &str) -> Option<&Arc<VirtualStats>> {
        self.virtuals.get(name).map(|v| &v.stats)
    }

    /// Client connections open now, over every virtual.
    pub fn active_connections(&self) -> usize {
        self.virtuals
            .values()
            .map(|v| v.stats.active_connections())
            .sum()
    }
}

/// Each SNAT pool, with port sets toward every member that a virtual using
/// it can reach.
fn build_snat_pools(plan: &Plan, previous: Option<&Snapshot>) -> BTreeMap<String, Arc<SnatPool>> {
    plan.snat_pools
        .iter()
        .map(|(name, snat_plan)| {
            let mut members: Vec<SocketAddr> = plan
                .virtuals
                .iter()
                .filter(|v| v.snat == Snat::Pool(name.clone()))
                .flat_map(|v| {
                    plan.pools_of(v)
                        .flat_map(|p| p.members.iter().map(|m| m.address))
                })
                .collect();
            members.sort();
            members.dedup();
            let before = previous
                .and_then(|p| p.snat_pools.get(name))
                .map(Arc::as_ref);
            (
                name.clone(),
                Arc::new(SnatPool::build(snat_plan, &members, before)),
            )
        })
        .collect()
}

/// Why vipgate could not start serving a (valid) configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("virtuals.{virtual_name}.tls: {error}")]
    Tls {
        virtual_name: String,
        error: TlsError,
    },
    #[error("pools.{pool}.tls: {error}")]
    PoolTls { pool: String, error: TlsError },
    #[error("admin.token_file: {} {why}", path.display())]
    AdminToken { path: PathBuf, why: String },
    #[error("admin.listen: cannot listen on {address}: {error}")]
    Admin {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Health(#[from] health::HealthError),
    #[error("virtuals.{virtual_name}.persistence: {error}")]
    Http {
        virtual_name: String,
        error: HttpError,
    },
}

/// A load balancer with its listeners open, ready to [`run`](Server::run).
pub struct Server {
    live: Live,
    listeners: Vec<(String, SocketAddr, TcpListener)>,
    admin: Option<crate::admin::Endpoint>,
    config_path: Option<PathBuf>,
    config_hash: String,
    snat_share: Option<crate::config::SnatShare>,
}

impl Server {
    /// Opens every virtual's listener. Must be called inside a tokio
    /// runtime. Fails, naming the virtual, if any address cannot be bound;
    /// then no listener stays open.
    pub fn bind(plan: Plan) -> Result<Server, StartError> {
        let snapshot = Snapshot::build(plan, None)?;
        let listeners = snapshot
            .plan
            .virtuals
            .iter()
            .map(|v| Ok((v.name.clone(), v.listen, virtual_server::bind(v)?)))
            .collect::<Result<Vec<_>, BindError>>()?;
        let admin = crate::admin::bind(&snapshot.plan.admin)?;
        Ok(Server {
            live: Arc::new(ArcSwap::from_pointee(snapshot)),
            listeners,
            admin,
            config_path: None,
            config_hash: String::new(),
            snat_share: None,
        })
    }

    /// Makes the configuration file at `path` (whose content was `text`
    /// when `plan` was made from it) the one SIGHUP and `POST /reload`
    /// read again.
    pub fn reloading_from(mut self, path: &Path, text: &str) -> Server {
        self.config_path = Some(path.to_path_buf());
        self.config_hash = control::config_hash(text);
        self
    }

    /// Takes this node's `share` of every SNAT pool again at each reload.
    pub fn with_snat_share(mut self, share: Option<crate::config::SnatShare>) -> Server {
        self.snat_share = share;
        self
    }

    /// Where the admin endpoint listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(crate::admin::Endpoint::local_addr)
    }

    /// The address virtual `name` actually listens on (useful with port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(listener_name, _, _)| listener_name == name)
            .and_then(|(_, _, listener)| listener.local_addr().ok())
    }

    /// The live snapshot, for reading counters while the server runs.
    pub fn live(&self) -> Live {
        Arc::clone(&self.live)
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open
    /// connections finish for up to `settings.drain_timeout`, closes the
    /// rest, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let lifecycle = Lifecycle {
            live: Arc::clone(&self.live),
            connections: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            close_connections: self.live.load().close_connections.clone(),
        };
        let service = ServiceManager::from_environment();
        let control = Arc::new(Control::new(
            Arc::clone(&self.live),
            self.config_path,
            self.config_hash,
            lifecycle.clone(),
            service,
            self.snat_share,
        ));
        // SIGHUP reloads the configuration file (or, without one, the
        // certificates). Installed before the listeners open, so an early
        // SIGHUP cannot fall back to the default action (exit).
        let mut background = JoinSet::new();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hangup) => {
                let control = Arc::clone(&control);
                background.spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::info!("SIGHUP received, reloading the configuration");
                        // Success and failure are logged by reload.
                        if let Err(ReloadError::NoFile) = control.reload().await {
                            tracing::info!(
                                "no configuration file to reload; reloading certificates"
                            );
                            control.live().load().reload_certificates();
                        }
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; send POST /reload to the admin endpoint instead")
            }
        }
        for (name, address, listener) in self.listeners {
            control.start_listener(name, address, listener).await;
        }
        if let Some(admin) = self.admin {
            background.spawn(crate::admin::serve(
                admin,
                Arc::clone(&control),
                lifecycle.stop_accepting.clone(),
            ));
        }
        // Every listener is bound (and accepting into its backlog), and so
        // is the admin endpoint.
        service.ready(&serving_status(&self.live.load()));
        let live = Arc::clone(&self.live);
        background.spawn(service.keep_alive(move || serving_status(&live.load())));

        shutdown.await;
        let drain_timeout = self.live.load().plan.settings.drain_timeout;
        lifecycle.stop_accepting.cancel();
        control.accept_loops_stopped().await;
        let open = self.live.load().active_connections();
        service.stopping(&format!("draining {open} connections"));
        tracing::info!(
            open,
            ?drain_timeout,
            "stopped accepting; draining open connections"
        );
        lifecycle.connections.close();
        let drained = async {
            let waiting = lifecycle.connections.wait();
            tokio::pin!(waiting);
            loop {
                tokio::select! {
                    () = &mut waiting => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                        let open = self.live.load().active_connections();
                        service.status(&format!("draining {open} connections"));
                    }
                }
            }
        };
        if tokio::time::timeout(drain_timeout, drained).await.is_err() {
            let open = self.live.load().active_connections();
            tracing::warn!(
                open,
                "drain timeout reached, closing the remaining connections"
            );
            lifecycle.close_connections.cancel();
            lifecycle.connections.wait().await;
        }
        control.stop_health().await;
        background.abort_all();
        tracing::info!("shut down");
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        _ => {
            tracing::error!("cannot install signal handlers; stop vipgate with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
}
