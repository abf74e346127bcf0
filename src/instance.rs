//! One vipgate as `vipgate run` starts it: the load balancer ([`Server`])
//! and the services beside it (the admin endpoint), wired together here so
//! that neither knows of the other. Tests start the same thing in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin::{self, Endpoint, EndpointError};
use crate::config::Plan;
use crate::server::{ConfigSource, Control, Live, Server, StartError};

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
}

impl Instance {
    /// Opens the virtuals' listeners and the admin endpoint (and reads its
    /// token). Must be called inside a tokio runtime. With a `source`,
    /// SIGHUP and `POST /reload` read that file again.
    pub fn bind(plan: Plan, source: Option<ConfigSource>) -> Result<Instance, LaunchError> {
        // The admin endpoint first: its token file is the likelier mistake,
        // and nothing has started probing members yet.
        let admin = admin::bind(&plan.admin)?;
        let server = Server::bind(plan, source)?;
        Ok(Instance { server, admin })
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

    /// Serves until `shutdown` completes, then drains (see [`Server::run`]).
    /// The admin endpoint answers from before the service manager hears
    /// READY until the server stops accepting.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Instance { server, admin } = self;
        let peers = admin.as_ref().and_then(Endpoint::peers);
        let admin = admin.map(|endpoint| {
            tokio::spawn(admin::serve(endpoint, server.control(), server.stopping()))
        });
        if let Some(peers) = peers {
            // The peers' decisions before READY: a node that comes back
            // does not send agents to a member put under maintenance while
            // it was away.
            peers.pull(&server.control()).await;
            peers.spawn_senders(server.control(), server.stopping());
        }
        server.run(shutdown).await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
    }
}
