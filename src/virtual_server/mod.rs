//! Virtual servers: what one virtual is while it serves (its plan, pool,
//! SNAT, TLS and HTTP state, counters), its listening socket, and each
//! client connection from admission to the log line (`connection`):
//! plain TCP and TLS are pumped here, HTTP virtuals are handed to
//! [`crate::http`].

mod connection;
pub mod hand_over;

pub(crate) use connection::{adopt, spawn, Admitted};

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpStream;

use crate::config::{SniRoute, VirtualPlan};
use crate::dial::Dialer;
use crate::http::HttpVirtual;
use crate::pool::{Choice, Pool};
use crate::source_persistence::{SourceAffinity, Ticket};
use crate::stats::{ClientGuards, VirtualStats};
use crate::tls::Terminator;

/// A virtual server as the data path sees it: its plan, its pool and its
/// counters.
#[derive(Debug)]
pub struct VirtualServer {
    /// The plan's name, shared by every connection's record.
    pub name: Arc<str>,
    pub plan: VirtualPlan,
    /// The pool for clients no SNI route claims.
    pub pool: Arc<Pool>,
    /// Passthrough routing by server name, most specific first.
    pub sni_routes: Vec<(SniRoute, Arc<Pool>)>,
    /// How members are reached: SNAT, connect timeout, keepalive.
    pub dialer: Dialer,
    /// Set for `tls.mode = "terminate" | "auto"`.
    pub terminator: Option<Terminator>,
    /// Set for `mode = "http"`.
    pub http: Option<Arc<HttpVirtual>>,
    pub stats: Arc<VirtualStats>,
    /// The process's hand-over of established connections to a successor
    /// (binary upgrade); the same for every virtual and snapshot.
    pub hand_over: Arc<hand_over::HandOver>,
    /// The process's open connections; the same for every virtual and
    /// snapshot.
    pub connections: Arc<crate::connections::Registry>,
    /// Set for source-address persistence.
    pub source_affinity: Option<SourceAffinity>,
}

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("virtuals.{virtual_name}: cannot listen on {address}: {error}{}", bind_hint(.error))]
pub struct BindError {
    pub virtual_name: String,
    pub address: SocketAddr,
    /// Shown in the message; not chained, so it is not printed twice.
    pub error: io::Error,
}

fn bind_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::AddrInUse => " (another process, or another virtual, already listens there)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        _ => "",
    }
}

/// A virtual's listening sockets: one per worker thread, all bound to the
/// virtual's address with SO_REUSEPORT, so the kernel spreads new clients
/// across the workers' accept queues.
#[derive(Debug)]
pub struct Listener {
    sockets: Vec<std::net::TcpListener>,
}

impl Listener {
    /// The address bound (with the port the system chose for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.sockets.first() {
            Some(socket) => socket.local_addr(),
            None => Err(io::Error::other("no listening socket")),
        }
    }

    /// Listening sockets bound before (a predecessor's, after a binary
    /// upgrade).
    pub fn from_sockets(sockets: Vec<std::net::TcpListener>) -> Listener {
        Listener { sockets }
    }

    /// The sockets, one per worker.
    pub(crate) fn into_sockets(self) -> Vec<std::net::TcpListener> {
        self.sockets
    }
}

/// Opens the listening sockets of a virtual, one for each of `workers`.
///
/// IP_FREEBIND lets a standby instance of a keepalived/VRRP pair listen on a
/// VIP it does not hold yet. The address is first bound once without
/// SO_REUSEPORT, so that an address another process (or another vipgate)
/// already listens on is refused, as it would be without SO_REUSEPORT,
/// rather than silently shared.
pub fn bind(plan: &VirtualPlan, workers: usize) -> Result<Listener, BindError> {
    let fail = |error| BindError {
        virtual_name: plan.name.clone(),
        address: plan.listen,
        error,
    };
    let address = {
        let probe = open_socket(plan, false).map_err(fail)?;
        probe.bind(&plan.listen.into()).map_err(fail)?;
        probe
            .local_addr()
            .ok()
            .and_then(|bound| bound.as_socket())
            .ok_or_else(|| fail(io::Error::other("the bound address is not an IP address")))?
    };
    let sockets = (0..workers.max(1))
        .map(|_| {
            let socket = open_socket(plan, true)?;
            socket.bind(&address.into())?;
            socket.listen(plan.backlog as i32)?;
            Ok(socket.into())
        })
        .collect::<io::Result<Vec<std::net::TcpListener>>>()
        .map_err(fail)?;
    Ok(Listener { sockets })
}

