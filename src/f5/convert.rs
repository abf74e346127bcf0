//! From what the file says to what vipgate will do: each virtual that is a
//! TCP load balancer with a usable pool, the pools it uses with the members
//! that have an address and a port, and the monitors, nodes and SNAT pools
//! they need. Whatever cannot be carried over is left out with a note, so
//! the result is always a valid configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::model::{
    find, Certificate, MemberState, Model, RuleSpec, SnatChoice, Virtual, DEFAULT_SNAT,
};
use super::monitors::{Check, Converted};
use super::names::Names;
use super::profiles::{export_name, header_field, undefined_tls, Role, TlsSide};
use super::syntax::Position;
use super::words::{endpoint, excerpt, ip, name, Host, Port, MAX_SECONDS};

/// A monitor rule as vipgate writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RuleOut {
    pub min: Option<usize>,
    pub monitors: Vec<String>,
}

#[derive(Debug, Clone)]
pub(super) struct MemberOut {
    pub address: SocketAddr,
    /// Its own rule; `None` takes the pool's.
    pub monitor: Option<Option<RuleOut>>,
    pub ratio: Option<u64>,
    pub priority: Option<u64>,
    pub connection_limit: Option<u64>,
    pub rate_limit: Option<u64>,
    pub state: Option<MemberState>,
}

#[derive(Debug, Clone)]
pub(super) struct PoolOut {
    pub name: String,
    pub algorithm: Option<&'static str>,
    pub monitor: Option<RuleOut>,
    pub members: Vec<MemberOut>,
    pub min_active_members: Option<u64>,
    pub slow_ramp: Option<u64>,
    pub reset_on_down: bool,
    /// TLS toward the members: `(ca, server_name)`; no CA: not verified.
    pub tls: Option<(Option<String>, Option<String>)>,
}

#[derive(Debug, Clone)]
pub(super) struct VirtualOut {
    pub name: String,
    pub listen: SocketAddr,
    /// `None` for a redirect virtual.
    pub pool: Option<String>,
    /// A redirect virtual: the status it answers every request with.
    pub redirect: Option<u16>,
    pub snat: Option<String>,
    pub connection_limit: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub http: bool,
    /// The http profile's `header-insert`, as `(name, value)`.
    pub request_headers: Vec<(String, String)>,
    pub certificates: Vec<Certificate>,
    /// Cookie persistence: `(cookie name, max age)`.
    pub cookie: Option<(String, Option<u64>)>,
    /// Source-address persistence: `(timeout seconds, IPv4 prefix length)`.
    pub source_address: Option<(u64, u8)>,
}

/// Everything to write.
#[derive(Debug, Default)]
pub(super) struct Output {
    pub monitors: BTreeMap<String, Converted>,
    pub nodes: BTreeMap<IpAddr, RuleOut>,
    pub snat_pools: BTreeMap<String, Vec<IpAddr>>,
    pub pools: Vec<PoolOut>,
    pub virtuals: Vec<VirtualOut>,
}

/// An `indefinite` persistence timeout, written as a day (seconds).
const INDEFINITE_PERSISTENCE: u64 = 86_400;

/// The conversion in progress.
pub(super) struct Converter<'a> {
    model: &'a mut Model,
    output: Output,
    pool_names: Names,
    virtual_names: Names,
    monitor_names: Names,
    snat_names: Names,
    /// Monitors already converted: reference -> vipgate name or why not.
    monitors: BTreeMap<String, Result<String, String>>,
    /// Pools converted (by path), with their index in `output.pools`, or
    /// why they were left out.
    pools: BTreeMap<String, Result<usize, String>>,
    listens: BTreeMap<SocketAddr, String>,
}

