//! The validated configuration: what vipgate will actually do, with every
//! default filled in and every reference resolved. Nothing here is optional
//! and nothing can be wrong; the rest of the program takes a [`Plan`] and
//! never looks at the TOML again.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::pool::Algorithm;

pub use super::admin::{Admin, AdminAuth};
pub use super::http::{CookieLifetime, HttpPlan, Persistence};

/// Default `idle_timeout`: 300 s, as F5's default tcp profile.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `connect_timeout`: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `settings.drain_timeout`: 30 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default listen backlog: 4096 pending connections.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Default monitor `interval`: 5 s, as on F5.
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(5);
/// Default monitor `timeout`: 16 s, as on F5 (three intervals and a second).
pub const DEFAULT_MONITOR_TIMEOUT: Duration = Duration::from_secs(16);

/// A whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub settings: Settings,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolPlan>,
    /// Virtual servers, sorted by name.
    pub virtuals: Vec<VirtualPlan>,
    /// Health monitors by name.
    pub monitors: BTreeMap<String, MonitorPlan>,
    /// Node-level monitors: every member on the address depends on them.
    pub nodes: BTreeMap<IpAddr, NodePlan>,
    /// SNAT pools by name.
    pub snat_pools: BTreeMap<String, SnatPoolPlan>,
    /// The metrics, status and admin endpoint.
    pub admin: Admin,
    /// Things that are allowed but probably not meant (an unused pool, a
    /// listener on port 0). `vipgate check` prints them; `run` logs them.
    pub warnings: Vec<String>,
}

/// `[settings]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// On SIGTERM/SIGINT, how long open connections may finish before they
    /// are closed. Default 30 s.
    pub drain_timeout: Duration,
    /// Threads that carry connections. Default: one per CPU core.
    pub worker_threads: usize,
}

/// A pool: the members a virtual spreads connections over.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPlan {
    pub name: String,
    pub algorithm: Algorithm,
    /// In configuration order; never empty.
    pub members: Vec<MemberPlan>,
    /// What happens to open connections of a member that goes down.
    pub action_on_service_down: ServiceDownAction,
    /// A member that comes up gets a share growing linearly from nothing to
    /// its full share over this time. Zero: at once.
    pub slow_ramp: Duration,
    /// Priority groups: only the highest-priority members are used while at
    /// least this many of them are usable; otherwise the next group joins.
    /// 0 (the default) uses every member regardless of priority.
    pub min_active_members: usize,
    /// TLS toward the members.
    pub tls: Reencrypt,
}

/// Whether connections to a pool's members are wrapped in TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reencrypt {
    Off,
    On {
        /// The name checked against the member's certificate (and sent as
        /// SNI). Empty: the member's IP address.
        server_name: String,
        verify: MemberVerification,
    },
}

/// How a member's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberVerification {
    /// Against this CA (PEM file).
    Ca(std::path::PathBuf),
    /// Not at all (`verify = false`): warned about at start.
    Disabled,
}

/// A pool member: one address and port of a backend server.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberPlan {
    /// The member's identity: its runtime state is keyed by this address.
    pub address: SocketAddr,
    pub connection_limit: ConnectionLimit,
    /// Monitors that decide its health: its own `monitor`, or the pool's.
    pub monitor: MonitorRule,
    /// Share relative to the other members under `ratio` and
    /// `least-connections`. Default 1.
    pub ratio: u32,
    /// Priority group; higher is preferred. Default 0.
    pub priority: i64,
    /// Administrative state at start.
    pub admin: AdminState,
    pub connect_rate_limit: RateLimit,
    /// The jvmRoute-style name HTTP persistence knows this member by
    /// (`GWE_Node1` in `jsessionid=8F3A9C.GWE_Node1`). `None`: no route.
    pub route: Option<String>,
}

