//! One vipgate as `vipgate run` starts it: the load balancer ([`Server`])
//! and the services beside it (the admin endpoint), wired together here so
//! that neither knows of the other. Tests start the same thing in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin::{self, Endpoint, EndpointError};
use crate::config::Plan;
use crate::server::{ConfigSource, Control, Inherited, Live, Server, StartError};
use crate::upgrade::Upgrader;

/// SIGUSR2 starts a binary upgrade, as nginx's does, until `stop` (the
/// server stops accepting: then the upgrader, and the copy of the admin
/// socket it keeps, go).
fn upgrade_on_signal(upgrader: &Arc<Upgrader>, stop: tokio_util::sync::CancellationToken) {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
        Ok(mut signals) => {
            let upgrader = Arc::clone(upgrader);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        signal = signals.recv() => if signal.is_none() { return },
                        () = stop.cancelled() => return,
                    }
                    tracing::info!("SIGUSR2 received, starting a binary upgrade");
                    // Success and failure are logged by the upgrade.
                    let _ = upgrader.upgrade().await;
                }
            });
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGUSR2; use `vipgate upgrade` (POST /upgrade) instead")
        }
    }
}

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Server(#[from] StartError),
    #[error(transparent)]
    Admin(#[from] EndpointError),
}

/// A load balancer and its admin endpoint, every socket open, ready to
/// [`run`](Instance::run).
pub struct Instance {
    server: Server,
    admin: Option<Endpoint>,
    /// The process this one took over from (binary upgrade).
    predecessor: Option<u32>,
}

impl Instance {
    /// Opens the virtuals' listeners and the admin endpoint (and reads its
    /// token). Must be called inside a tokio runtime. With a `source`,
    /// SIGHUP and `POST /reload` read that file again.
    pub fn bind(plan: Plan, source: Option<ConfigSource>) -> Result<Instance, LaunchError> {
        Instance::bind_inherited(plan, source, Inherited::default(), None)
    }

    /// [`bind`](Self::bind) for a process a binary upgrade started: the
    /// sockets and state its predecessor handed over (see `upgrade`).
    pub fn bind_inherited(
        plan: Plan,
        source: Option<ConfigSource>,
        inherited: Inherited,
        admin_socket: Option<std::net::TcpListener>,
    ) -> Result<Instance, LaunchError> {
        // The admin endpoint first: its token file is the likelier mistake,
        // and nothing has started probing members yet.
        let admin = admin::bind_inherited(&plan.admin, admin_socket)?;
        let predecessor = inherited.predecessor;
        let server = Server::bind_inherited(plan, source, inherited)?;
        Ok(Instance {
            server,
            admin,
            predecessor,
        })
    }

    /// Completes once every listener accepts.
    pub fn when_serving(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        self.server.when_serving()
    }

    /// The address virtual `name` listens on (useful with port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.server.local_addr(name)
    }

    /// Where the admin endpoint listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(Endpoint::local_addr)
    }

    /// The live snapshot.
    pub fn live(&self) -> Live {
        self.server.live()
    }

    /// The handle reloads and admin actions go through.
    pub fn control(&self) -> Arc<Control> {
        self.server.control()
    }

    /// Serves until `shutdown` completes, or a successor took over (binary
    /// upgrade: SIGUSR2 or `POST /upgrade`), then drains (see
    /// [`Server::run`]). The admin endpoint answers from before the service
    /// manager hears READY until the server stops accepting.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Instance {
            server,
            admin,
            predecessor,
        } = self;
        let peers = admin.as_ref().and_then(Endpoint::peers);
        let upgrader = Arc::new(Upgrader::new(
            server.control(),
            admin.as_ref().and_then(Endpoint::socket_copy),
            predecessor,
        ));
        upgrade_on_signal(&upgrader, server.stopping());
        let admin = admin.map(|endpoint| {
            tokio::spawn(admin::serve(
                endpoint,
                server.control(),
                Arc::clone(&upgrader),
                server.stopping(),
            ))
        });
        if let Some(peers) = peers {
            // The peers' decisions before READY: a node that comes back
            // does not send agents to a member put under maintenance while
            // it was away.
            peers.pull(&server.control()).await;
            peers.spawn_senders(server.control(), server.stopping());
        }
        let control = server.control();
        server
            .run(async move {
                tokio::select! {
                    () = shutdown => {}
                    () = control.when_replaced() => {}
                }
            })
            .await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
    }
}
