//! Source address translation: which local address and port a connection
//! to a member comes from, so that the member's replies return through
//! vipgate.
//!
//! - `none`: the kernel chooses.
//! - `automap`: the local address facing the member (found once per member
//!   from the routing table), with the kernel's port choice
//!   (IP_BIND_ADDRESS_NO_PORT, so a port is only unique per destination);
//!   connections are counted per (address, member).
//! - a SNAT pool: explicit (address, port) binding from the pool's port
//!   range. Ports are accounted per (SNAT address, member), as on F5: the
//!   same port may serve many members at once, which is why a pool of N
//!   addresses toward M members holds N x M x ports connections. Each new
//!   connection takes the address with the most free ports toward its
//!   member.

mod ports;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

pub use ports::PortSet;
use tokio::net::TcpSocket;

use crate::config::SnatPoolPlan;
use crate::throttle::Throttle;

/// A virtual's source translation, ready for the data path.
#[derive(Debug, Clone)]
pub enum SourceNat {
    None,
    Automap(Arc<Automap>),
    Pool(Arc<SnatPool>),
}

/// No SNAT address has a free port toward the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

impl SourceNat {
    /// A source for one connection to `member`.
    pub fn lease(&self, member: SocketAddr) -> Result<SourceLease, Exhausted> {
        match self {
            SourceNat::None => Ok(SourceLease::Kernel),
            SourceNat::Automap(automap) => Ok(automap.lease(member)),
            SourceNat::Pool(pool) => pool.lease(member),
        }
    }

    /// The lease of a connection a predecessor process opened from
    /// `source` to `member` (binary upgrade): the very port it holds,
    /// accounted again, so no other connection is given it. A source
    /// outside this translation's addresses or ports (the configuration
    /// changed) is the kernel's.
    pub fn adopt(&self, source: SocketAddr, member: SocketAddr) -> SourceLease {
        match self {
            SourceNat::None => SourceLease::Kernel,
            SourceNat::Automap(automap) => automap.lease(member),
            SourceNat::Pool(pool) => pool.adopt(source, member),
        }
    }
}

/// The source of one connection; gives its port back when dropped.
#[derive(Debug)]
pub enum SourceLease {
    Kernel,
    Automap {
        address: IpAddr,
        connections: Arc<AtomicUsize>,
    },
    Port {
        address: IpAddr,
        port: u16,
        offset: u32,
        ports: Arc<PortSet>,
    },
}

impl SourceLease {
    /// Binds `socket` to this source. With SO_REUSEADDR: the same port is
    /// used toward several members at once, and a port whose last
    /// connection is in TIME_WAIT can be bound again (the connect then
    /// fails if the old connection still holds the very same destination,
    /// and the caller tries another port).
    pub fn bind(&self, socket: &TcpSocket) -> io::Result<()> {
        match self {
            SourceLease::Kernel => Ok(()),
            SourceLease::Automap { address, .. } => {
                socket.set_reuseaddr(true)?;
                bind_address_no_port(socket)?;
                socket.bind(SocketAddr::new(*address, 0))
            }
            SourceLease::Port { address, port, .. } => {
                socket.set_reuseaddr(true)?;
                socket.bind(SocketAddr::new(*address, *port))
            }
        }
    }

    /// Whether another port could help after `error` (the port is busy or
    /// its old connection to this member is not over yet).
    pub fn worth_another_port(&self, error: &io::Error) -> bool {
        matches!(self, SourceLease::Port { .. })
            && matches!(
                error.raw_os_error(),
                Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
            )
    }
}

impl Drop for SourceLease {
    fn drop(&mut self) {
        match self {
            SourceLease::Kernel => {}
            SourceLease::Automap { connections, .. } => {
                connections.fetch_sub(1, Ordering::Relaxed);
            }
            SourceLease::Port { offset, ports, .. } => ports.release(*offset),
        }
    }
}

/// Lets the kernel pick the port at connect time, when it knows the
/// destination, instead of at bind time: a port then only needs to be
/// unique per destination, not per source address.
fn bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let enable: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a c_int option value of
    // the size we pass.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The local address the routing table uses toward `member`.