/// A virtual server: one listening address in front of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualPlan {
    pub name: String,
    pub listen: SocketAddr,
    /// Name of a pool that exists in [`Plan::pools`].
    pub pool: String,
    /// A connection with no byte moving either way for this long is closed.
    /// Default 300 s.
    pub idle_timeout: Duration,
    /// How long to wait for a member to accept before trying the next one.
    /// Default 5 s.
    pub connect_timeout: Duration,
    pub connection_limit: ConnectionLimit,
    /// Listen backlog (pending connections the kernel queues). Default 4096.
    pub backlog: u32,
    /// Move bytes with splice(2) on Linux instead of through a user-space
    /// buffer. Default true.
    pub zero_copy: bool,
    pub tcp_keepalive: Keepalive,
    /// Which source address connections to members use.
    pub snat: Snat,
    /// How many clients the operator expects at most; `check` warns when
    /// that is over 80% of the SNAT capacity. 0: not said.
    pub expected_clients: u64,
    /// Send a PROXY protocol header to members, so they learn the client's
    /// real address behind SNAT.
    pub proxy_protocol: ProxyProtocol,
    pub tls: Tls,
    pub mode: Mode,
}

/// `mode = "tcp" | "http"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VirtualMode {
    /// Bytes are carried as they are (the default).
    #[default]
    Tcp,
    /// Requests are read, routed one by one and forwarded.
    Http,
}

/// What a virtual carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A TCP stream, untouched (F5's standard virtual with a tcp profile).
    Tcp,
    /// HTTP/1.1 requests (F5's http profile), with their own settings.
    Http(HttpPlan),
}

/// Default `tls.handshake_timeout`: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `tls.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Bytes go through untouched; with `sni_routes`, the ClientHello's
    /// server name picks the pool.
    Passthrough,
    /// vipgate ends TLS and sends plain bytes to the members.
    Terminate,
    /// Per connection: TLS is terminated, anything else goes through as
    /// plain TCP (one port for both).
    Auto,
}

/// What a virtual does with TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP (or TLS vipgate does not look at).
    Off,
    Passthrough {
        /// Most time a client may take to send its ClientHello when it
        /// must be read for routing.
        handshake_timeout: Duration,
        /// In order: exact names first, then `*.domain` suffixes (longest
        /// first). Empty: no routing, the virtual's pool for everyone.
        sni_routes: Vec<SniRoute>,
    },
    /// `terminate` or, with `plain_allowed`, `auto`.
    Terminate(Terminate),
}

/// How vipgate ends TLS for a virtual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminate {
    /// `auto`: a connection that does not start with a TLS record is
    /// proxied as plain TCP.
    pub plain_allowed: bool,
    /// Most time a client may take to complete its handshake.
    pub handshake_timeout: std::time::Duration,
    /// Certificate chains and keys; the first is the default when no
    /// certificate matches the client's server name.
    pub certs: Vec<CertFiles>,
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, in order of preference. Empty: none.
    pub alpn: Vec<String>,
    /// Session tickets (TLS 1.2 and 1.3 resumption).
    pub tickets: SessionTickets,
}

/// How a terminating virtual issues session tickets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionTickets {
    /// None: every client makes a full handshake with another node.
    Off,
    /// Sealed with keys derived from the pair's shared secret (this file),
    /// rotated on a schedule every node computes alike, so a client
    /// resumes on either node of a pair.
    Shared(std::path::PathBuf),
}

/// PEM files of one certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Client certificates (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// Verified against this CA when presented; clients without one are
    /// let in.
    Optional(std::path::PathBuf),
    /// Required, and verified against this CA.
    Required(std::path::PathBuf),
}

/// One `sni_routes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// Lower-case: `csp-a.example`, `*.example` (any name below it).
    pub pattern: String,
    pub pool: String,
}

impl SniRoute {
    /// Whether `name` (lower-case) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.pattern.strip_prefix("*.") {
            Some(domain) => {
                name.len() > domain.len() + 1
                    && name.ends_with(domain)
                    && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
            }
            None => self.pattern == name,
        }
    }
}

/// `snat = "none" | "automap" | "POOL"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snat {
    /// The kernel picks the source address and port. Default.
    None,
    /// The local address facing each member (F5 SNAT automap), with the
    /// kernel's port choice.
    Automap,
    /// The named `[snat_pools.NAME]`.
    Pool(String),
}

/// `[snat_pools.NAME]`: source addresses and the port range of each.
#[derive(Debug, Clone, PartialEq)]
pub struct SnatPoolPlan {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub first_port: u16,
    pub last_port: u16,
}