impl<'a> Converter<'a> {
    pub(super) fn run(model: &'a mut Model) -> Output {
        let pool_names = Names::over(model.pools.keys());
        let virtual_names = Names::over(model.virtuals.keys());
        let monitor_names = Names::over(model.monitors.keys());
        let snat_names = Names::over(model.snat_pools.keys());
        let mut converter = Converter {
            model,
            output: Output::default(),
            pool_names,
            virtual_names,
            monitor_names,
            snat_names,
            monitors: BTreeMap::new(),
            pools: BTreeMap::new(),
            listens: BTreeMap::new(),
        };
        let virtuals: Vec<(String, Virtual)> = converter
            .model
            .virtuals
            .iter()
            .map(|(path, v)| (path.clone(), v.clone()))
            .collect();
        for (path, virtual_server) in virtuals {
            if let Err(reason) = converter.virtual_server(&path, &virtual_server) {
                converter.model.detail(
                    virtual_server.at,
                    format!(
                        "virtual {}: {reason}; left out",
                        converter.virtual_names.label(&path)
                    ),
                );
            }
        }
        let pools: Vec<(String, Position)> = converter
            .model
            .pools
            .iter()
            .filter(|(path, _)| !converter.pools.contains_key(*path))
            .map(|(path, pool)| (path.clone(), pool.at))
            .collect();
        for (_, at) in pools {
            converter.model.dropped(at, "pool not used by a converted virtual", "only pools behind a converted virtual are written (pools chosen by iRules or policies have no virtual to serve them)");
        }
        converter.nodes();
        converter.report_renames();
        converter.output
    }

    /// One line for each object named by its path rather than its name,
    /// where the object is written.
    fn report_renames(&mut self) {
        let model = &self.model;
        let kinds = [
            ("virtual", &self.virtual_names),
            ("pool", &self.pool_names),
            ("monitor", &self.monitor_names),
            ("SNAT pool", &self.snat_names),
        ];
        let mut lines = Vec::new();
        for (kind, names) in kinds {
            for (path, chosen) in &names.renamed {
                let at = match kind {
                    "virtual" => model.virtuals.get(path).map(|v| v.at),
                    "pool" => model.pools.get(path).map(|p| p.at),
                    "monitor" => model.monitors.get(path).map(|m| m.at),
                    _ => model.snat_pools.get(path).map(|(at, _)| *at),
                };
                lines.push((at.unwrap_or_default(), format!("{kind} {path} is named {chosen}: another {kind} in the file is also called {}", name(path))));
            }
        }
        for (at, line) in lines {
            self.model.detail(at, line);
        }
    }

    fn virtual_server(&mut self, path: &str, source: &Virtual) -> Result<(), String> {
        source.balances_tcp()?;
        let listen = source.listen_address()?;
        // HTTP_REQUEST fires only on a virtual with an http profile;
        // without one the BIG-IP sends every connection to the pool.
        let speaks_http = source
            .profiles
            .iter()
            .any(|(profile, _, _)| matches!(self.model.role(profile), Role::Http { .. }));
        let redirect = self
            .model
            .redirect_of(source)
            .filter(|_| speaks_http)
            .map(|(status, rule)| (status, rule.to_string()));
        let pool_word = match redirect {
            Some(_) => None,
            None => Some(source.pool_word()?),
        };
        self.undefined_profiles_are_known(source)?;
        // As vipgate's own check: a wildcard address takes its port on
        // every address of its family.
        let overlapping = self.listens.iter().find(|(other, _)| {
            other.port() == listen.port()
                && other.is_ipv4() == listen.is_ipv4()
                && (other.ip() == listen.ip()
                    || other.ip().is_unspecified()
                    || listen.ip().is_unspecified())
        });
        let in_route_domain = source
            .destination
            .as_ref()
            .is_some_and(|d| d.text.contains('%'));
        if let Some((other_listen, other)) = overlapping {
            let why = if in_route_domain {
                " (on the BIG-IP they may differ in route domain, which vipgate does not have)"
            } else {
                ""
            };
            return Err(format!(
                "{listen} overlaps {other_listen} of virtual {other}, converted first{why}"
            ));
        }
        if let Some(destination) = source.destination.as_ref().filter(|_| in_route_domain) {
            self.route_domain(destination.at);
        }
        let pool = pool_word.map(|word| self.pool(&word.text)).transpose()?;
        let vip_name = self.virtual_names.of(path);
        let mut out = VirtualOut {
            name: vip_name.clone(),
            listen,
            pool: pool.map(|pool| self.output.pools[pool].name.clone()),
            redirect: redirect.as_ref().map(|(status, _)| *status),
            snat: None,
            connection_limit: source.connection_limit.filter(|l| *l != 0),
            idle_timeout: None,
            http: false,
            request_headers: Vec::new(),
            certificates: Vec::new(),
            cookie: None,
            source_address: None,
        };
        let owner = format!("virtual {}", self.virtual_names.label(path));
        for (at, group, why) in &source.unsupported {
            self.model.dropped(*at, group.clone(), why.clone());
        }
        match (pool, &redirect) {
            (Some(pool), _) => {
                self.profiles(&owner, source, pool, &mut out);
                self.persistence(&owner, source, &mut out);
                self.not_carried_over(&owner, source, None);
                out.snat = self.snat(&owner, source, pool);
            }
            (None, Some((status, rule))) => {
                self.redirecting(&owner, source, *status, rule)?;
                out.http = true;
            }
            (None, None) => return Err("it has no pool".into()),
        }
        self.listens.insert(listen, name(path).to_string());
        self.output.virtuals.push(out);
        Ok(())
    }

