//! The one validation pass: walks the raw file, turns every value into its
//! typed form and records each problem (with TOML path, position and a hint)
//! instead of stopping at the first, so one `vipgate check` shows everything
//! to fix.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::monitors::MonitorRule;
use super::plan::{
    ConnectionLimit, Keepalive, MemberPlan, Plan, PoolPlan, RateLimit, Settings, VirtualPlan,
    DEFAULT_BACKLOG, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEPALIVE_IDLE, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_PROBES,
    DEFAULT_PERSISTENCE_RECORDS, DEFAULT_UPGRADE_DRAIN_TIMEOUT, MAX_KEEPALIVE_PROBES,
};
use super::raw::{
    RawConfig, RawDuration, RawKeepalive, RawMember, RawPool, RawSettings, RawVirtual,
};
use super::tls::{Reencrypt, Tls};
use super::{Location, Problem};

/// Turns a parsed file into a plan, or lists everything wrong with it.
pub(super) fn validate(raw: RawConfig, text: &str) -> Result<Plan, Vec<Problem>> {
    let mut check = Checker {
        text,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let settings = check.settings(&raw.settings);
    let monitors = check.monitors(&raw);
    let nodes = check.nodes(&raw);
    let snat_pools = check.snat_pools(&raw);
    let admin = check.admin(raw.admin.as_ref());
    let pools: BTreeMap<String, PoolPlan> = raw
        .pools
        .iter()
        .filter_map(|(name, pool)| Some((name.clone(), check.pool(name, pool, &raw)?)))
        .collect();
    let virtuals: Vec<VirtualPlan> = raw
        .virtuals
        .iter()
        .filter_map(|(name, virtual_server)| check.virtual_server(name, virtual_server, &raw))
        .collect();

    if raw.virtuals.is_empty() {
        check.report(
            "virtuals",
            None,
            "no virtual server is defined, so vipgate would serve nothing".into(),
            Some("add a [virtuals.NAME] table with `listen` and `pool`".into()),
        );
    }
    check.listen_conflicts(&virtuals, &raw);
    check.snat_fit(&virtuals, &pools, &snat_pools);
    check.persistence_fit(&virtuals, &pools, &raw);
    for name in raw.pools.keys() {
        if !virtuals.iter().any(|v| {
            v.pool.as_ref() == Some(name)
                || matches!(&v.tls, Tls::Passthrough { sni_routes, .. } if sni_routes.iter().any(|r| r.pool == *name))
        }) {
            check
                .warnings
                .push(format!("pools.{name}: no virtual server uses this pool"));
        }
    }

    if check.problems.is_empty() {
        Ok(Plan {
            settings,
            pools,
            virtuals,
            monitors,
            nodes,
            snat_pools,
            admin,
            warnings: check.warnings,
        })
    } else {
        Err(check.problems)
    }
}

pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<String>,
}

