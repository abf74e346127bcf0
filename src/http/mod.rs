//! HTTP virtuals (`mode = "http"`): requests are read with hyper, routed
//! one by one (with session persistence by URL parameter or inserted
//! cookie) and forwarded over kept-alive member connections.
//!
//! Clients speak HTTP/1.1 or HTTP/2 (chosen by ALPN over TLS, by the
//! connection's first bytes otherwise: HTTP/2 in clear text is by prior
//! knowledge), served by hyper; members always get HTTP/1.1 over
//! kept-alive connections, spoken by vipgate itself.
//!
//! - [`persistence`]: the pure parsing and sealing the routing relies on;
//! - `client_io`: the client leg with its keep-alive, header and idle
//!   timeouts (and the 408);
//! - `request_body`: the client's body on its way to the member (its
//!   errors blamed on the client); `response_body`: the answer on its way
//!   back, which ends the request when dropped;
//! - `forward`: one request, from its persistence claim to the response;
//! - `members`: the per-member queues of idle connections;
//! - `wire`: HTTP/1.1 toward members (heads, framing, chunked coding);
//! - `headers`: hop-by-hop removal and `X-Forwarded-*`;
//! - `tunnel`: what an upgraded connection (WebSocket) becomes.

mod client_io;
mod forward;
mod headers;
mod members;
pub mod persistence;
mod request_body;
mod response_body;
mod tunnel;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub use members::{IDLE_PER_MEMBER, MEMBER_IDLE_TIMEOUT};

use crate::config::{HttpPlan, Persistence, VirtualPlan};
use crate::dial::Dialer;
use crate::logging::Address;
use crate::pool::Pool;
use crate::stats::{HttpEvent, VirtualStats};
use crate::stop_signal::{Shutdown, StopSignal};
use crate::streams::Front;
use crate::sync::lock;
use client_io::{ClientIo, Phase, Protocol, Sniffed, Timeouts};
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
    /// `request_headers`, ready to insert.
    request_headers: Vec<(HeaderName, HeaderValue)>,
    /// `response_headers`, ready to insert.
    response_headers: Vec<(HeaderName, HeaderValue)>,
    members: MemberConnections,
    /// Set for source-address persistence.
    pub source_affinity: Option<crate::source_persistence::SourceAffinity>,
}

/// Why an HTTP virtual could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
}

impl HttpVirtual {
    /// Sets up the HTTP side of virtual `virtual_plan` in front of `pool`,
    /// reading the shared secret if its persistence needs one. Each of
    /// `workers` threads keeps its own idle member connections.
    pub fn load(
        plan: &HttpPlan,
        virtual_plan: &VirtualPlan,
        pool: Arc<Pool>,
        dialer: Dialer,
        stats: Arc<VirtualStats>,
        workers: usize,
        source_affinity: Option<crate::source_persistence::SourceAffinity>,
    ) -> Result<HttpVirtual, HttpError> {
        let seal = match &plan.persistence {
            Persistence::Cookie { secret_file, .. } => {
                Some(CookieSeal::new(&crate::secret::read(secret_file)?))
            }
            Persistence::None | Persistence::UrlParam { .. } => None,
        };
        Ok(HttpVirtual {
            request_headers: header_fields(&plan.request_headers),
            response_headers: header_fields(&plan.response_headers),
            plan: plan.clone(),
            name: virtual_plan.name.clone(),
            idle_timeout: virtual_plan.idle_timeout,
            members: MemberConnections::new(workers, pool.members().len()),
            pool,
            dialer,
            stats,
            seal,
            source_affinity,
        })
    }
}

/// Configured header fields as hyper's types. The configuration checked
/// each, so none is dropped here.
fn header_fields(fields: &[(String, String)]) -> Vec<(HeaderName, HeaderValue)> {
    fields
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}

/// One client connection of an HTTP virtual, as its requests see it.
struct Connection {
    http: Arc<HttpVirtual>,
    peer: SocketAddr,
    /// The client's address as `X-Forwarded-For` ends with.
    forwarded_for: HeaderValue,
    /// The client came over TLS: X-Forwarded-Proto and Secure cookies.
    tls: bool,
    phase: Arc<Phase>,
    /// Set when a request was answered with 101: the tunnel this
    /// connection becomes once hyper lets go of it.
    tunnel: Mutex<Option<tunnel::Tunnel>>,
}