pub fn facing_address(member: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match member {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A UDP connect only consults the routing table; nothing is sent.
    let probe = UdpSocket::bind(any)?;
    probe.connect(member)?;
    Ok(probe.local_addr()?.ip())
}

/// `snat = "automap"`: per member, the address facing it.
#[derive(Debug, Default)]
pub struct Automap {
    toward: HashMap<SocketAddr, (IpAddr, Arc<AtomicUsize>)>,
}

impl Automap {
    /// Looks up the facing address of each member once. A member with no
    /// route gets the kernel's choice at connect time (and the connect
    /// will say what is wrong).
    pub fn build(members: impl IntoIterator<Item = SocketAddr>) -> Automap {
        let mut toward = HashMap::new();
        for member in members {
            match facing_address(member) {
                Ok(address) => {
                    toward.insert(member, (address, Arc::new(AtomicUsize::new(0))));
                }
                Err(error) => {
                    tracing::warn!(%member, %error, "automap: no local address faces this member")
                }
            }
        }
        Automap { toward }
    }

    fn lease(&self, member: SocketAddr) -> SourceLease {
        match self.toward.get(&member) {
            Some((address, connections)) => {
                connections.fetch_add(1, Ordering::Relaxed);
                SourceLease::Automap {
                    address: *address,
                    connections: connections.clone(),
                }
            }
            None => SourceLease::Kernel,
        }
    }

    /// (address, member, connections open) for each member.
    pub fn usage(&self) -> impl Iterator<Item = (IpAddr, SocketAddr, usize)> + '_ {
        self.toward
            .iter()
            .map(|(member, (address, open))| (*address, *member, open.load(Ordering::Relaxed)))
    }
}

/// A `[snat_pools.NAME]` at run time.
#[derive(Debug)]
pub struct SnatPool {
    name: String,
    first_port: u16,
    ports: u32,
    addresses: Vec<SnatAddress>,
    /// Rotates the first address looked at, so addresses with equally many
    /// free ports take turns.
    next: AtomicUsize,
    exhausted_log: Throttle,
}

/// One address of a SNAT pool, with its ports toward each member.
#[derive(Debug)]
pub struct SnatAddress {
    pub address: IpAddr,
    toward: HashMap<SocketAddr, Arc<PortSet>>,
    exhausted: AtomicU64,
}

impl SnatAddress {
    /// Ports in use toward each member.
    pub fn usage(&self) -> impl Iterator<Item = (SocketAddr, &PortSet)> {
        self.toward
            .iter()
            .map(|(member, ports)| (*member, ports.as_ref()))
    }

    /// Connections that found no free port on this address toward their
    /// member.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }
}