impl SnatPoolPlan {
    /// Ports per address toward one member.
    pub fn ports(&self) -> u64 {
        u64::from(self.last_port - self.first_port) + 1
    }
}

/// `proxy_protocol = "v1" | "v2"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

impl fmt::Display for Snat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Snat::None => f.write_str("none"),
            Snat::Automap => f.write_str("automap"),
            Snat::Pool(name) => write!(f, "pool {name}"),
        }
    }
}

impl Plan {
    /// Connections a virtual's SNAT pool can carry at once: addresses x
    /// members x ports. `None` when it has no SNAT pool.
    pub fn snat_capacity(&self, virtual_server: &VirtualPlan) -> Option<u64> {
        let Snat::Pool(name) = &virtual_server.snat else {
            return None;
        };
        let snat = &self.snat_pools[name];
        let members = self.pool_of(virtual_server).members.len() as u64;
        Some(snat.addresses.len() as u64 * members * snat.ports())
    }
}

/// A cap on concurrent connections. `0` in the file means unlimited, as on
/// F5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionLimit {
    Unlimited,
    At(u32),
}

impl ConnectionLimit {
    /// Whether `active` connections leave room for one more.
    pub fn admits(self, active: usize) -> bool {
        match self {
            ConnectionLimit::Unlimited => true,
            ConnectionLimit::At(limit) => active < limit as usize,
        }
    }
}

impl fmt::Display for ConnectionLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionLimit::Unlimited => f.write_str("unlimited"),
            ConnectionLimit::At(limit) => write!(f, "{limit}"),
        }
    }
}

/// `[monitors.NAME]`: how to probe a member.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorPlan {
    pub name: String,
    pub probe: Probe,
    pub port: ProbePort,
    /// Time between probes. Default 5 s.
    pub interval: Duration,
    /// A member is down when no probe succeeded for this long; also the most
    /// one probe may take. Default 16 s.
    pub timeout: Duration,
}

/// `type = "tcp" | "http" | "icmp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorType {
    Tcp,
    Http,
    Icmp,
}

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Connect; then, if `send` is not empty, send it; then, if `expect` is
    /// not empty, read until it appears.
    Tcp { send: String, expect: String },
    /// `GET path` over HTTP/1.0 (over TLS when `tls` is on); up when the
    /// status matches `expect_status` and, if `expect` is not empty, the
    /// response (head and body, first 4 KiB) contains it.
    Http {
        path: String,
        /// The `Host` header; empty: the probed address.
        host: String,
        expect_status: StatusMatch,
        expect: String,
        tls: Reencrypt,
    },
    /// An ICMP echo request to the address; up when the reply comes back.
    Icmp,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Tcp { send, expect } => {
                f.write_str("tcp connect")?;
                if !send.is_empty() {
                    write!(f, ", send {send:?}")?;
                }
                if !expect.is_empty() {
                    write!(f, ", expect {expect:?}")?;
                }
                Ok(())
            }
            Probe::Http {
                path,
                host,
                expect_status,
                expect,
                tls,
            } => {
                let scheme = match tls {
                    Reencrypt::Off => "http",
                    Reencrypt::On { .. } => "https",
                };
                write!(f, "{scheme} GET {path}")?;
                if !host.is_empty() {
                    write!(f, " (Host: {host})")?;
                }
                write!(f, ", expect status {expect_status}")?;
                if !expect.is_empty() {
                    write!(f, " and {expect:?}")?;
                }
                Ok(())
            }
            Probe::Icmp => f.write_str("icmp echo"),
        }
    }
}

/// Which HTTP statuses an http monitor accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// Exactly this status (`expect_status = 200`).
    Exactly(u16),
    /// Any status of this class (`expect_status = "2xx"`: 2).
    Class(u8),
    /// Any HTTP answer at all (`expect_status = "any"`, F5's http monitor
    /// without a receive string).
    Any,
}

impl StatusMatch {
    /// Whether `status` is accepted.
    pub fn accepts(self, status: u16) -> bool {
        match self {
            StatusMatch::Exactly(expected) => status == expected,
            StatusMatch::Class(class) => status / 100 == u16::from(class),
            StatusMatch::Any => true,
        }
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Exactly(status) => write!(f, "{status}"),
            StatusMatch::Class(class) => write!(f, "{class}xx"),
            StatusMatch::Any => f.write_str("any"),
        }
    }
}

