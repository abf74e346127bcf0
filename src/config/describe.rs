//! `vipgate check`'s description of a plan: each virtual with its pool and
//! members, the admin endpoint, monitors and SNAT pools, with every default
//! and resolved path shown.

use std::fmt;
use std::time::Duration;

use super::admin::{Admin, AdminAuth};
use super::monitors::{Probe, ProbePort};
use super::plan::{ConnectionLimit, Mode, Plan, PoolPlan, RateLimit, VirtualPlan};
use super::snat::{ProxyProtocol, Snat};
use super::tls::{ClientAuth, SessionTickets, Terminate, Tls};

/// A duration as `check` prints it (`5m`, `1s 500ms`).
fn show(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

impl fmt::Display for Plan {
    /// The resolved plan as `vipgate check` prints it: virtuals, their pool,
    /// its members, then the admin endpoint, SNAT pools and monitors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "settings: drain_timeout {}, {} worker threads, cpu_affinity {}",
            show(self.settings.drain_timeout),
            self.settings.worker_threads,
            self.settings.cpu_affinity
        )?;
        if let Some(path) = &self.settings.state_file {
            writeln!(f, "member decisions kept in {}", path.display())?;
        }
        for virtual_server in &self.virtuals {
            self.describe_virtual(f, virtual_server)?;
            if let Some(pool) = self.pool_of(virtual_server) {
                self.describe_pool(f, pool)?;
            }
        }
        self.describe_services(f)
    }
}

impl Plan {
    /// The virtual's own lines: listener, timeouts, SNAT, TLS, mode.
    fn describe_virtual(
        &self,
        f: &mut fmt::Formatter<'_>,
        virtual_server: &VirtualPlan,
    ) -> fmt::Result {
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
        let guards = (
            virtual_server.client_connection_limit,
            virtual_server.client_rate_limit,
        );
        if guards != (ConnectionLimit::Unlimited, RateLimit::Unlimited) {
            writeln!(
                f,
                "  per client: client_connection_limit {}, client_rate_limit {}",
                guards.0, guards.1
            )?;
        }
        write!(f, "  snat {}", virtual_server.snat)?;
        if let (Some(capacity), Snat::Pool(name)) =
            (self.snat_capacity(virtual_server), &virtual_server.snat)
        {
            let snat = &self.snat_pools[name];
            write!(
                f,
                ": {} addresses x {} members x {} ports = {capacity} connections",
                snat.addresses.len(),
                self.pool_of(virtual_server).map_or(0, |p| p.members.len()),
                snat.ports()
            )?;
        }
        match &virtual_server.tls {
            Tls::Off => {}
            Tls::Passthrough {
                sni_routes,
                handshake_timeout,
            } => {
                write!(f, ", tls passthrough")?;
                if !sni_routes.is_empty() {
                    let routes: Vec<String> = sni_routes
                        .iter()
                        .map(|r| format!("{} -> {}", r.pattern, r.pool))
                        .collect();
                    write!(
                        f,
                        " (sni routes {}; hello within {})",
                        routes.join(", "),
                        show(*handshake_timeout)
                    )?;
                }
            }
            Tls::Terminate(terminate) => describe_termination(f, terminate)?,
        }
        if virtual_server.proxy_protocol != ProxyProtocol::Off {
            write!(f, ", proxy_protocol {:?}", virtual_server.proxy_protocol)?;
        }
        if let Mode::Http(http) = &virtual_server.mode {
            write!(f, ", mode http ({})", http)?;
        }
        if let Some(source) = &virtual_server.source_persistence {
            write!(f, ", {source}")?;
        }
        writeln!(f)
    }

    /// A virtual's pool and its members, with their monitors.
    fn describe_pool(&self, f: &mut fmt::Formatter<'_>, pool: &PoolPlan) -> fmt::Result {
        writeln!(f, "  -> pool {} ({})", pool.name, pool.algorithm)?;
        writeln!(
            f,
            "     action_on_service_down {}, slow_ramp {}, min_active_members {}",
            pool.action_on_service_down,
            show(pool.slow_ramp),
            pool.min_active_members
        )?;
        for member in &pool.members {
            writeln!(
                f,
                "     -> member {} (connection_limit {}, ratio {}, priority {}, {}, connect_rate_limit {})",
                member.address,
                member.connection_limit,
                member.ratio,
                member.priority,
                member.admin,
                member.connect_rate_limit,
            )?;
            if let Some(route) = &member.route {
                writeln!(f, "        route: {route}")?;
            }
            writeln!(f, "        monitor: {}", member.monitor)?;
            if let Some(node) = self.nodes.get(&member.address.ip()) {
                writeln!(f, "        node monitor: {}", node.monitor)?;
            }
        }
        Ok(())
    }

    /// What the virtuals share: the admin endpoint, SNAT pools, monitors.
    fn describe_services(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Admin::On {
            listen,
            auth,
            peers,
        } = &self.admin
        {
            writeln!(
                f,
                "admin on {listen} (/metrics, /status; changes {})",
                match auth {
                    AdminAuth::Open => "open to anyone who reaches it".to_string(),
                    AdminAuth::Token(path) => format!("need the token in {}", path.display()),
                }
            )?;
            if !peers.is_empty() {
                let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
                writeln!(f, "member decisions shared with {}", peers.join(", "))?;
            }
        }
        for pool in self.snat_pools.values() {
            let addresses: Vec<String> = pool.addresses.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "snat pool {}: {}, ports {}-{}",
                pool.name,
                addresses.join(", "),
                pool.first_port,
                pool.last_port
            )?;
        }
        for monitor in self.monitors.values() {
            let port = match (&monitor.probe, monitor.port) {
                (Probe::Icmp, _) => "the address".to_string(),
                (_, ProbePort::Member) => "the member's port".to_string(),
                (_, ProbePort::Fixed(port)) => format!("port {port}"),
            };
            writeln!(
                f,
                "monitor {}: {} on {port}, every {}, down after {} without success",
                monitor.name,
                monitor.probe,
                show(monitor.interval),
                show(monitor.timeout)
            )?;
        }
        Ok(())
    }
}

/// `, tls terminate (certificates ...; client certificates ...; session
/// tickets ...)`.
fn describe_termination(f: &mut fmt::Formatter<'_>, terminate: &Terminate) -> fmt::Result {
    let mode = if terminate.plain_allowed {
        "auto"
    } else {
        "terminate"
    };
    let certs: Vec<String> = terminate
        .certs
        .iter()
        .map(|c| format!("{} + {}", c.cert.display(), c.key.display()))
        .collect();
    let clients = match &terminate.client_auth {
        ClientAuth::None => "not asked".to_string(),
        ClientAuth::Optional(ca) => format!("checked against {} if sent", ca.display()),
        ClientAuth::Required(ca) => format!("required, checked against {}", ca.display()),
    };
    let tickets = match &terminate.tickets {
        SessionTickets::Off => "off".to_string(),
        SessionTickets::Local => "in-memory keys (this instance only)".to_string(),
        SessionTickets::Shared(secret) => format!("sealed with {}", secret.display()),
    };
    write!(
        f,
        ", tls {mode} (certificates {}; client certificates {clients}; session tickets {tickets})",
        certs.join(", ")
    )
}