    /// Reports what of `source` decides traffic on the BIG-IP and has no
    /// place here: iRules, LTM policies, a source address range.
    fn not_carried_over(&mut self, owner: &str, source: &Virtual, carried: Option<&str>) {
        for (rule, at) in source
            .rules
            .iter()
            .filter(|(r, _)| Some(r.as_str()) != carried)
        {
            self.model.detail(*at, format!("{owner}: iRule {} is not carried over; check what it does (it may choose pools, rewrite or redirect)", name(rule)));
        }
        for (policy, at) in &source.policies {
            self.model.detail(
                *at,
                format!(
                    "{owner}: LTM policy {} is not carried over; check what it does",
                    name(policy)
                ),
            );
        }
        if let Some((source_range, at)) = &source.source {
            if source_range != "0.0.0.0/0" && source_range != "::/0" {
                self.model.detail(*at, format!("{owner}: it accepts clients from {source_range} only on the BIG-IP; vipgate accepts any (limit clients with the host's firewall)"));
            }
        }
    }

    /// A virtual whose iRule `rule` redirects every request to HTTPS:
    /// what else it had is reported; one that ends TLS is left out (its
    /// certificates would have nowhere to go).
    fn redirecting(
        &mut self,
        owner: &str,
        source: &Virtual,
        status: u16,
        rule: &str,
    ) -> Result<(), String> {
        let ends_tls = source
            .profiles
            .iter()
            .any(|(profile, _, _)| matches!(self.model.role(profile), Role::ClientSsl(_)));
        if ends_tls {
            return Err(format!("its iRule {} redirects every request, over TLS it ends: convert the HTTPS virtual it leads to, and redirect from port 80", name(rule)));
        }
        let at = source
            .rules
            .iter()
            .find(|(r, _)| r == rule)
            .map_or(source.at, |(_, at)| *at);
        self.model.detail(at, format!("{owner}: iRule {} redirects every request to HTTPS; written as `redirect = {{ scheme = \"https\", status = {status} }}`, the same host and path", name(rule)));
        if let Some(pool) = &source.pool {
            self.model.detail(pool.at, format!("{owner}: its pool {} is not written: the iRule answers every request before a pool is chosen", name(&pool.text)));
        }
        for (persist, at) in &source.persist {
            self.model.detail(
                *at,
                format!(
                    "{owner}: persistence {} is not carried over: a redirect has no member",
                    name(persist)
                ),
            );
        }
        self.not_carried_over(owner, source, Some(rule));
        Ok(())
    }

    /// Converts the pool `reference` (once) and returns its index.
    fn pool(&mut self, reference: &str) -> Result<usize, String> {
        let Some((path, pool)) = find(&self.model.pools, reference) else {
            return Err(format!(
                "its pool {} is not defined in the file",
                name(reference)
            ));
        };
        let (path, pool) = (path.to_string(), pool.clone());
        if let Some(known) = self.pools.get(&path) {
            return known
                .clone()
                .map_err(|why| format!("its pool {} {why}", name(&path)));
        }
        let owner = format!("pool {}", self.pool_names.label(&path));
        let monitor = pool.monitor.as_ref().and_then(|rule| {
            let converted = self.rule(rule, &owner);
            if converted.is_none() {
                self.model.detail(
                    rule.at,
                    format!("{owner}: no monitor of its rule is left, so its members count as up"),
                );
            }
            converted
        });
        let mut members: Vec<MemberOut> = Vec::new();
        for member in &pool.members {
            if let Some(converted) = self.member(member, &owner, monitor.is_some(), &members) {
                members.push(converted);
            }
        }
        if members.is_empty() {
            let why = if pool.members.is_empty() {
                "has no members".to_string()
            } else {
                "has no member vipgate can connect to".to_string()
            };
            self.model.detail(
                pool.at,
                format!("{owner} {why}; left out, with every virtual that uses it"),
            );
            self.pools.insert(path, Err(why.clone()));
            return Err(format!("its pool {} {why}", name(reference)));
        }
        let algorithm = self.algorithm(&pool, &owner);
        let index = self.output.pools.len();
        self.output.pools.push(PoolOut {
            name: self.pool_names.of(&path),
            algorithm,
            monitor,
            members,
            min_active_members: pool
                .min_active_members
                .filter(|c| *c > 0)
                .map(|c| c.min(65_535)),
            slow_ramp: pool
                .slow_ramp
                .filter(|s| *s > 0)
                .map(|s| s.min(MAX_SECONDS)),
            reset_on_down: pool.reset_on_down,
            tls: None,
        });
        self.pools.insert(path, Ok(index));
        Ok(index)
    }