/// Which port a monitor probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbePort {
    /// The member's own port.
    Member,
    /// This port on the member's address (F5 `dest *:9070`).
    Fixed(u16),
}

/// Which monitors must pass for a member or node to be up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorRule {
    /// No monitor: always up.
    Always,
    /// Every one of these monitors (F5 `monitor all A and B`).
    All(Vec<String>),
    /// At least `min` of these (F5 `monitor min N of { A B C }`).
    AtLeast { min: usize, of: Vec<String> },
}

impl MonitorRule {
    pub fn monitors(&self) -> &[String] {
        match self {
            MonitorRule::Always => &[],
            MonitorRule::All(names) | MonitorRule::AtLeast { of: names, .. } => names,
        }
    }
}

impl fmt::Display for MonitorRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MonitorRule::Always => f.write_str("none (always up)"),
            MonitorRule::All(names) => write!(f, "all of {}", names.join(", ")),
            MonitorRule::AtLeast { min, of } => write!(f, "at least {min} of {}", of.join(", ")),
        }
    }
}

/// `[nodes."IP"]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    pub address: IpAddr,
    pub monitor: MonitorRule,
}

/// A member's administrative state. Stored in an atomic as its `u8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum AdminState {
    /// Takes new connections when healthy.
    #[default]
    Enabled = 0,
    /// No new connections, except HTTP requests whose persistence (cookie
    /// or URL parameter) names this member, as on F5; open ones stay.
    Disabled = 1,
    /// No new connections at all; open ones stay.
    ForcedOffline = 2,
}

impl AdminState {
    /// The state stored as `value` (what `self as u8` gave).
    pub fn from_u8(value: u8) -> AdminState {
        match value {
            1 => AdminState::Disabled,
            2 => AdminState::ForcedOffline,
            _ => AdminState::Enabled,
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdminState::Enabled => "enabled",
            AdminState::Disabled => "disabled",
            AdminState::ForcedOffline => "forced-offline",
        })
    }
}

/// `action_on_service_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceDownAction {
    /// Open connections stay until they end by themselves.
    #[default]
    None,
    /// Open connections are closed with a reset.
    Reset,
}

impl fmt::Display for ServiceDownAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceDownAction::None => "none",
            ServiceDownAction::Reset => "reset",
        })
    }
}

/// A cap on new connections per second to one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Unlimited,
    PerSecond(u32),
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimit::Unlimited => f.write_str("unlimited"),
            RateLimit::PerSecond(rate) => write!(f, "{rate}/s"),
        }
    }
}

/// TCP keepalive probes on both legs of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    /// The kernel default (no probes unless the system enables them).
    Off,
    On {
        /// Silence before the first probe. Default 60 s.
        idle: Duration,
        /// Between probes. Default 10 s.
        interval: Duration,
        /// Unanswered probes before the connection is declared dead. Default 6.
        probes: u32,
    },
}

impl fmt::Display for Keepalive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keepalive::Off => f.write_str("off"),
            Keepalive::On {
                idle,
                interval,
                probes,
            } => write!(
                f,
                "idle {}, interval {}, {probes} probes",
                humantime::format_duration(*idle),
                humantime::format_duration(*interval)
            ),
        }
    }
}

impl Plan {
    /// Every pool a virtual can send connections to: its own and those of
    /// its SNI routes.
    pub fn pools_of<'a>(
        &'a self,
        virtual_server: &'a VirtualPlan,
    ) -> impl Iterator<Item = &'a PoolPlan> {
        let routed = match &virtual_server.tls {
            Tls::Passthrough { sni_routes, .. } => sni_routes.as_slice(),
            Tls::Off | Tls::Terminate(_) => &[],
        };
        std::iter::once(self.pool_of(virtual_server))
            .chain(routed.iter().map(|r| &self.pools[&r.pool]))
    }

    /// The pool a virtual points at. Validation guarantees it exists.
    pub fn pool_of(&self, virtual_server: &VirtualPlan) -> &PoolPlan {
        &self.pools[&virtual_server.pool]
    }
}
