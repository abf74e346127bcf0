//! Validation of the health parts of a configuration: `[monitors.NAME]`,
//! monitor rules (`{ all = [...] }`, `{ min = N, of = [...] }`) on pools,
//! members and `[nodes."IP"]`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::raw::{RawConfig, RawDuration};
use super::tls::{MemberVerification, RawPoolTls, Reencrypt};
use super::validate::Checker;

/// Default monitor `interval`: 5 s, as on F5.
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(5);

/// Default monitor `timeout`: 16 s, as on F5 (three intervals and a second).
pub const DEFAULT_MONITOR_TIMEOUT: Duration = Duration::from_secs(16);

// What it means: the plan.

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

// As written: the raw serde types.

/// `[monitors.NAME]`: one health probe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    #[serde(rename = "type")]
    pub kind: MonitorType,
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<RawDuration>>,
    pub timeout: Option<Spanned<RawDuration>>,
    pub send: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<RawStatus>>,
    pub tls: Option<Spanned<RawMonitorTls>>,
}

/// An http monitor's `expect_status`: `200`, `"2xx"` or `"any"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawStatus {
    Code(i64),
    Text(String),
}

/// An http monitor's `tls`: `true` (HTTPS without checking the member's
/// certificate, as F5's https monitor) or a table as a pool's `tls`.
#[derive(Debug)]
pub enum RawMonitorTls {
    On(bool),
    Verified(RawPoolTls),
}