fn open_socket(plan: &VirtualPlan, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(plan.listen),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if plan.listen.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl VirtualServer {
    /// The pool for a client asking for `server_name`.
    pub fn route(&self, server_name: Option<&str>) -> &Arc<Pool> {
        self.sni_routes
            .iter()
            .find(|(route, _)| {
                route.pattern == "*" || server_name.is_some_and(|name| route.matches(name))
            })
            .map_or(&self.pool, |(_, pool)| pool)
    }

    /// The per-client limits of its plan.
    pub fn client_guards(&self) -> ClientGuards {
        ClientGuards {
            connections: self.plan.client_connection_limit,
            rate: self.plan.client_rate_limit,
        }
    }

    /// The pool named `name`: the virtual's own, or an SNI route's.
    pub fn pool_named(&self, name: &str) -> Option<&Arc<Pool>> {
        std::iter::once(&self.pool)
            .chain(self.sni_routes.iter().map(|(_, pool)| pool))
            .find(|pool| pool.name() == name)
    }

    /// Where source-address persistence sends `client` in `pool`, if the
    /// virtual persists by source address: see [`SourceAffinity::choice`].
    pub fn persistence_choice(&self, pool: &Pool, client: IpAddr) -> (Option<usize>, Choice) {
        match &self.source_affinity {
            Some(affinity) => affinity.choice(pool, client),
            None => (None, Choice::Algorithm),
        }
    }

    /// A connection's hold on its client's persistence record, if the
    /// virtual persists by source address.
    pub fn persistence_ticket(
        &self,
        client: SocketAddr,
        member: SocketAddr,
    ) -> Option<Box<Ticket>> {
        let affinity = self.source_affinity.as_ref()?;
        Some(Box::new(affinity.opened(client.ip(), member)))
    }

    /// Whether its connections may move to a successor process: both
    /// sides bare sockets (no HTTP, no TLS ended here). A connection also
    /// needs a member reached without re-encryption.
    pub fn movable(&self) -> bool {
        self.http.is_none() && self.terminator.is_none()
    }
}

/// Closes a client with a reset: it learns at once that it was refused.
pub(crate) fn reset(client: &TcpStream) {
    let _ = SockRef::from(client).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_use_freebind_and_report_bind_errors_with_a_hint() {
        let plan = crate::config::parse(
            "[pools.p]\nmembers = [ { address = \"127.0.0.11:1\" } ]\n[virtuals.v]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\n",
            "t",
        )
        .unwrap();
        let mut virtual_plan = plan.virtuals[0].clone();
        let listener = bind(&virtual_plan, 2).unwrap();
        let address = listener.local_addr().unwrap();
        let sockets = listener.into_sockets();
        assert_eq!(sockets.len(), 2);
        for socket in &sockets {
            assert!(SockRef::from(socket).freebind_v4().unwrap());
            assert!(SockRef::from(socket).reuse_port().unwrap());
            assert_eq!(socket.local_addr().unwrap(), address);
        }
        // SO_REUSEPORT does not let a second vipgate share the address.
        virtual_plan.listen = address;
        let error = bind(&virtual_plan, 2).unwrap_err().to_string();
        assert!(
            error.starts_with("virtuals.v: cannot listen on 127.0.0.100:"),
            "{error}"
        );
        assert!(
            error.contains("another process, or another virtual, already listens there"),
            "{error}"
        );
    }
}