    /// One member of pool `owner`, or `None` (said in the report) when it
    /// has no address vipgate can connect to or repeats one in `taken`.
    fn member(
        &mut self,
        member: &super::model::Member,
        owner: &str,
        pool_has_monitor: bool,
        taken: &[MemberOut],
    ) -> Option<MemberOut> {
        let label = format!(
            "{owner}: member {}",
            member.written.trim_start_matches("/Common/")
        );
        let address = match self.member_address(member) {
            Ok(address) => address,
            Err(why) => {
                self.model
                    .detail(member.at, format!("{label} {why}; left out"));
                return None;
            }
        };
        if taken.iter().any(|m| m.address == address) {
            self.model.detail(
                member.at,
                format!("{label} is {address} again (route domains are dropped); left out"),
            );
            return None;
        }
        let own_monitor = member.monitor.as_ref().map(|rule| {
            let converted = self.rule(rule, &label);
            if converted.is_none() {
                let then = if pool_has_monitor {
                    "it takes the pool's rule"
                } else {
                    "it counts as up"
                };
                self.model.detail(
                    rule.at,
                    format!("{label}: no monitor of its own rule is left, so {then}"),
                );
            }
            converted
        });
        let ratio = member.ratio.filter(|r| *r != 1);
        if let Some(ratio) = ratio.filter(|r| !(1..=100).contains(r)) {
            self.model.detail(
                member.at,
                format!(
                    "{label} ratio {ratio} becomes {} (vipgate's ratios are 1 to 100)",
                    ratio.clamp(1, 100)
                ),
            );
        }
        Some(MemberOut {
            address,
            monitor: own_monitor,
            ratio: ratio.map(|r| r.clamp(1, 100)),
            priority: member.priority.filter(|p| *p != 0).map(|p| p.min(65_535)),
            connection_limit: member
                .connection_limit
                .filter(|l| *l != 0)
                .map(|l| l.min(u64::from(u32::MAX))),
            rate_limit: member
                .rate_limit
                .filter(|r| *r != 0)
                .map(|r| r.min(1_000_000)),
            state: member.state,
        })
    }

