//! The validated configuration: what vipgate will actually do, with every
//! default filled in and every reference resolved. Nothing here is optional
//! and nothing can be wrong; the rest of the program takes a [`Plan`] and
//! never looks at the TOML again.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::pool::Algorithm;

/// Default `idle_timeout`: 300 s, as F5's default tcp profile.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `connect_timeout`: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `settings.drain_timeout`: 30 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default listen backlog: 4096 pending connections.
pub const DEFAULT_BACKLOG: u32 = 4096;

/// A whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub settings: Settings,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolPlan>,
    /// Virtual servers, sorted by name.
    pub virtuals: Vec<VirtualPlan>,
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
}

/// A pool member: one address and port of a backend server.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberPlan {
    /// The member's identity: its runtime state is keyed by this address.
    pub address: SocketAddr,
    pub connection_limit: ConnectionLimit,
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
    /// The pool a virtual points at. Validation guarantees it exists.
    pub fn pool_of(&self, virtual_server: &VirtualPlan) -> &PoolPlan {
        &self.pools[&virtual_server.pool]
    }
}

impl fmt::Display for Plan {
    /// The resolved plan as `vipgate check` prints it: virtuals, their pool,
    /// its members.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        writeln!(
            f,
            "settings: drain_timeout {}, {} worker threads",
            show(self.settings.drain_timeout),
            self.settings.worker_threads
        )?;
        for virtual_server in &self.virtuals {
            let pool = self.pool_of(virtual_server);
            writeln!(
                f,
                "virtual {} listen {}",
                virtual_server.name, virtual_server.listen
            )?;
            writeln!(
                f,
                "  idle_timeout {}, connect_timeout {}, connection_limit {}, backlog {}, zero_copy {}, tcp_keepalive {}",
                show(virtual_server.idle_timeout),
                show(virtual_server.connect_timeout),
                virtual_server.connection_limit,
                virtual_server.backlog,
                virtual_server.zero_copy,
                virtual_server.tcp_keepalive,
            )?;
            writeln!(f, "  -> pool {} ({})", pool.name, pool.algorithm)?;
            for member in &pool.members {
                writeln!(
                    f,
                    "     -> member {} (connection_limit {})",
                    member.address, member.connection_limit
                )?;
            }
        }
        Ok(())
    }
}