impl Checker<'_> {
    pub(super) fn report(
        &mut self,
        key: &str,
        span: Option<Range<usize>>,
        message: String,
        hint: Option<String>,
    ) {
        self.problems.push(Problem {
            key: key.to_string(),
            location: span.map(|span| Location::of_offset(self.text, span.start)),
            message,
            hint,
        });
    }

    fn settings(&mut self, raw: &RawSettings) -> Settings {
        let drain_timeout = self.duration(
            "settings.drain_timeout",
            raw.drain_timeout.as_ref(),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let worker_threads = match &raw.worker_threads {
            None => cores,
            Some(value) => self
                .integer_in("settings.worker_threads", value, 1, 1024, "a thread count")
                .unwrap_or(cores),
        };
        let cpu_affinity = self.cpu_affinity(raw.cpu_affinity.as_ref());
        let state_file = raw.state_file.as_ref().and_then(|path| {
            if path.get_ref().trim().is_empty() {
                self.report(
                    "settings.state_file",
                    Some(path.span()),
                    "the path is empty".into(),
                    Some("name a file vipgate may write, e.g. \"/var/lib/vipgate/state.json\", or remove the key".into()),
                );
                return None;
            }
            Some(std::path::PathBuf::from(path.get_ref()))
        });
        let upgrade_drain_timeout = self.duration(
            "settings.upgrade_drain_timeout",
            raw.upgrade_drain_timeout.as_ref(),
            DEFAULT_UPGRADE_DRAIN_TIMEOUT,
        );
        let persistence_records = match &raw.persistence_records {
            None => DEFAULT_PERSISTENCE_RECORDS,
            Some(value) => self
                .integer_in(
                    "settings.persistence_records",
                    value,
                    1,
                    10_000_000,
                    "a number of records",
                )
                .unwrap_or(DEFAULT_PERSISTENCE_RECORDS),
        };
        let withdraw_delay = raw
            .withdraw_delay
            .as_ref()
            .map(|value| self.duration("settings.withdraw_delay", Some(value), Duration::ZERO));
        Settings {
            withdraw_delay,
            paced_drain: raw.paced_drain.unwrap_or(false),
            persistence_records,
            drain_timeout,
            worker_threads,
            cpu_affinity,
            state_file,
            upgrade_drain_timeout,
        }
    }

    fn pool(&mut self, name: &str, raw: &Spanned<RawPool>, file: &RawConfig) -> Option<PoolPlan> {
        let key = format!("pools.{name}");
        self.name(&key, name, raw.span());
        let pool = raw.get_ref();
        let pool_monitor = match &pool.monitor {
            None => MonitorRule::Always,
            Some(rule) => self.rule(&format!("{key}.monitor"), rule, file),
        };
        let slow_ramp = match &pool.slow_ramp {
            None => Duration::ZERO,
            Some(value) => self.duration(&format!("{key}.slow_ramp"), Some(value), Duration::ZERO),
        };
        let min_active_members = self.integer_or(
            &format!("{key}.min_active_members"),
            pool.min_active_members.as_ref(),
            (0, 65535, "a member count"),
            0,
        );
        let Some(members) = pool.members.as_ref().filter(|m| !m.get_ref().is_empty()) else {
            self.report(
                &format!("{key}.members"),
                Some(pool.members.as_ref().map_or(raw.span(), |m| m.span())),
                "the pool has no members".into(),
                Some(
                    "list at least one, e.g. members = [ { address = \"10.0.0.1:9070\" } ]".into(),
                ),
            );
            return None;
        };
        let mut planned: Vec<MemberPlan> = Vec::with_capacity(members.get_ref().len());
        for (index, member) in members.get_ref().iter().enumerate() {
            let member_key = format!("{key}.members[{index}]");
            if let Some(member) = self.member(&member_key, member, &pool_monitor, &planned, file) {
                planned.push(member);
            }
        }
        Some(PoolPlan {
            name: name.to_string(),
            algorithm: pool.algorithm.unwrap_or_default(),
            members: planned,
            action_on_service_down: pool.action_on_service_down.unwrap_or_default(),
            slow_ramp,
            min_active_members,
            tls: match &pool.tls {
                None => Reencrypt::Off,
                Some(tls) => self.reencrypt(&format!("{key}.tls"), tls),
            },
            rebalance: pool
                .rebalance
                .as_ref()
                .map(|raw| self.rebalance(&format!("{key}.rebalance"), raw)),
        })
    }

    /// One member of a pool; `before` are the members already planned
    /// (addresses and routes must be unique in a pool).
    fn member(
        &mut self,
        key: &str,
        member: &Spanned<RawMember>,
        pool_monitor: &MonitorRule,
        before: &[MemberPlan],
        file: &RawConfig,
    ) -> Option<MemberPlan> {
        let raw_member = member.get_ref();
        let address = self.address(&format!("{key}.address"), &raw_member.address);
        let connection_limit = self.limit(
            &format!("{key}.connection_limit"),
            raw_member.connection_limit.as_ref(),
        );
        let monitor = match &raw_member.monitor {
            None => pool_monitor.clone(),
            Some(rule) => self.rule(&format!("{key}.monitor"), rule, file),
        };
        let ratio = self.integer_or(
            &format!("{key}.ratio"),
            raw_member.ratio.as_ref(),
            (1, 100, "a weight"),
            1,
        ) as u32;
        let priority = self.integer_or(
            &format!("{key}.priority"),
            raw_member.priority.as_ref(),
            (0, 65535, "a priority"),
            0,
        ) as i64;
        let connect_rate_limit = self.rate_limit(
            &format!("{key}.connect_rate_limit"),
            raw_member.connect_rate_limit.as_ref(),
        );
        let route = match &raw_member.route {
            None => None,
            Some(value) => {
                let route = self.route(&format!("{key}.route"), value);
                if let Some(first) = before
                    .iter()
                    .position(|m| m.route.is_some() && m.route == route)
                {
                    self.report(
                        &format!("{key}.route"),
                        Some(value.span()),
                        format!(
                            "route \"{}\" is also the route of members[{first}]",
                            value.get_ref()
                        ),
                        Some("give each member of a pool its own route".into()),
                    );
                }
                route
            }
        };
        let address = address?;
        if address.port() == 0 {
            self.report(
                &format!("{key}.address"),
                Some(raw_member.address.span()),
                format!("member {address} has port 0, which nothing can connect to"),
                Some("give the port the member listens on".into()),
            );
            return None;
        }
        if let Some(first) = before.iter().position(|m| m.address == address) {
            self.report(
                &format!("{key}.address"),
                Some(raw_member.address.span()),
                format!("member {address} is listed twice (also at members[{first}])"),
                Some("remove one of them; a member is identified by its address".into()),
            );
            return None;
        }
        Some(MemberPlan {
            address,
            connection_limit,
            monitor,
            ratio,
            priority,
            admin: raw_member.state.unwrap_or_default(),
            connect_rate_limit,
            route,
        })
    }

    fn virtual_server(
        &mut self,
        name: &str,
        raw_virtual: &Spanned<RawVirtual>,
        raw: &RawConfig,
    ) -> Option<VirtualPlan> {
        let key = format!("virtuals.{name}");
        self.name(&key, name, raw_virtual.span());
        let virtual_server = raw_virtual.get_ref();
        let listen = match &virtual_server.listen {
            Some(listen) => self.address(&format!("{key}.listen"), listen),
            None => {
                self.missing(
                    &key,
                    "listen",
                    raw_virtual.span(),
                    "listen = \"10.0.0.100:9070\"",
                );
                None
            }
        };
        let mut tls = match &virtual_server.tls {
            None => Some(Tls::Off),
            Some(tls) => self.tls(&format!("{key}.tls"), tls, raw),
        };
        // With SNI routes, a "*" route can stand for `pool`.
        let catch_all = match &tls {
            Some(Tls::Passthrough { sni_routes, .. }) => sni_routes
                .iter()
                .find(|r| r.pattern == "*")
                .map(|r| r.pool.clone()),
            _ => None,
        };
        let pool = match (&virtual_server.pool, catch_all) {
            (Some(pool), _) if virtual_server.redirect.is_some() => {
                self.report(
                    &format!("{key}.pool"),
                    Some(pool.span()),
                    "a redirect virtual answers every request itself and uses no pool".into(),
                    Some("remove `pool`, or remove `redirect` to forward requests".into()),
                );
                None
            }
            (Some(pool), _) => self
                .pool_reference(&format!("{key}.pool"), pool, raw)
                .map(Some),
            (None, Some(pool)) => Some(Some(pool)),
            (None, None) if virtual_server.redirect.is_some() => Some(None),
            (None, None) => {
                self.missing(&key, "pool", raw_virtual.span(), "pool = \"poolCSP01\"");
                None
            }
        };
        let idle_timeout = self.duration(
            &format!("{key}.idle_timeout"),
            virtual_server.idle_timeout.as_ref(),
            DEFAULT_IDLE_TIMEOUT,
        );
        let connect_timeout = self.duration(
            &format!("{key}.connect_timeout"),
            virtual_server.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let connection_limit = self.limit(
            &format!("{key}.connection_limit"),
            virtual_server.connection_limit.as_ref(),
        );
        let client_connection_limit = self.limit(
            &format!("{key}.client_connection_limit"),
            virtual_server.client_connection_limit.as_ref(),
        );
        let client_rate_limit = self.rate_limit(
            &format!("{key}.client_rate_limit"),
            virtual_server.client_rate_limit.as_ref(),
        );
        let max_connection_lifetime =
            virtual_server
                .max_connection_lifetime
                .as_ref()
                .map(|value| {
                    self.duration(
                        &format!("{key}.max_connection_lifetime"),
                        Some(value),
                        Duration::ZERO,
                    )
                });
        let log_interval = virtual_server.log_interval.as_ref().map(|value| {
            self.duration(&format!("{key}.log_interval"), Some(value), Duration::ZERO)
        });
        let backlog = match &virtual_server.backlog {
            None => Some(DEFAULT_BACKLOG),
            Some(value) => self
                .integer_in(&format!("{key}.backlog"), value, 1, 65535, "a queue length")
                .map(|n| n as u32),
        };
        let tcp_keepalive = match &virtual_server.tcp_keepalive {
            None => Some(Keepalive::Off),
            Some(raw) => self.keepalive(&format!("{key}.tcp_keepalive"), raw.get_ref()),
        };
        if let Some(listen) = listen {
            if listen.port() == 0 {
                self.warnings.push(format!(
                    "{key}.listen: port 0 lets the operating system pick the port"
                ));
            }
        }
        let snat = self.snat_choice(&key, virtual_server.snat.as_ref(), raw);
        let expected_clients = match &virtual_server.expected_clients {
            None => Some(0),
            Some(value) => self
                .integer_in(
                    &format!("{key}.expected_clients"),
                    value,
                    0,
                    i64::MAX,
                    "a client count",
                )
                .map(|n| n as u64),
        };
        let mode = self.mode(&key, raw_virtual, tls.as_mut(), raw);
        let source_persistence = self.source_persistence(&key, virtual_server.persistence.as_ref());
        if let (Some(_), Some(persistence)) =
            (&virtual_server.redirect, &virtual_server.persistence)
        {
            self.report(
                &format!("{key}.persistence"),
                Some(persistence.span()),
                "a redirect virtual sends every request away; there is no member to persist to"
                    .into(),
                Some(
                    "remove `persistence` (the HTTPS virtual the redirect leads to persists)"
                        .into(),
                ),
            );
        }
        if matches!(mode, Some(super::Mode::Http(_))) {
            for (name, given) in [
                (
                    "max_connection_lifetime",
                    &virtual_server.max_connection_lifetime,
                ),
                ("log_interval", &virtual_server.log_interval),
            ] {
                if let Some(value) = given {
                    self.report(
                        &format!("{key}.{name}"),
                        Some(value.span()),
                        "applies to TCP virtuals only".into(),
                        Some("an HTTP virtual routes each request anew and logs each one; remove the key".into()),
                    );
                }
            }
        }
        Some(VirtualPlan {
            name: name.to_string(),
            listen: listen?,
            pool: pool?,
            idle_timeout,
            connect_timeout,
            connection_limit,
            client_connection_limit,
            client_rate_limit,
            max_connection_lifetime,
            log_interval,
            backlog: backlog?,
            zero_copy: virtual_server.zero_copy.unwrap_or(true),
            tcp_keepalive: tcp_keepalive?,
            snat: snat?,
            expected_clients: expected_clients?,
            proxy_protocol: virtual_server.proxy_protocol.unwrap_or_default(),
            tls: tls?,
            mode: mode?,
            source_persistence: source_persistence?,
        })
    }

    /// A reference to a pool that must exist.
    pub(super) fn pool_reference(
        &mut self,
        key: &str,
        pool: &Spanned<String>,
        raw: &RawConfig,
    ) -> Option<String> {
        if raw.pools.contains_key(pool.get_ref()) {
            return Some(pool.get_ref().clone());
        }
        let known: Vec<&str> = raw.pools.keys().map(String::as_str).collect();
        let hint = if known.is_empty() {
            "define it as a [pools.NAME] table".to_string()
        } else {
            format!("defined pools: {}", known.join(", "))
        };
        self.report(
            key,
            Some(pool.span()),
            format!("no pool named \"{}\"", pool.get_ref()),
            Some(hint),
        );
        None
    }

    fn keepalive(&mut self, key: &str, raw: &RawKeepalive) -> Option<Keepalive> {
        let idle = self.duration(
            &format!("{key}.idle"),
            raw.idle.as_ref(),
            DEFAULT_KEEPALIVE_IDLE,
        );
        let interval = self.duration(
            &format!("{key}.interval"),
            raw.interval.as_ref(),
            DEFAULT_KEEPALIVE_INTERVAL,
        );
        let probes = match &raw.probes {
            None => Some(DEFAULT_KEEPALIVE_PROBES),
            Some(value) => self
                .integer_in(
                    &format!("{key}.probes"),
                    value,
                    1,
                    MAX_KEEPALIVE_PROBES,
                    "a probe count",
                )
                .map(|n| n as u32),
        };
        Some(Keepalive::On {
            idle,
            interval,
            probes: probes?,
        })
    }

    /// Reports a key that must be present.
    pub(super) fn missing(&mut self, key: &str, field: &str, span: Range<usize>, example: &str) {
        self.report(
            &format!("{key}.{field}"),
            Some(span),
            format!("`{field}` is required"),
            Some(format!("add e.g. {example}")),
        );
    }

    /// Names end up in logs and metric labels: keep them to a safe alphabet.
    pub(super) fn name(&mut self, key: &str, name: &str, span: Range<usize>) {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            self.report(
                key,
                Some(span),
                format!("\"{name}\" is not a usable name"),
                Some("use letters, digits, '-', '_' and '.' only".into()),
            );
        }
    }

    pub(super) fn address(&mut self, key: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        let text = value.get_ref().trim();
        match text.parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                let hint = match text.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) => format!("add the port, e.g. \"{text}:9070\""),
                    Ok(IpAddr::V6(_)) => format!("add the port, with brackets: \"[{text}]:9070\""),
                    Err(_) => {
                        "write an IP address and port such as \"10.0.0.11:9070\"; host names are not resolved".into()
                    }
                };
                self.report(
                    key,
                    Some(value.span()),
                    format!("\"{text}\" is not an IP address and port"),
                    Some(hint),
                );
                None
            }
        }
    }

    /// A positive duration, or `default` when absent.
    pub(super) fn duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<RawDuration>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        let parsed = match value.get_ref() {
            RawDuration::Seconds(seconds) => u64::try_from(*seconds)
                .map(Duration::from_secs)
                .map_err(|_| format!("{seconds} is negative")),
            RawDuration::Text(text) => humantime::parse_duration(text.trim())
                .map_err(|error| format!("\"{text}\" is not a duration ({error})")),
        };
        match parsed {
            Ok(duration) if !duration.is_zero() => duration,
            Ok(_) => {
                self.report(
                    key,
                    Some(value.span()),
                    "must be longer than zero".into(),
                    Some("give a duration such as \"5s\" or \"10m\"".into()),
                );
                default
            }
            Err(message) => {
                self.report(
                    key,
                    Some(value.span()),
                    message,
                    Some("write a duration such as \"600s\", \"5m\" or \"1h 30m\"".into()),
                );
                default
            }
        }
    }

    /// A connection limit; 0 means unlimited, as on F5.
    /// New connections per second; 0 or absent: unlimited.
    pub(super) fn rate_limit(&mut self, key: &str, value: Option<&Spanned<i64>>) -> RateLimit {
        match self.integer_or(
            key,
            value,
            (0, 1_000_000, "new connections per second (0: unlimited)"),
            0,
        ) {
            0 => RateLimit::Unlimited,
            rate => RateLimit::PerSecond(rate as u32),
        }
    }

    pub(super) fn limit(&mut self, key: &str, value: Option<&Spanned<i64>>) -> ConnectionLimit {
        let Some(value) = value else {
            return ConnectionLimit::Unlimited;
        };
        match self.integer_in(key, value, 0, u32::MAX as i64, "a connection count") {
            Some(0) | None => ConnectionLimit::Unlimited,
            Some(limit) => ConnectionLimit::At(limit as u32),
        }
    }

    pub(super) fn integer_in(
        &mut self,
        key: &str,
        value: &Spanned<i64>,
        low: i64,
        high: i64,
        what: &str,
    ) -> Option<usize> {
        let number = *value.get_ref();
        if (low..=high).contains(&number) {
            Some(number as usize)
        } else {
            self.report(
                key,
                Some(value.span()),
                format!("{number} is out of range"),
                Some(format!("{what} from {low} to {high}")),
            );
            None
        }
    }

    /// An optional integer within `range` (low, high, what it is); `default`
    /// when absent or out of range (then reported).
    pub(super) fn integer_or(
        &mut self,
        key: &str,
        value: Option<&Spanned<i64>>,
        (low, high, what): (i64, i64, &str),
        default: usize,
    ) -> usize {
        value
            .and_then(|value| self.integer_in(key, value, low, high, what))
            .unwrap_or(default)
    }

    /// Two virtuals cannot listen on the same address, and a wildcard
    /// (0.0.0.0 or ::) covers every address of its family on that port.
    fn listen_conflicts(&mut self, virtuals: &[VirtualPlan], raw: &RawConfig) {
        for (index, later) in virtuals.iter().enumerate() {
            let Some(earlier) = virtuals[..index]
                .iter()
                .find(|earlier| listens_overlap(earlier.listen, later.listen))
            else {
                continue;
            };
            let span = raw.virtuals[&later.name]
                .get_ref()
                .listen
                .as_ref()
                .map(|listen| listen.span());
            let message = if earlier.listen == later.listen {
                format!(
                    "{} is also the listen address of virtuals.{}",
                    later.listen, earlier.name
                )
            } else {
                format!(
                    "{} overlaps {} of virtuals.{} (a wildcard address takes the port on every address)",
                    later.listen, earlier.listen, earlier.name
                )
            };
            self.report(
                &format!("virtuals.{}.listen", later.name),
                span,
                message,
                Some("give each virtual its own address or port".into()),
            );
        }
    }
}

fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}