// By hand rather than `untagged`: an untagged enum buffers its input, and
// the `Spanned` values inside the table cannot be read back from a buffer.
impl<'de> Deserialize<'de> for RawMonitorTls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawMonitorTls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a table such as { ca = \"ca.pem\" }")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<RawMonitorTls, E> {
                Ok(RawMonitorTls::On(on))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<RawMonitorTls, M::Error> {
                let table =
                    RawPoolTls::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawMonitorTls::Verified(table))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `monitor = { all = [...] }` or `monitor = { min = N, of = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitorRule {
    pub all: Option<Vec<Spanned<String>>>,
    pub min: Option<Spanned<i64>>,
    pub of: Option<Vec<Spanned<String>>>,
}

/// `[nodes."IP"]`: monitors of a whole server address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub monitor: Option<Spanned<RawMonitorRule>>,
}

// From one to the other: validation.

impl Checker<'_> {
    pub(super) fn monitors(&mut self, raw: &RawConfig) -> BTreeMap<String, MonitorPlan> {
        raw.monitors
            .iter()
            .filter_map(|(name, monitor)| Some((name.clone(), self.monitor(name, monitor)?)))
            .collect()
    }

    fn monitor(&mut self, name: &str, raw: &Spanned<RawMonitor>) -> Option<MonitorPlan> {
        let key = format!("monitors.{name}");
        self.name(&key, name, raw.span());
        let monitor = raw.get_ref();
        let port = match &monitor.port {
            None => Some(ProbePort::Member),
            Some(value) => self
                .integer_in(&format!("{key}.port"), value, 1, 65535, "a port")
                .map(|port| ProbePort::Fixed(port as u16)),
        };
        let interval = self.duration(
            &format!("{key}.interval"),
            monitor.interval.as_ref(),
            DEFAULT_MONITOR_INTERVAL,
        );
        let timeout = self.duration(
            &format!("{key}.timeout"),
            monitor.timeout.as_ref(),
            DEFAULT_MONITOR_TIMEOUT,
        );
        if timeout < interval {
            self.report(
                &format!("{key}.timeout"),
                monitor.timeout.as_ref().map(|t| t.span()),
                format!(
                    "timeout ({}) is shorter than interval ({}): a healthy member would be marked down between two probes",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
                Some("make timeout at least the interval; F5 uses 3 x interval + 1 s".into()),
            );
        }
        let text = |value: &Option<Spanned<String>>| {
            value
                .as_ref()
                .map_or_else(String::new, |v| v.get_ref().clone())
        };
        let span = |value: &Option<Spanned<String>>| value.as_ref().map(|v| v.span());
        let probe = match monitor.kind {
            MonitorType::Tcp => {
                self.not_for(&key, "path", span(&monitor.path), "tcp");
                self.not_for(&key, "host", span(&monitor.host), "tcp");
                self.not_for(
                    &key,
                    "expect_status",
                    monitor.expect_status.as_ref().map(|v| v.span()),
                    "tcp",
                );
                self.not_for(&key, "tls", monitor.tls.as_ref().map(|v| v.span()), "tcp");
                Some(Probe::Tcp {
                    send: text(&monitor.send),
                    expect: text(&monitor.expect),
                })
            }
            MonitorType::Http => self.http_probe(&key, monitor),
            MonitorType::Icmp => {
                for (field, span) in [
                    ("port", monitor.port.as_ref().map(|v| v.span())),
                    ("send", span(&monitor.send)),
                    ("expect", span(&monitor.expect)),
                    ("path", span(&monitor.path)),
                    ("host", span(&monitor.host)),
                    (
                        "expect_status",
                        monitor.expect_status.as_ref().map(|v| v.span()),
                    ),
                    ("tls", monitor.tls.as_ref().map(|v| v.span())),
                ] {
                    self.not_for(&key, field, span, "icmp");
                }
                Some(Probe::Icmp)
            }
        };
        Some(MonitorPlan {
            name: name.to_string(),
            probe: probe?,
            port: port?,
            interval,
            timeout,
        })
    }

    fn http_probe(&mut self, key: &str, monitor: &RawMonitor) -> Option<Probe> {
        self.not_for(key, "send", monitor.send.as_ref().map(|v| v.span()), "http");
        let path = monitor
            .path
            .as_ref()
            .map_or_else(|| "/".to_string(), |p| p.get_ref().clone());
        let path_ok = path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            self.report(
                &format!("{key}.path"),
                monitor.path.as_ref().map(|p| p.span()),
                format!("\"{path}\" is not a request path"),
                Some("start it with '/' and use no spaces, e.g. \"/health\"".into()),
            );
        }
        let host = monitor
            .host
            .as_ref()
            .map_or_else(String::new, |h| h.get_ref().clone());
        if let Some(value) = &monitor.host {
            // It goes into a request line: no spaces or control characters.
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
                self.report(
                    &format!("{key}.host"),
                    Some(value.span()),
                    format!("\"{host}\" is not a host name"),
                    Some("write the name the member expects, e.g. host = \"gwe.internal\"".into()),
                );
            }
        }
        let expect_status = match &monitor.expect_status {
            None => Some(StatusMatch::Exactly(200)),
            Some(value) => self.status_match(&format!("{key}.expect_status"), value),
        };
        let tls = match &monitor.tls {
            Some(value) => match value.get_ref() {
                RawMonitorTls::On(false) => Reencrypt::Off,
                // As F5's https monitor: encrypted, the certificate not checked.
                RawMonitorTls::On(true) => Reencrypt::On {
                    server_name: String::new(),
                    verify: MemberVerification::Disabled,
                },
                RawMonitorTls::Verified(table) => {
                    self.reencrypt_table(&format!("{key}.tls"), table, value.span(), false)
                }
            },
            None => Reencrypt::Off,
        };
        Some(Probe::Http {
            path,
            host,
            expect_status: expect_status?,
            expect: monitor
                .expect
                .as_ref()
                .map_or_else(String::new, |e| e.get_ref().clone()),
            tls,
        })
    }

    fn status_match(&mut self, key: &str, value: &Spanned<RawStatus>) -> Option<StatusMatch> {
        let hint = "a status such as 200, a class such as \"2xx\", or \"any\"";
        match value.get_ref() {
            RawStatus::Code(code) => {
                let spanned = Spanned::new(value.span(), *code);
                self.integer_in(key, &spanned, 100, 599, hint)
                    .map(|code| StatusMatch::Exactly(code as u16))
            }
            RawStatus::Text(text) => {
                let text = text.trim().to_ascii_lowercase();
                let class = text
                    .strip_suffix("xx")
                    .and_then(|digit| digit.parse::<u8>().ok())
                    .filter(|digit| (1..=5).contains(digit));
                match (text.as_str(), class) {
                    ("any", _) => Some(StatusMatch::Any),
                    (_, Some(class)) => Some(StatusMatch::Class(class)),
                    _ => match text.parse::<u16>() {
                        Ok(code) if (100..=599).contains(&code) => Some(StatusMatch::Exactly(code)),
                        _ => {
                            self.report(
                                key,
                                Some(value.span()),
                                format!("\"{text}\" is not an HTTP status to expect"),
                                Some(hint.into()),
                            );
                            None
                        }
                    },
                }
            }
        }
    }

    fn not_for(
        &mut self,
        key: &str,
        field: &str,
        span: Option<std::ops::Range<usize>>,
        kind: &str,
    ) {
        if span.is_some() {
            let other = if kind == "tcp" { "http" } else { "tcp" };
            self.report(
                &format!("{key}.{field}"),
                span,
                format!("`{field}` has no meaning for a {kind} monitor"),
                Some(format!("remove it, or set type = \"{other}\"")),
            );
        }
    }

    pub(super) fn nodes(&mut self, raw: &RawConfig) -> BTreeMap<IpAddr, NodePlan> {
        let mut nodes = BTreeMap::new();
        for (name, node) in &raw.nodes {
            let key = format!("nodes.\"{name}\"");
            let Ok(address) = name.parse::<IpAddr>() else {
                self.report(
                    &key,
                    Some(node.span()),
                    format!("\"{name}\" is not an IP address"),
                    Some("name a node by its address, e.g. [nodes.\"10.0.0.11\"]".into()),
                );
                continue;
            };
            let monitor = match &node.get_ref().monitor {
                None => MonitorRule::Always,
                Some(rule) => self.rule(&format!("{key}.monitor"), rule, raw),
            };
            for name in monitor.monitors() {
                let used = raw.monitors[name].get_ref();
                if used.port.is_none() && used.kind != MonitorType::Icmp {
                    self.report(
                        &format!("{key}.monitor"),
                        Some(node.span()),
                        format!("monitor \"{name}\" has no `port`, and a node has no port of its own to probe"),
                        Some(format!("set port in [monitors.{name}], e.g. port = 22, or use a type = \"icmp\" monitor")),
                    );
                }
            }
            nodes.insert(address, NodePlan { address, monitor });
        }
        nodes
    }

    /// A monitor rule: exactly one of `all = [...]` or `min = N, of = [...]`,
    /// naming monitors that exist.
    pub(super) fn rule(
        &mut self,
        key: &str,
        raw: &Spanned<RawMonitorRule>,
        file: &RawConfig,
    ) -> MonitorRule {
        let rule = raw.get_ref();
        let shape_hint = "write monitor = { all = [\"A\", \"B\"] } or monitor = { min = 1, of = [\"A\", \"B\"] }";
        let (names, min) = match (&rule.all, &rule.min, &rule.of) {
            (Some(all), None, None) => (all, None),
            (None, Some(min), Some(of)) => (of, Some(min)),
            _ => {
                self.report(
                    key,
                    Some(raw.span()),
                    "a monitor rule needs either `all` or both `min` and `of`".into(),
                    Some(shape_hint.into()),
                );
                return MonitorRule::Always;
            }
        };
        if names.is_empty() {
            self.report(
                key,
                Some(raw.span()),
                "the rule names no monitor".into(),
                Some(shape_hint.into()),
            );
            return MonitorRule::Always;
        }
        let mut resolved: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            let name_text = name.get_ref();
            if !file.monitors.contains_key(name_text) {
                let known: Vec<&str> = file.monitors.keys().map(String::as_str).collect();
                let hint = if known.is_empty() {
                    "define it as a [monitors.NAME] table".to_string()
                } else {
                    format!("defined monitors: {}", known.join(", "))
                };
                self.report(
                    key,
                    Some(name.span()),
                    format!("no monitor named \"{name_text}\""),
                    Some(hint),
                );
            } else if resolved.contains(name_text) {
                self.report(
                    key,
                    Some(name.span()),
                    format!("monitor \"{name_text}\" is named twice"),
                    None,
                );
            } else {
                resolved.push(name_text.clone());
            }
        }
        match min {
            None => MonitorRule::All(resolved),
            Some(min) => {
                let count = names.len() as i64;
                let min = self
                    .integer_in(
                        &format!("{key}.min"),
                        min,
                        1,
                        count,
                        "how many of the listed monitors must pass",
                    )
                    .unwrap_or(1);
                MonitorRule::AtLeast { min, of: resolved }
            }
        }
    }
}