/// Serves the requests of one client connection until it closes, is idle
/// too long, or the server drains (`shutdown.draining`: finish the request
/// in flight, then close) or closes (`shutdown.closing`: at once).
pub(crate) async fn serve(
    client: Front,
    peer: SocketAddr,
    http: Arc<HttpVirtual>,
    shutdown: Shutdown,
) {
    let mut client = client;
    let tls = client.is_tls();
    // Over TLS, ALPN has usually decided; otherwise the first bytes tell
    // (the HTTP/2 preface, or a request line).
    let (protocol, sniffed) = match client.alpn() {
        Some(b"h2") => (Protocol::Http2, Sniffed::default()),
        Some(_) => (Protocol::Http1, Sniffed::default()),
        None => {
            let sniffing = client_io::sniff(&mut client, http.plan.keepalive_timeout);
            tokio::select! {
                sniffed = sniffing => match sniffed {
                    Some(sniffed) => sniffed,
                    None => return,
                },
                () = StopSignal::new(shutdown.closing.clone()) => return,
                () = StopSignal::new(shutdown.draining.clone()) => return,
            }
        }
    };
    let phase = Arc::new(Phase::default());
    if protocol == Protocol::Http2 {
        phase.multiplexed();
    }
    let timeouts = Timeouts {
        header: http.plan.header_timeout,
        keepalive: http.plan.keepalive_timeout,
        idle: http.idle_timeout,
    };
    let io = TokioIo::new(ClientIo::new(
        client,
        sniffed,
        Arc::clone(&phase),
        timeouts,
        Arc::clone(&http.stats),
    ));
    let max_header_size = http.plan.max_header_size;
    let max_concurrent_streams = http.plan.max_concurrent_streams;
    let connection = Arc::new(Connection {
        http,
        peer,
        forwarded_for: headers::client_address_value(peer.ip()),
        tls,
        phase,
        tunnel: Mutex::new(None),
    });
    let service = {
        let connection = Arc::clone(&connection);
        service_fn(move |request| forward::handle(Arc::clone(&connection), request))
    };
    let result = match protocol {
        Protocol::Http1 => {
            let served = http1::Builder::new()
                .keep_alive(true)
                .max_header_size(max_header_size)
                // Bounds what a client trickling an endless head makes us
                // hold.
                .max_buf_size(max_header_size.max(64 * 1024))
                // Ours: see client_io.
                .header_read_timeout(None)
                .serve_connection(io, service)
                .with_upgrades();
            until_closed(served, |c| c.graceful_shutdown(), &shutdown).await
        }
        Protocol::Http2 => {
            let served = http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(max_concurrent_streams)
                .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX))
                // A client resetting streams as fast as it opens them (the
                // "rapid reset" attack) is cut off instead of keeping the
                // members busy.
                .max_pending_accept_reset_streams(MAX_PENDING_RESET_STREAMS)
                .serve_connection(io, service);
            until_closed(served, |c| c.graceful_shutdown(), &shutdown).await
        }
    };
    let Some(result) = result else {
        return;
    };
    if let Err(error) = result {
        connection_error(&connection, &error);
    }
    let tunnel = lock(&connection.tunnel).take();
    if let Some(tunnel) = tunnel {
        tunnel.run(&connection, &shutdown.closing).await;
    }
}

/// Drives a served connection to its end; on `shutdown.draining`, asks it
/// to finish what is in flight and stop (`finish`); on `shutdown.closing`,
/// drops it at once (`None`).
async fn until_closed<F: Future<Output = hyper::Result<()>>>(
    served: F,
    finish: impl FnOnce(Pin<&mut F>),
    shutdown: &Shutdown,
) -> Option<hyper::Result<()>> {
    let mut served = pin!(served);
    // Polled on every wake of the connection: watches, not
    // `token.cancelled()` (see stop_signal).
    let mut closing = pin!(StopSignal::new(shutdown.closing.clone()));
    tokio::select! {
        result = served.as_mut() => Some(result),
        () = StopSignal::new(shutdown.draining.clone()) => {
            finish(served.as_mut());
            tokio::select! {
                result = served.as_mut() => Some(result),
                () = closing.as_mut() => None,
            }
        }
        () = closing.as_mut() => None,
    }
}

/// Streams a client may reset before vipgate has answered them, at once,
/// before the connection is closed as abusive.
const MAX_PENDING_RESET_STREAMS: usize = 20;

/// How a client connection ended with an error. hyper answers a request
/// it cannot parse itself (400, or 431 for a head over `max_header_size`)
/// and then ends the connection with that error: those are the client's
/// mistakes, counted and logged like vipgate's other answers.
fn connection_error(connection: &Connection, error: &hyper::Error) {
    let http = &connection.http;
    match error.is_parse().then_some(error) {
        Some(parse) => {
            let (event, status) = if parse.is_parse_too_large() {
                (HttpEvent::HeaderTooLarge, 431)
            } else {
                (HttpEvent::BadRequest, 400)
            };
            http.stats.http.count(event);
            tracing::info!(target: "vipgate::request", virtual_server = %http.name, client = %Address(connection.peer), status, error = %parse, "request refused");
        }
        None => {
            tracing::debug!(target: "vipgate::connection", virtual_server = %http.name, client = %Address(connection.peer), %error, "HTTP connection ended with an error");
        }
    }
}
