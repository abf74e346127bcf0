//! The validated configuration: what vipgate will actually do, with every
//! default filled in and every reference resolved. Nothing here is optional
//! and nothing can be wrong; the rest of the program takes a [`Plan`] and
//! never looks at the TOML again.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::admin::Admin;
use super::http::HttpPlan;
use super::monitors::{MonitorPlan, MonitorRule, NodePlan};
use super::snat::{ProxyProtocol, Snat, SnatPoolPlan};
use super::tls::{Reencrypt, Tls};

/// Default `idle_timeout`: 300 s, as F5's default tcp profile.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `connect_timeout`: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `settings.drain_timeout`: 30 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `settings.upgrade_drain_timeout`: an hour, a long call and then some.
pub const DEFAULT_UPGRADE_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `tcp_keepalive.idle`: 60 s of silence before the first probe.
pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Default `tcp_keepalive.interval`: 10 s between probes.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default `tcp_keepalive.probes`: 6 unanswered probes close the connection.
pub const DEFAULT_KEEPALIVE_PROBES: u32 = 6;
/// Linux caps TCP_KEEPCNT at 127.
pub const MAX_KEEPALIVE_PROBES: i64 = 127;
/// Default listen backlog: 4096 pending connections.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Default `settings.persistence_records`.
pub const DEFAULT_PERSISTENCE_RECORDS: usize = 100_000;
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
    /// Which CPU each worker runs on. Default: `"spread"` (see
    /// [`super::settings::CpuAffinity`]).
    pub cpu_affinity: super::settings::CpuAffinity,
    /// Where the operator's member decisions (enable, disable, force
    /// offline) are kept across restarts. Default: none (they last until
    /// vipgate stops).
    pub state_file: Option<std::path::PathBuf>,
    /// After a binary upgrade, how long the old process may keep the
    /// connections it still serves before it closes them and exits.
    /// Default 1 h.
    pub upgrade_drain_timeout: Duration,
    /// Most source-address persistence records kept, for every virtual
    /// together; the least recently used is dropped to make room. Read
    /// when vipgate starts (a reload keeps the table as it is). Default
    /// 100,000 (about 12 MB).
    pub persistence_records: usize,
    /// On SIGTERM, how long vipgate goes on accepting while `/ready` says
    /// it is leaving, so that a router (BGP) or a load balancer in front
    /// sends new clients elsewhere before this node refuses them. Default
    /// none.
    pub withdraw_delay: Option<Duration>,
    /// During a shutdown's drain, close the open TCP connections at an
    /// even pace over 80% of `drain_timeout`, idle ones first, each with a
    /// FIN while nothing is in flight, instead of waiting for them and
    /// closing the rest at once. Default false.
    pub paced_drain: bool,
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
    /// Keep the members' shares even by moving connections. `None`
    /// (default): connections stay where they are.
    pub rebalance: Option<super::balance::Rebalance>,
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
    /// Name of a pool that exists in [`Plan::pools`]; `None` only for an
    /// HTTP virtual that answers every request with a redirect.
    pub pool: Option<String>,
    /// A connection with no byte moving either way for this long is closed.
    /// Default 300 s.
    pub idle_timeout: Duration,
    /// How long to wait for a member to accept before trying the next one.
    /// Default 5 s.
    pub connect_timeout: Duration,
    pub connection_limit: ConnectionLimit,
    /// Most connections open at once from one client address (an IPv6
    /// client: its /64). Default unlimited.
    pub client_connection_limit: ConnectionLimit,
    /// Most new connections a second from one client address, with a
    /// second of burst. Default unlimited.
    pub client_rate_limit: RateLimit,
    /// Close a connection (while quiet, paced per pool) once it is this
    /// old, give or take its jitter: each connection's own limit is
    /// between 90% and 100% of it. `None` (default): no limit.
    pub max_connection_lifetime: Option<Duration>,
    /// Log a line for every connection still open this often (bytes so
    /// far). `None` (default): only when it starts and ends.
    pub log_interval: Option<Duration>,
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
    /// Send a client back to the member it used before (F5's
    /// `source_addr` persistence). `None` (default): each connection is
    /// balanced on its own.
    pub source_persistence: Option<super::persistence::SourcePersistence>,
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
    Http(Box<HttpPlan>),
}

impl Plan {
    /// Connections a virtual's SNAT pool can carry at once: addresses x
    /// members x ports. `None` when it has no SNAT pool.
    pub fn snat_capacity(&self, virtual_server: &VirtualPlan) -> Option<u64> {
        let Snat::Pool(name) = &virtual_server.snat else {
            return None;
        };
        let snat = &self.snat_pools[name];
        let members = self.pool_of(virtual_server).map_or(0, |p| p.members.len()) as u64;
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

/// A member's administrative state. Stored in an atomic as its `u8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
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
        self.pool_of(virtual_server)
            .into_iter()
            .chain(routed.iter().map(|r| &self.pools[&r.pool]))
    }

    /// The pool a virtual points at (validation guarantees it exists);
    /// `None` for a redirect virtual.
    pub fn pool_of(&self, virtual_server: &VirtualPlan) -> Option<&PoolPlan> {
        virtual_server
            .pool
            .as_ref()
            .and_then(|name| self.pools.get(name))
    }
}

/// `algorithm = "..."` in a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Each new connection goes to the next eligible member in list order.
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin: member `ratio`s set the shares, and the
    /// turns are interleaved (5:1 gives A A B A A A, not A A A A A B).
    Ratio,
    /// The eligible member with the fewest open connections per unit of
    /// `ratio`. With long-lived connections this is what evens a pool out
    /// again after a member fails and recovers.
    LeastConnections,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::Ratio => "ratio",
            Algorithm::LeastConnections => "least-connections",
        })
    }
}
