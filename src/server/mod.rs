//! The running load balancer: the live [`Snapshot`] of configuration and
//! state, the listeners and their accept loops, and the lifecycle from
//! start to a drained shutdown; [`Control`] changes it while it runs (live
//! reload, member admin state).
//!
//! Everything the data path reads lives in one `ArcSwap<Snapshot>`. A new
//! configuration becomes a new snapshot built from the old one (member and
//! virtual counters are carried over by identity) and is swapped in once;
//! connections already open keep the pool they started with.
//!
//! Services beside the load balancer (the admin endpoint) are not part of
//! it: they get the [`Control`] and stop with [`Server::stopping`].

mod accept;
mod control;
mod handoff;
mod member_decisions;
mod mover;
mod reload;
mod reload_history;
mod snapshot;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Plan, SnatShare};
use crate::health::HealthError;
use crate::http::HttpError;
use crate::service::ServiceManager;
use crate::stop_signal::Shutdown;
use crate::tls::TlsError;
use crate::virtual_server::{self, BindError, Listener};
use crate::workers::Workers;
use accept::Lifecycle;

pub use control::{AdminError, Control};
pub use handoff::{
    CarriedHealth, CarriedProbe, CarriedState, Inherited, InheritedListener, ReloadsHeld,
};
pub use member_decisions::{DecisionStatus, DecisionsStatus, MemberChange};
pub use reload::{ReloadError, ReloadReport};
pub use reload_history::{config_hash, ReloadCounts, ReloadStats};
pub use snapshot::Snapshot;

/// How often a drain tells the service manager how many connections are
/// left.
const DRAIN_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The live snapshot, shared by every accept loop.
pub type Live = Arc<ArcSwap<Snapshot>>;

/// Where a running configuration came from, for reloads.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file SIGHUP and `POST /reload` read again.
    pub path: PathBuf,
    /// Its content when the plan was made from it (for its hash).
    pub text: String,
    /// This node's slice of every SNAT pool, taken again at each reload.
    pub snat_share: Option<SnatShare>,
}

/// Why vipgate could not start serving a (valid) configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    #[error("virtuals.{virtual_name}.tls: {error}")]
    Tls {
        virtual_name: String,
        error: TlsError,
    },
    #[error("pools.{pool}.tls: {error}")]
    PoolTls { pool: String, error: TlsError },
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error("virtuals.{virtual_name}.persistence: {error}")]
    Http {
        virtual_name: String,
        error: HttpError,
    },
}

/// A load balancer with its listeners open, ready to [`run`](Server::run).
pub struct Server {
    live: Live,
    listeners: Vec<(String, SocketAddr, Listener)>,
    lifecycle: Lifecycle,
    control: Arc<Control>,
    service: ServiceManager,
    /// Told once every listener accepts (where READY is sent).
    serving: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// Opens every virtual's listener and starts the health checker. Must
    /// be called inside a tokio runtime. Fails, naming the virtual, if any
    /// address cannot be bound; then no listener stays open. With a
    /// `source`, SIGHUP and `POST /reload` read that file again.
    pub fn bind(plan: Plan, source: Option<ConfigSource>) -> Result<Server, StartError> {
        Server::bind_inherited(plan, source, Inherited::default())
    }

    /// [`bind`](Self::bind) for a process a binary upgrade started: the
    /// listening sockets its predecessor hands over are used as they are
    /// (only new addresses are bound), and the probes' verdicts, member
    /// health and operator decisions it carries are in force before the
    /// first probe or client.
    pub fn bind_inherited(
        plan: Plan,
        source: Option<ConfigSource>,
        mut inherited: Inherited,
    ) -> Result<Server, StartError> {
        let snapshot = Snapshot::build(plan, None)?;
        handoff::restore(&snapshot, &inherited.state);
        let settings = &snapshot.plan().settings;
        let workers = Workers::start(settings.worker_threads, &settings.cpu_affinity)
            .map_err(StartError::Workers)?;
        let listeners = snapshot
            .plan()
            .virtuals
            .iter()
            .map(|v| {
                let listener = match inherited.take_listener(&v.name, v.listen) {
                    Some(sockets) => Listener::from_sockets(sockets),
                    None => virtual_server::bind(v, workers.count())?,
                };
                Ok((v.name.clone(), v.listen, listener))
            })
            .collect::<Result<Vec<_>, BindError>>()?;
        let shutdown = Shutdown {
            draining: CancellationToken::new(),
            closing: snapshot.closing.all.clone(),
            handing_over: snapshot.closing.plain.clone(),
        };
        let live: Live = Arc::new(ArcSwap::from_pointee(snapshot));
        let lifecycle = Lifecycle {
            live: Arc::clone(&live),
            connections: TaskTracker::new(),
            shutdown,
        };
        let service = ServiceManager::from_environment();
        let control = Arc::new(Control::new(
            Arc::clone(&live),
            source,
            lifecycle.clone(),
            service,
            workers,
        ));
        if let Some(decisions) = &inherited.state.decisions {
            let _ = control.merge_decisions(decisions);
        }
        if inherited.predecessor.is_some() {
            control.reloads.upgraded(inherited.state.upgrades);
        }
        Ok(Server {
            live,
            listeners,
            lifecycle,
            control,
            service,
            serving: None,
        })
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

    /// The handle reloads and admin actions go through.
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    /// Completes once every listener accepts (before the service manager
    /// hears READY).
    pub fn when_serving(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (serving, told) = tokio::sync::oneshot::channel();
        self.serving = Some(serving);
        told
    }

    /// Cancelled when the server stops accepting: services beside it stop
    /// with it.
    pub fn stopping(&self) -> CancellationToken {
        self.lifecycle.shutdown.draining.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open
    /// connections finish for up to `settings.drain_timeout`, closes the
    /// rest, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            live,
            listeners,
            lifecycle,
            control,
            service,
            serving,
        } = self;
        let mut background = JoinSet::new();
        // Installed before the listeners open, so an early SIGHUP cannot
        // fall back to the default action (exit).
        reload_on_hangup(&control, &mut background);
        for (name, address, listener) in listeners {
            control.start_listener(name, address, listener).await;
        }
        // Every listener is bound (and accepting into its backlog); the
        // caller brought up its services before running.
        if let Some(serving) = serving {
            let _ = serving.send(());
        }
        service.ready(&live.load().status_line());
        let watched = Arc::clone(&live);
        background.spawn(service.keep_alive(move || watched.load().status_line()));
        background.spawn(mover::run(
            Arc::clone(&live),
            lifecycle.shutdown.draining.clone(),
        ));

        shutdown.await;
        leave(&live, &control, &service).await;
        lifecycle.shutdown.draining.cancel();
        control.accept_loops_stopped().await;
        // The copies kept for an upgrade would keep the sockets listening
        // (clients would wait in a queue nobody reads instead of being
        // refused); a successor holds its own.
        control.close_listening_sockets().await;
        drain(&live, &lifecycle, &control, service).await;
        control.stop_health().await;
        control.stop_workers();
        background.abort_all();
        tracing::info!("shut down");
    }
}

