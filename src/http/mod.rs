//! HTTP virtuals (`mode = "http"`): requests are read with hyper, routed
//! one by one (with session persistence by URL parameter or inserted
//! cookie) and forwarded over kept-alive member connections.
//!
//! - [`persistence`]: the pure parsing and sealing the routing relies on;
//! - `client_io`: the client leg with its keep-alive, header and idle
//!   timeouts (and the 408);
//! - `forward`: one request, from its persistence claim to the response;
//! - `members`: the per-member queues of idle connections;
//! - `headers`: hop-by-hop removal and `X-Forwarded-*`;
//! - `tunnel`: what an upgraded connection (WebSocket) becomes.

mod client_io;
mod forward;
mod headers;
mod members;
pub mod persistence;
mod tunnel;

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

pub use members::{IDLE_PER_MEMBER, MEMBER_IDLE_TIMEOUT};

use crate::config::{HttpPlan, Persistence, VirtualPlan};
use crate::dial::Dialer;
use crate::pool::Pool;
use crate::stats::VirtualStats;
use crate::streams::Front;
use crate::sync::lock;
use client_io::{ClientIo, Phase, Timeouts};
use members::MemberConnections;
use persistence::CookieSeal;

/// An HTTP virtual: its HTTP settings, and what of the virtual its
/// requests need (the pool, how members are reached, the counters).
#[derive(Debug)]
pub struct HttpVirtual {
    pub plan: HttpPlan,
    /// The virtual's name, for logs.
    pub name: String,
    /// The virtual's `idle_timeout`: the most a member may take to answer,
    /// and a response or tunnel may stay quiet.
    pub idle_timeout: Duration,
    pub pool: Arc<Pool>,
    pub dialer: Dialer,
    pub stats: Arc<VirtualStats>,
    /// Set for cookie persistence.
    seal: Option<CookieSeal>,
    members: MemberConnections,
}

/// Why an HTTP virtual could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
}

impl HttpVirtual {
    /// Sets up the HTTP side of virtual `virtual_plan` in front of `pool`,
    /// reading the shared secret if its persistence needs one.
    pub fn load(
        plan: &HttpPlan,
        virtual_plan: &VirtualPlan,
        pool: Arc<Pool>,
        dialer: Dialer,
        stats: Arc<VirtualStats>,
    ) -> Result<HttpVirtual, HttpError> {
        let seal = match &plan.persistence {
            Persistence::Cookie { secret_file, .. } => {
                Some(CookieSeal::new(&crate::secret::read(secret_file)?))
            }
            Persistence::None | Persistence::UrlParam { .. } => None,
        };
        Ok(HttpVirtual {
            plan: plan.clone(),
            name: virtual_plan.name.clone(),
            idle_timeout: virtual_plan.idle_timeout,
            members: MemberConnections::new(pool.members().len()),
            pool,
            dialer,
            stats,
            seal,
        })
    }
}

/// One client connection of an HTTP virtual, as its requests see it.
struct Connection {
    http: Arc<HttpVirtual>,
    peer: SocketAddr,
    /// The client came over TLS: X-Forwarded-Proto and Secure cookies.
    tls: bool,
    phase: Arc<Phase>,
    /// Set when a request was answered with 101: the tunnel this
    /// connection becomes once hyper lets go of it.
    tunnel: Mutex<Option<tunnel::Tunnel>>,
}

/// Serves the requests of one client connection until it closes, is idle
/// too long, or the server drains (`draining`: finish the request in
/// flight, then close) or closes (`close`: at once).
pub(crate) async fn serve(
    client: Front,
    peer: SocketAddr,
    http: Arc<HttpVirtual>,
    close: CancellationToken,
    draining: CancellationToken,
) {
    let phase = Arc::new(Phase::default());
    let tls = client.is_tls();
    let timeouts = Timeouts {
        header: http.plan.header_timeout,
        keepalive: http.plan.keepalive_timeout,
        idle: http.idle_timeout,
    };
    let io = ClientIo::new(
        client,
        Arc::clone(&phase),
        timeouts,
        Arc::clone(&http.stats),
    );
    let max_header_size = http.plan.max_header_size;
    let connection = Arc::new(Connection {
        http,
        peer,
        tls,
        phase,
        tunnel: Mutex::new(None),
    });
    let service = {
        let connection = Arc::clone(&connection);
        service_fn(move |request| forward::handle(Arc::clone(&connection), request))
    };
    let mut served = pin!(http1::Builder::new()
        .keep_alive(true)
        .max_header_size(max_header_size)
        // Bounds what a client trickling an endless head makes us hold.
        .max_buf_size(max_header_size.max(64 * 1024))
        // Ours: see client_io.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades());
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = draining.cancelled() => {
            served.as_mut().graceful_shutdown();
            tokio::select! {
                result = served.as_mut() => result,
                () = close.cancelled() => return,
            }
        }
        () = close.cancelled() => return,
    };
    if let Err(error) = result {
        tracing::debug!(target: "vipgate::connection", virtual_server = %connection.http.name, client = %peer, %error, "HTTP connection ended with an error");
    }
    let tunnel = lock(&connection.tunnel).take();
    if let Some(tunnel) = tunnel {
        tunnel.run(&connection, &close).await;
    }
}
