//! Virtual servers: what one virtual is while it serves (its plan, pool,
//! SNAT, TLS and HTTP state, counters), its listening socket, and each
//! client connection from admission to the log line (`connection`):
//! plain TCP and TLS are pumped here, HTTP virtuals are handed to
//! [`crate::http`].

mod connection;

pub(crate) use connection::spawn;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{SniRoute, VirtualPlan};
use crate::dial::Dialer;
use crate::http::HttpVirtual;
use crate::pool::Pool;
use crate::stats::VirtualStats;
use crate::tls::Terminator;

/// A virtual server as the data path sees it: its plan, its pool and its
/// counters.
#[derive(Debug)]
pub struct VirtualServer {
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

/// Opens the listening socket of a virtual.
///
/// IP_FREEBIND lets a standby instance of a keepalived/VRRP pair listen on a
/// VIP it does not hold yet.
pub fn bind(plan: &VirtualPlan) -> Result<TcpListener, BindError> {
    let open = || -> io::Result<TcpListener> {
        let socket = Socket::new(
            Domain::for_address(plan.listen),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if plan.listen.is_ipv4() {
            socket.set_freebind_v4(true)?;
        } else {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&plan.listen.into())?;
        socket.listen(plan.backlog as i32)?;
        TcpListener::from_std(socket.into())
    };
    open().map_err(|error| BindError {
        virtual_name: plan.name.clone(),
        address: plan.listen,
        error,
    })
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
        let listener = bind(&virtual_plan).unwrap();
        assert!(SockRef::from(&listener).freebind_v4().unwrap());
        virtual_plan.listen = listener.local_addr().unwrap();
        let error = bind(&virtual_plan).unwrap_err().to_string();
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