/// SIGHUP reloads the configuration file (or, without one, the
/// certificates).
fn reload_on_hangup(control: &Arc<Control>, background: &mut JoinSet<()>) {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            let control = Arc::clone(control);
            background.spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP received, reloading the configuration");
                    // Success and failure are logged by reload.
                    if let Err(ReloadError::NoFile) = control.reload().await {
                        tracing::info!("no configuration file to reload; reloading certificates");
                        control.live().load().reload_certificates();
                    }
                }
            });
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; send POST /reload to the admin endpoint instead")
        }
    }
}

/// What a node of an active/active group does before it stops accepting
/// (nothing without `paced_drain` and `withdraw_delay`, and nothing after
/// a binary upgrade, whose successor goes on serving the same address).
///
/// With `paced_drain`, still announced and accepting, it first closes its
/// TCP connections at an even pace over 80% of `drain_timeout` (and any
/// that arrive meanwhile, at the same pace), each with a FIN: a router's
/// ECMP hash sends an established flow to another node once this node's
/// route is withdrawn, which would reset it, so the clients must have left
/// before. Then `/ready` says it is leaving, so the announcement is
/// withdrawn, and for `withdraw_delay` it goes on accepting (and closing
/// at once) what the router still sends.
async fn leave(live: &Live, control: &Control, service: &ServiceManager) {
    if control.replaced() {
        control.set_leaving();
        return;
    }
    let settings = live.load().plan().settings.clone();
    let shed = settings.paced_drain.then(|| {
        mover::ShutdownDrain::new(
            &live.load().connections,
            settings.drain_timeout.mul_f64(0.8),
        )
    });
    if let Some(shed) = &shed {
        service.stopping("closing connections at a pace before leaving");
        while !shed.done(tokio::time::Instant::now()) && live.load().connections.count() > 0 {
            tokio::time::sleep(mover::TICK).await;
            shed.tick(&live.load().connections, tokio::time::Instant::now());
        }
    }
    control.set_leaving();
    let Some(delay) = settings.withdraw_delay else {
        return;
    };
    tracing::info!(?delay, "leaving: /ready answers 503 while vipgate still accepts, so that new clients move to other nodes");
    service.status("leaving: waiting for new clients to go elsewhere");
    let until = tokio::time::Instant::now() + delay;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(mover::TICK).await;
        if let Some(shed) = &shed {
            // The pace is over (or nothing was left to pace): whatever
            // still arrives is asked to leave at once.
            shed.tick(&live.load().connections, shed.deadline());
        }
    }
}

/// Lets open connections finish for up to the drain timeout, telling the
/// service manager how many are left, then closes the rest. After a binary
/// upgrade, the movable connections go to the successor first.
async fn drain(live: &Live, lifecycle: &Lifecycle, control: &Control, service: ServiceManager) {
    control.when_connections_moved().await;
    // After a binary upgrade, the successor serves new clients and the
    // connections left here may take longer.
    let (drain_timeout, service) = if control.replaced() {
        // The successor is the service now: systemd must not hear that
        // this process is stopping.
        let timeout = live.load().plan().settings.upgrade_drain_timeout;
        (timeout, ServiceManager::silent())
    } else {
        (live.load().plan().settings.drain_timeout, service)
    };
    let open = live.load().active_connections();
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
                () = tokio::time::sleep(DRAIN_STATUS_INTERVAL) => {
                    let open = live.load().active_connections();
                    service.status(&format!("draining {open} connections"));
                }
            }
        }
    };
    if tokio::time::timeout(drain_timeout, drained).await.is_err() {
        let open = live.load().active_connections();
        tracing::warn!(
            open,
            "drain timeout reached, closing the remaining connections"
        );
        lifecycle.shutdown.closing.cancel();
        lifecycle.connections.wait().await;
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C). The handlers are installed
/// when this is called, not when the future is first polled: call it
/// before binding the listeners, so that a service manager that sees
/// "listening" and stops vipgate at once gets a drained shutdown rather
/// than the default action of SIGTERM.
pub fn termination_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (mut terminate, mut interrupt) = match handlers {
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
}