    /// The pool's load-balancing method; `None` (round-robin) also for one
    /// vipgate does not have, which the report names.
    fn algorithm(&mut self, pool: &super::model::Pool, owner: &str) -> Option<&'static str> {
        match &pool.algorithm {
            Some((Some(algorithm), _, _)) => Some(*algorithm),
            Some((None, written, at)) => {
                self.model.detail(
                    *at,
                    format!(
                        "{owner}: load balancing `{written}` is not available; round-robin is used"
                    ),
                );
                None
            }
            None => None,
        }
    }

    /// A member's address: its `address`, or the address in its name, or
    /// the address of the node it names.
    fn member_address(&mut self, member: &super::model::Member) -> Result<SocketAddr, String> {
        let route_domain = member.written.contains('%')
            || member.address.as_deref().is_some_and(|a| a.contains('%'));
        if route_domain {
            self.route_domain(member.at);
        }
        if let Some(fqdn) = &member.fqdn {
            return Err(format!("is an FQDN member ({fqdn}), and vipgate does not resolve host names: list the addresses instead"));
        }
        let written = endpoint(&member.written);
        let port = match written.port {
            Some(Ok(Port::Number(port))) => port,
            Some(Ok(Port::Any)) => {
                return Err("has no fixed port (port any), which vipgate cannot connect to".into())
            }
            Some(Err(text)) => {
                return Err(format!(
                    "has port `{text}`, which is not a number or a known service name"
                ))
            }
            None => return Err("has no port".into()),
        };
        if let Some(address) = member.address.as_deref().and_then(ip) {
            return Ok(SocketAddr::new(address, port));
        }
        match written.host {
            Host::Ip(address) => Ok(SocketAddr::new(address, port)),
            Host::Name(node) => match find(&self.model.nodes, &node) {
                Some((_, found)) => match (found.address, &found.fqdn) {
                    (Some(address), _) => Ok(SocketAddr::new(address, port)),
                    (None, Some(fqdn)) => Err(format!("is on FQDN node {node} ({fqdn}), and vipgate does not resolve host names: list the addresses instead")),
                    (None, None) => Err(format!("is on node {node}, which has no address")),
                },
                None => Err(format!("names `{node}`, which is neither an address nor a node in the file (vipgate does not resolve host names)")),
            },
        }
    }

    /// A rule with the monitors vipgate can run; `None` when none is left.
    fn rule(&mut self, rule: &RuleSpec, owner: &str) -> Option<RuleOut> {
        let mut kept = Vec::new();
        for (reference, at) in &rule.names {
            match self.monitor(reference, *at) {
                Ok(vip_name) => {
                    if !kept.contains(&vip_name) {
                        kept.push(vip_name);
                    }
                }
                Err(why) => self.model.detail(
                    *at,
                    format!(
                        "{owner}: monitor {} is left out of its rule: {why}",
                        name(reference)
                    ),
                ),
            }
        }
        if kept.is_empty() {
            return None;
        }
        let min = rule.min.map(|min| {
            if min > kept.len() {
                self.model.detail(
                    rule.at,
                    format!(
                        "{owner}: `min {min} of` becomes min {} of the {} monitors left",
                        kept.len(),
                        kept.len()
                    ),
                );
            }
            min.clamp(1, kept.len())
        });
        Some(RuleOut {
            min,
            monitors: kept,
        })
    }

    fn monitor(&mut self, reference: &str, at: Position) -> Result<String, String> {
        let key = match find(&self.model.monitors, reference) {
            Some((path, _)) => path.to_string(),
            None => name(reference).to_string(),
        };
        if let Some(known) = self.monitors.get(&key) {
            return known.clone();
        }
        let result = self.model.convert_monitor(&key, Some(at)).map(|converted| {
            let vip_name = self.monitor_names.of(&key);
            self.output.monitors.insert(vip_name.clone(), converted);
            vip_name
        });
        self.monitors.insert(key, result.clone());
        result
    }

    /// A virtual whose profile is neither defined in the file nor a
    /// BIG-IP built-in, and looks like TLS without saying which side, is
    /// left out: written without it, it would be plain text where the
    /// BIG-IP had TLS.
    fn undefined_profiles_are_known(&self, source: &Virtual) -> Result<(), String> {
        for (profile, _, context) in &source.profiles {
            if self.model.role(profile) == Role::Undefined
                && undefined_tls(profile, context.as_deref()) == Some(TlsSide::Unknown)
            {
                return Err(format!(
                    "its profile {profile} looks like TLS but is not defined in this file and no `context` says which side it is on; import together with the file that defines it (bigip.conf of /Common), so that no TLS becomes plain text"
                ));
            }
        }
        Ok(())
    }

    fn profiles(&mut self, owner: &str, source: &Virtual, pool: usize, out: &mut VirtualOut) {
        for (profile, at, context) in &source.profiles {
            let role = match self.model.role(profile) {
                Role::Undefined => self.undefined_profile(owner, profile, *at, context.as_deref()),
                role => role,
            };
            match role {
                Role::Undefined => {}
                Role::Tcp(idle) => {
                    let idle = out.idle_timeout.map_or(idle, |other| other.max(idle));
                    out.idle_timeout = Some(idle);
                    if idle == 86_400 {
                        self.model.detail(*at, format!("{owner}: profile {}'s indefinite idle timeout becomes 24 h (vipgate always times idle connections out)", name(profile)));
                    }
                }
                Role::Http { header_insert } => {
                    out.http = true;
                    if let Some(text) = header_insert {
                        match header_field(&text) {
                            Some(field) => out.request_headers.push(field),
                            None => self.model.detail(*at, format!("{owner}: http profile {}'s header-insert {text:?} is not a plain `Name: value` (iRule expressions are evaluated per request on F5, and framing fields are vipgate's own); not carried over", name(profile))),
                        }
                    }
                }
                Role::ClientSsl(certificates) if certificates.is_empty() => {
                    self.model.detail(
                        *at,
                        format!(
                            "{owner}: client-ssl profile {} names no certificate; TLS not written",
                            name(profile)
                        ),
                    );
                }
                Role::ClientSsl(certificates) => {
                    for certificate in certificates {
                        if let Some(chain) = &certificate.chain {
                            self.model.detail(*at, format!("{owner}: client-ssl profile {}'s chain {chain} is carried as `chain` beside {}: export it too (or append it to the certificate's file and remove `chain`)", name(profile), certificate.cert));
                        }
                        if certificate.encrypted {
                            self.model.detail(*at, format!("{owner}: client-ssl profile {}'s key {} is encrypted on the BIG-IP (a passphrase protects it); vipgate reads unencrypted keys: after exporting it, decrypt it with `openssl pkey -in {1} -out {1}` (it asks for the passphrase) and keep it readable by vipgate alone", name(profile), certificate.key));
                        }
                        if !out.certificates.contains(&certificate) {
                            out.certificates.push(certificate);
                        }
                    }
                }
                Role::ServerSsl {
                    ca,
                    mut server_name,
                } => {
                    if let Some(invalid) = server_name
                        .as_deref()
                        .filter(|n| rustls_pki_types::ServerName::try_from(*n).is_err())
                    {
                        self.model.detail(*at, format!("{owner}: server-ssl profile {}'s server-name {invalid:?} is not a DNS name; each member's address is checked instead", name(profile)));
                        server_name = None;
                    }
                    if ca.is_none() {
                        self.model.detail(*at, format!("{owner}: server-ssl profile {} does not verify the members (as on the BIG-IP: no `peer-cert-mode require` with a ca-file); written as verify = false", name(profile)));
                    }
                    let pool = &mut self.output.pools[pool];
                    if pool.tls.is_some() && pool.tls != Some((ca.clone(), server_name.clone())) {
                        self.model.detail(*at, format!("{owner}: pool {} is used with two server-ssl profiles; vipgate re-encrypts per pool, the first is kept", pool.name));
                    } else {
                        pool.tls = Some((ca, server_name));
                    }
                }
                Role::Cookie { .. } | Role::SourceAddress { .. } => {}
                Role::Other(kind) => {
                    let at = self.model.profile_at(profile).unwrap_or(*at);
                    self.model.detail(
                        at,
                        format!(
                            "{owner}: profile {} ({kind}) is not carried over",
                            name(profile)
                        ),
                    );
                }
            }
        }
        // vipgate's default is F5's 300 s; only a different one is written.
        // Zero means nothing on F5 either; a year is plenty.
        out.idle_timeout = out
            .idle_timeout
            .filter(|idle| *idle != 300 && *idle != 0)
            .map(|idle| idle.min(MAX_SECONDS));
    }

    /// An address written with a route domain (`10.1.1.1%10`): one grouped
    /// line says what became of it.
    fn route_domain(&mut self, at: Position) {
        self.model.dropped(at, "route domain (`%N` after an address)", "vipgate has no route domains: the address is used without it, in the host's one routing table; two virtuals that differ only in route domain cannot both be converted (the second is left out)");
    }

    /// What to make of a profile not defined in the file: TLS on the side
    /// its context (or name) says, with the files to export named, so that
    /// no TLS becomes plain text; anything else is reported.
    fn undefined_profile(
        &mut self,
        owner: &str,
        profile: &str,
        at: Position,
        context: Option<&str>,
    ) -> Role {
        let file = export_name(profile);
        match undefined_tls(profile, context) {
            Some(TlsSide::Client) => {
                self.model.detail(at, format!("{owner}: client-ssl profile {profile} is not defined in this file (it lives in /Common or another partition's file): TLS termination is written with the certificate and key it presents to fill in, f5-export/{file}.crt and f5-export/{file}.key (`tmsh list ltm profile client-ssl {profile} cert-key-chain` names them on the BIG-IP); `vipgate check` fails until they exist. Importing together with the file that defines it fills them in."));
                Role::ClientSsl(vec![Certificate {
                    cert: format!("f5-export/{file}.crt"),
                    key: format!("f5-export/{file}.key"),
                    ..Certificate::default()
                }])
            }
            Some(TlsSide::Server) => {
                self.model.detail(at, format!("{owner}: server-ssl profile {profile} is not defined in this file: re-encryption toward the members is written with a CA to fill in, f5-export/{file}-ca.pem (the CA that signed the members' certificates; write `verify = false` instead only if the BIG-IP did not verify them); `vipgate check` fails until it exists"));
                Role::ServerSsl {
                    ca: Some(format!("f5-export/{file}-ca.pem")),
                    server_name: None,
                }
            }
            // Refused before the virtual was converted.
            Some(TlsSide::Unknown) => Role::Undefined,
            None => {
                let server_side = if context == Some("serverside") {
                    "; if it is a server-ssl profile, the members must be spoken to in TLS: add `tls = { ca = ... }` to the pool"
                } else {
                    ""
                };
                self.model.detail(at, format!("{owner}: profile {profile} is neither defined in this file nor a BIG-IP built-in; not carried over (import together with the file that defines it to know what it does){server_side}"));
                Role::Undefined
            }
        }
    }

    fn persistence(&mut self, owner: &str, source: &Virtual, out: &mut VirtualOut) {
        for (persist, at) in &source.persist {
            match self.model.role(persist) {
                Role::Cookie {
                    name: cookie,
                    expiration,
                } if out.cookie.is_none() => {
                    out.http = true;
                    let cookie = cookie.unwrap_or_else(|| {
                        format!("BIGipServer{}", out.pool.as_deref().unwrap_or_default())
                    });
                    let cookie: String = cookie
                        .chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                                c
                            } else {
                                '_'
                            }
                        })
                        .collect();
                    out.cookie = Some((
                        cookie,
                        expiration.filter(|e| *e > 0).map(|e| e.min(MAX_SECONDS)),
                    ));
                    self.model.detail(*at, format!("{owner}: cookie persistence is carried over; vipgate seals its own cookie, so sessions the BIG-IP's cookie pinned are balanced once after the switch"));
                }
                Role::SourceAddress {
                    timeout,
                    mask,
                    across,
                } if out.cookie.is_none() && out.source_address.is_none() => {
                    let timeout = self.source_timeout(owner, timeout.as_deref(), *at);
                    let prefix = self.source_mask(owner, mask.as_deref(), *at);
                    out.source_address = Some((timeout, prefix));
                    self.model.detail(*at, format!("{owner}: source-address persistence is carried over (timeout {timeout} s, /{prefix}); a client without a record goes to the member its address hashes to, the same on both nodes of a pair"));
                    if !across.is_empty() {
                        self.model.detail(*at, format!("{owner}: persistence {} sets {}: vipgate keeps records per virtual, so a client's connections to other virtuals are balanced on their own", name(persist), across.join(", ")));
                    }
                }
                role => {
                    let kind = match role {
                        Role::Other(kind) => kind,
                        Role::Undefined => "not defined in this file".into(),
                        _ => "a second persistence".into(),
                    };
                    self.model.detail(*at, format!("{owner}: persistence {} ({kind}) is not carried over; clients are balanced per connection", name(persist)));
                }
            }
        }
        if let Some((fallback, at)) = &source.fallback_persistence {
            self.model.detail(
                *at,
                format!(
                    "{owner}: fallback persistence {} is not carried over: a vipgate virtual persists one way, and a client the first way does not place is balanced",
                    name(fallback)
                ),
            );
        }
    }

    /// A `source_addr` profile's `timeout` in seconds: F5's 180 when not
    /// set, a day for `indefinite` (reported).
    fn source_timeout(&mut self, owner: &str, timeout: Option<&str>, at: Position) -> u64 {
        match timeout {
            None => 180,
            Some("indefinite") => {
                self.model.detail(at, format!("{owner}: an indefinite persistence timeout is written as a day ({INDEFINITE_PERSISTENCE} s)"));
                INDEFINITE_PERSISTENCE
            }
            Some(seconds) => match seconds.parse::<u64>() {
                Ok(0) | Err(_) => {
                    self.model.detail(at, format!("{owner}: persistence timeout `{}` is not a number of seconds; F5's default 180 s is written", excerpt(seconds)));
                    180
                }
                Ok(seconds) => seconds.min(MAX_SECONDS),
            },
        }
    }

    /// A `source_addr` profile's `mask` as a prefix length: 32 when not
    /// set or not a contiguous IPv4 mask (reported).
    fn source_mask(&mut self, owner: &str, mask: Option<&str>, at: Position) -> u8 {
        let Some(mask) = mask else { return 32 };
        let prefix = mask.parse::<std::net::Ipv4Addr>().ok().and_then(|mask| {
            let bits = u32::from(mask);
            (bits.leading_ones() + bits.trailing_zeros() == 32).then(|| bits.leading_ones() as u8)
        });
        prefix.unwrap_or_else(|| {
            self.model.detail(at, format!("{owner}: persistence mask `{}` is not a contiguous IPv4 mask; each client address is its own record (/32)", excerpt(mask)));
            32
        })
    }

    fn snat(&mut self, owner: &str, source: &Virtual, pool: usize) -> Option<String> {
        let reference = match &source.snat {
            SnatChoice::None if self.model.snat_pools.contains_key(DEFAULT_SNAT) => {
                self.model.detail(source.at, format!("{owner}: the `snat map` default applies to its connections, as on the BIG-IP: written as snat = \"{DEFAULT_SNAT}\""));
                DEFAULT_SNAT.to_string()
            }
            SnatChoice::None => return None,
            SnatChoice::Automap => return Some("automap".into()),
            SnatChoice::Pool(reference) => reference.clone(),
        };
        let at = source.at;
        let Some((path, (_, words))) = find(&self.model.snat_pools, &reference) else {
            self.model.detail(
                at,
                format!(
                    "{owner}: SNAT pool {} is not defined in the file; no SNAT written",
                    name(&reference)
                ),
            );
            return None;
        };
        let (path, words) = (path.to_string(), words.clone());
        let mut addresses: Vec<IpAddr> = Vec::new();
        for word in &words {
            let translated = find(&self.model.snat_translations, &word.text)
                .and_then(|(_, address)| ip(address))
                .or_else(|| ip(name(&word.text)));
            match translated {
                Some(address) if !addresses.contains(&address) => addresses.push(address),
                Some(_) => {}
                None => self.model.detail(
                    word.at,
                    format!(
                        "snatpool {}: `{}` is not an address; left out",
                        name(&path),
                        word.text
                    ),
                ),
            }
        }
        let members = &self.output.pools[pool].members;
        let unfit = members
            .iter()
            .find(|m| addresses.iter().all(|a| a.is_ipv4() != m.address.is_ipv4()));
        if addresses.is_empty() || unfit.is_some() {
            let why = match unfit {
                Some(member) if !addresses.is_empty() => {
                    format!("has no address of the family of member {}", member.address)
                }
                _ => "has no address".into(),
            };
            self.model.detail(
                at,
                format!("{owner}: SNAT pool {} {why}; no SNAT written", name(&path)),
            );
            return None;
        }
        let vip_name = self.snat_names.of(&path);
        let vip_name = if vip_name == "automap" || vip_name == "none" {
            format!("{vip_name}_pool")
        } else {
            vip_name
        };
        self.output.snat_pools.insert(vip_name.clone(), addresses);
        Some(vip_name)
    }

    /// Node rules for the addresses of converted members: the node's own
    /// monitor, or the file's default node monitor. Node monitors need a
    /// fixed port or ICMP.
    fn nodes(&mut self) {
        let addresses: BTreeSet<IpAddr> = self
            .output
            .pools
            .iter()
            .flat_map(|pool| pool.members.iter().map(|m| m.address.ip()))
            .collect();
        let nodes: Vec<(IpAddr, Option<RuleSpec>, String)> = addresses
            .into_iter()
            .map(|address| {
                let node = self
                    .model
                    .nodes
                    .iter()
                    .find(|(_, node)| node.address == Some(address));
                let (rule, label) = match node {
                    Some((path, node)) => (node.monitor.clone(), format!("node {}", name(path))),
                    None => (None, format!("node {address}")),
                };
                (
                    address,
                    rule.or_else(|| self.model.default_node_monitor.clone()),
                    label,
                )
            })
            .collect();
        for (address, rule, label) in nodes {
            let Some(rule) = rule else { continue };
            let Some(mut out) = self.rule(&rule, &label) else {
                self.model.detail(rule.at, format!("{label}: no monitor of its rule is left, so it does not take its members down"));
                continue;
            };
            let portless: Vec<String> = out
                .monitors
                .iter()
                .filter(|m| {
                    let converted = &self.output.monitors[*m];
                    converted.port.is_none() && converted.check != Check::Icmp
                })
                .cloned()
                .collect();
            for monitor in &portless {
                self.model.detail(rule.at, format!("{label}: monitor {monitor} has no port of its own (destination *:*), which a node has not either; left out of its rule"));
            }
            out.monitors.retain(|m| !portless.contains(m));
            if out.monitors.is_empty() {
                continue;
            }
            out.min = out.min.map(|min| min.clamp(1, out.monitors.len()));
            self.output.nodes.insert(address, out);
        }
    }
}