impl SnatPool {
    /// The pool for `plan`, with port sets toward `members`. Port sets that
    /// `previous` had for the same (address, member) carry over, so open
    /// connections keep their ports accounted across a reload.
    pub fn build(
        plan: &SnatPoolPlan,
        members: &[SocketAddr],
        previous: Option<&SnatPool>,
    ) -> SnatPool {
        let ports = u32::from(plan.last_port - plan.first_port) + 1;
        let addresses = plan
            .addresses
            .iter()
            .map(|&address| {
                let before = previous
                    .filter(|p| p.first_port == plan.first_port && p.ports == ports)
                    .and_then(|p| p.addresses.iter().find(|a| a.address == address));
                let toward = members
                    .iter()
                    .filter(|member| member.is_ipv4() == address.is_ipv4())
                    .map(|&member| {
                        let set = before
                            .and_then(|b| b.toward.get(&member).cloned())
                            .unwrap_or_else(|| Arc::new(PortSet::new(ports)));
                        (member, set)
                    })
                    .collect();
                SnatAddress {
                    address,
                    toward,
                    exhausted: AtomicU64::new(before.map_or(0, |b| b.exhausted())),
                }
            })
            .collect();
        SnatPool {
            name: plan.name.clone(),
            first_port: plan.first_port,
            ports,
            addresses,
            next: AtomicUsize::new(0),
            exhausted_log: Throttle::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addresses(&self) -> &[SnatAddress] {
        &self.addresses
    }

    /// The lease of `source` toward `member`, as [`SourceNat::adopt`].
    fn adopt(&self, source: SocketAddr, member: SocketAddr) -> SourceLease {
        let offset = u32::from(source.port().wrapping_sub(self.first_port));
        let ports = self
            .addresses
            .iter()
            .find(|address| address.address == source.ip())
            .and_then(|address| address.toward.get(&member))
            .filter(|_| source.port() >= self.first_port && offset < self.ports);
        match ports {
            Some(ports) if ports.take_exact(offset) => SourceLease::Port {
                address: source.ip(),
                port: source.port(),
                offset,
                ports: ports.clone(),
            },
            _ => SourceLease::Kernel,
        }
    }

    /// A port on the address with the most free ports toward `member`.
    fn lease(&self, member: SocketAddr) -> Result<SourceLease, Exhausted> {
        // Normally the first pick has a port; the loop only matters when
        // other connections take the last ports between look and take.
        let count = self.addresses.len();
        for _ in 0..count {
            let first = self.next.fetch_add(1, Ordering::Relaxed);
            let mut best: Option<(IpAddr, &Arc<PortSet>)> = None;
            for step in 0..count {
                let candidate = &self.addresses[(first + step) % count];
                let Some(ports) = candidate.toward.get(&member) else {
                    continue;
                };
                if ports.free() > best.map_or(0, |(_, b)| b.free()) {
                    best = Some((candidate.address, ports));
                }
            }
            let Some((address, ports)) = best else {
                break;
            };
            if let Some(offset) = ports.take() {
                return Ok(SourceLease::Port {
                    address,
                    port: self.first_port + offset as u16,
                    offset,
                    ports: ports.clone(),
                });
            }
        }
        for address in &self.addresses {
            address.exhausted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(suppressed) = self.exhausted_log.allow() {
            tracing::warn!(
                snat_pool = %self.name,
                %member,
                suppressed,
                "SNAT ports exhausted toward this member on every address; add addresses to the pool"
            );
        }
        Err(Exhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(addresses: &[&str], first: u16, last: u16) -> SnatPoolPlan {
        SnatPoolPlan {
            name: "s".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            first_port: first,
            last_port: last,
        }
    }

    fn port_of(lease: &SourceLease) -> (IpAddr, u16) {
        match lease {
            SourceLease::Port { address, port, .. } => (*address, *port),
            other => panic!("not a port lease: {other:?}"),
        }
    }

    #[test]
    fn leases_spread_over_addresses_and_exhaust_per_member() {
        let members: Vec<SocketAddr> = vec![
            "127.0.0.11:9070".parse().unwrap(),
            "127.0.0.12:9070".parse().unwrap(),
        ];
        let pool = SnatPool::build(
            &plan(&["127.0.0.21", "127.0.0.22"], 40000, 40003),
            &members,
            None,
        );
        let leases: Vec<SourceLease> = (0..8).map(|_| pool.lease(members[0]).unwrap()).collect();
        let on_first = leases
            .iter()
            .filter(|l| port_of(l).0.to_string() == "127.0.0.21")
            .count();
        assert_eq!(on_first, 4, "the address with most free ports is taken");
        assert!(leases
            .iter()
            .all(|l| (40000..=40003).contains(&port_of(l).1)));
        assert_eq!(pool.lease(members[0]).unwrap_err(), Exhausted);
        assert_eq!(pool.addresses()[0].exhausted(), 1);
        // The same ports toward another member are still free.
        assert!(pool.lease(members[1]).is_ok());
        drop(leases);
        assert!(pool.lease(members[0]).is_ok(), "ports come back on drop");
    }

    #[test]
    fn rebuilt_pool_keeps_the_ports_in_use() {
        let members: Vec<SocketAddr> = vec!["127.0.0.11:9070".parse().unwrap()];
        let first = SnatPool::build(&plan(&["127.0.0.21"], 40000, 40001), &members, None);
        let _held = first.lease(members[0]).unwrap();
        let second = SnatPool::build(&plan(&["127.0.0.21"], 40000, 40001), &members, Some(&first));
        let _also_held = second.lease(members[0]).unwrap();
        assert!(second.lease(members[0]).is_err(), "one port was still held");
    }

    #[test]
    fn facing_address_of_loopback() {
        let address = facing_address("127.0.0.11:9".parse().unwrap()).unwrap();
        assert!(address.is_loopback());
    }
}
