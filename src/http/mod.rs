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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

pub use members::{IDLE_PER_MEMBER, MEMBER_IDLE_TIMEOUT};

use crate::config::{HttpPlan, Persistence};
use crate::virtual_server::{Front, VirtualServer};
use client_io::{ClientIo, Phase, Timeouts};
use members::MemberConnections;
use persistence::CookieSeal;

/// What an HTTP virtual adds to a virtual server.
#[derive(Debug)]
pub struct HttpVirtual {
    pub plan: HttpPlan,
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
    /// Sets up an HTTP virtual in front of a pool of `members` members,
    /// reading the cookie secret if its persistence needs one.
    pub fn load(plan: &HttpPlan, members: usize) -> Result<HttpVirtual, HttpError> {
        let seal = match &plan.persistence {
            Persistence::Cookie { secret_file, .. } => {
                Some(CookieSeal::new(&crate::secret::read(secret_file)?))
            }
            Persistence::None | Persistence::UrlParam { .. } => None,
        };
        Ok(HttpVirtual {
            plan: plan.clone(),
            seal,
            members: MemberConnections::new(members),
        })
    }
}

/// Counters of an HTTP virtual, kept across configuration changes.
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: AtomicU64,
    persistence_hits: AtomicU64,
    persistence_misses: AtomicU64,
    persistence_reroutes: AtomicU64,
    cookies_set: AtomicU64,
    no_member: AtomicU64,
    member_failed: AtomicU64,
    member_timed_out: AtomicU64,
    request_timeouts: AtomicU64,
    upgrades: AtomicU64,
}

/// A snapshot of [`HttpStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCounts {
    /// Requests received.
    pub requests: u64,
    /// Requests sent to the member their persistence named.
    pub persistence_hits: u64,
    /// Requests without persistence information, balanced.
    pub persistence_misses: u64,
    /// Requests whose persistence named a member that could not take them
    /// (unknown, down, full, or a forged or expired cookie): balanced.
    pub persistence_reroutes: u64,
    /// Persistence cookies set (new sessions, re-routes and renewals).
    pub cookies_set: u64,
    /// 503 answers: no member could take the request.
    pub no_member: u64,
    /// 502 answers: the member failed while answering.
    pub member_failed: u64,
    /// 504 answers: the member did not answer within idle_timeout.
    pub member_timed_out: u64,
    /// 408 answers: request headers not complete within header_timeout.
    pub request_timeouts: u64,
    /// Connections switched to another protocol (WebSocket) and tunnelled.
    pub upgrades: u64,
}

impl HttpStats {
    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> HttpCounts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        HttpCounts {
            requests: read(&self.requests),
            persistence_hits: read(&self.persistence_hits),
            persistence_misses: read(&self.persistence_misses),
            persistence_reroutes: read(&self.persistence_reroutes),
            cookies_set: read(&self.cookies_set),
            no_member: read(&self.no_member),
            member_failed: read(&self.member_failed),
            member_timed_out: read(&self.member_timed_out),
            request_timeouts: read(&self.request_timeouts),
            upgrades: read(&self.upgrades),
        }
    }
}

/// One client connection of an HTTP virtual, as its requests see it.
struct Connection {
    virtual_server: Arc<VirtualServer>,
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
    virtual_server: Arc<VirtualServer>,
    http: Arc<HttpVirtual>,
    close: CancellationToken,
    draining: CancellationToken,
) {
    let phase = Arc::new(Phase::default());
    let tls = client.is_tls();
    let timeouts = Timeouts {
        header: http.plan.header_timeout,
        keepalive: http.plan.keepalive_timeout,
        idle: virtual_server.plan.idle_timeout,
    };
    let io = ClientIo::new(
        client,
        Arc::clone(&phase),
        timeouts,
        Arc::clone(&virtual_server.stats),
    );
    let max_header_size = http.plan.max_header_size;
    let connection = Arc::new(Connection {
        virtual_server,
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
        tracing::debug!(target: "vipgate::connection", virtual_server = %connection.virtual_server.plan.name, client = %peer, %error, "HTTP connection ended with an error");
    }
    let tunnel = connection
        .tunnel
        .lock()
        .map(|mut tunnel| tunnel.take())
        .unwrap_or(None);
    if let Some(tunnel) = tunnel {
        tunnel.run(&connection, &close).await;
    }
}
