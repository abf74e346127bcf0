//! F5 monitors: reading `monitor` / `ltm monitor TYPE` objects, resolving
//! `defaults-from` chains down to F5's built-in monitors, and turning each
//! into the vipgate monitor that probes the same thing: tcp with send and
//! expect, http(s) with the path and Host of the `send` string and the
//! status or text of `recv`, icmp.

use super::model::{Model, Monitor};
use super::report::NoteKind;
use super::syntax::{Position, Statement};
use super::words::{attributes, name, Arity, MAX_SECONDS};

/// F5's default timing for its built-in monitors: every 5 s, down after
/// 16 s.
pub(super) const F5_INTERVAL: u64 = 5;
pub(super) const F5_TIMEOUT: u64 = 16;

/// Monitor settings that are read; anything else is grouped in the
/// report.
const KEYS: [(&str, Arity); 24] = [
    ("defaults-from", Arity::One),
    ("destination", Arity::One),
    ("dest", Arity::One),
    ("interval", Arity::One),
    ("timeout", Arity::One),
    ("send", Arity::One),
    ("recv", Arity::One),
    ("recv-disable", Arity::One),
    ("time-until-up", Arity::One),
    ("up-interval", Arity::One),
    ("manual-resume", Arity::One),
    ("reverse", Arity::One),
    ("transparent", Arity::One),
    ("username", Arity::One),
    ("password", Arity::One),
    ("cert", Arity::One),
    ("key", Arity::One),
    ("description", Arity::Rest),
    ("app-service", Arity::One),
    ("partition", Arity::One),
    ("adaptive", Arity::One),
    ("ip-dscp", Arity::One),
    ("debug", Arity::One),
    ("cipherlist", Arity::One),
];

/// What a vipgate monitor probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Check {
    Tcp {
        send: String,
        expect: String,
    },
    Http {
        path: String,
        host: String,
        /// `200`, `"2xx"` or `"any"`, as written in TOML.
        status: String,
        expect: String,
        tls: bool,
    },
    Icmp,
}

/// A monitor ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Converted {
    pub check: Check,
    /// `None`: the member's own port.
    pub port: Option<u16>,
    pub interval: u64,
    pub timeout: u64,
}

/// The built-in monitor a type or name stands for, in one spelling.
fn builtin(kind: &str) -> &str {
    match kind {
        "gateway-icmp" => "gateway_icmp",
        "tcp-half-open" => "tcp_half_open",
        "http-head-f5" => "http_head_f5",
        "https-head-f5" => "https_head_f5",
        "http2-head-f5" => "http2_head_f5",
        other => other,
    }
}

/// The monitors every BIG-IP has without defining them: a reference to
/// one of these is not a reference to a missing definition.
const F5_BUILT_IN: [&str; 44] = [
    "tcp",
    "tcp_half_open",
    "tcp_echo",
    "http",
    "https",
    "http_head_f5",
    "https_head_f5",
    "https_443",
    "http2",
    "http2_head_f5",
    "icmp",
    "gateway_icmp",
    "udp",
    "smtp",
    "ftp",
    "dns",
    "ldap",
    "mysql",
    "mssql",
    "oracle",
    "postgresql",
    "radius",
    "radius_accounting",
    "sip",
    "snmp_dca",
    "snmp_dca_base",
    "external",
    "inband",
    "imap",
    "pop3",
    "nntp",
    "rpc",
    "sasp",
    "soap",
    "virtual_location",
    "wap",
    "wmi",
    "diameter",
    "firepass",
    "module_score",
    "real_server",
    "scripted",
    "none",
    "mqtt",
];

impl Model {
    pub(super) fn monitor(&mut self, written: &str, kind: Option<&str>, statement: &Statement) {
        let mut monitor = Monitor {
            at: statement.at,
            kind: kind.map(|k| builtin(k).to_string()),
            ..Monitor::default()
        };
        for attribute in attributes(statement.children(), &KEYS) {
            let value = attribute.value().to_string();
            match attribute.key.as_str() {
                "defaults-from" => monitor.parent = Some(value),
                "destination" | "dest" => monitor.destination = Some(value),
                "interval" => monitor.interval = attribute.number(),
                "timeout" => monitor.timeout = attribute.number(),
                // tmsh prints an empty setting as `none`.
                "send" => monitor.send = Some(value).filter(|v| v != "none"),
                "recv" => monitor.recv = Some(value).filter(|v| v != "none"),
                "description" | "app-service" | "partition" | "adaptive" | "ip-dscp" | "debug"
                | "cipherlist" => {}
                key if attribute.known => {
                    monitor
                        .settings
                        .push((key.to_string(), value, attribute.at))
                }
                other => self.dropped(
                    attribute.at,
                    format!("monitor `{other}`"),
                    "a monitor setting vipgate does not have",
                ),
            }
        }
        self.monitors.insert(written.to_string(), monitor);
    }

    /// The monitor `reference` names, converted, or why it cannot be. A
    /// user monitor inherits what it does not say from its `defaults-from`
    /// chain; a built-in one has F5's defaults. Notes on what changes are
    /// written when the caller passes `note`: where the monitor is used.
    pub(super) fn convert_monitor(
        &mut self,
        reference: &str,
        note: Option<Position>,
    ) -> Result<Converted, String> {
        if super::model::find(&self.monitors, reference).is_none()
            && !F5_BUILT_IN.contains(&builtin(name(reference)))
        {
            return Err("it is not defined in this file, nor is it a BIG-IP built-in (it may live in /Common or another partition's file); until a monitor is added for it here, the members it watched count as up, or import together with the file that defines it".into());
        }
        let merged = self.inherited(reference);
        let mut details: Vec<String> = Vec::new();
        let check = check(&merged, &mut details)?;
        for (key, value, _) in &merged.settings {
            if let Some(detail) = setting_note(key, value)? {
                details.push(detail);
            }
        }
        let port = port(&merged, &mut details);
        let (interval, timeout) = timing(&merged, &mut details);
        if let Some(referenced) = note {
            // A built-in monitor has no place of its own: its first use.
            let at = if merged.at == Position::default() {
                referenced
            } else {
                merged.at
            };
            for detail in details {
                self.note(
                    at,
                    NoteKind::Detail,
                    format!("monitor {}: {detail}", name(reference)),
                );
            }
        }
        Ok(Converted {
            port: if check == Check::Icmp { None } else { port },
            check,
            interval,
            timeout,
        })
    }

    /// The monitor `reference` with what it inherits down its
    /// `defaults-from` chain (the first setting found wins; at most 16
    /// links): `kind` is the built-in type it comes to, `at` where the
    /// first one in the file was written, `settings` all of theirs.
    fn inherited(&self, reference: &str) -> Monitor {
        let mut merged = Monitor::default();
        let mut current = reference.to_string();
        for _ in 0..16 {
            let Some((_, monitor)) = super::model::find(&self.monitors, &current) else {
                break;
            };
            let monitor = monitor.clone();
            if merged.at == Position::default() {
                merged.at = monitor.at;
            }
            merged.destination = merged.destination.or(monitor.destination);
            merged.interval = merged.interval.or(monitor.interval);
            merged.timeout = merged.timeout.or(monitor.timeout);
            merged.send = merged.send.or(monitor.send);
            merged.recv = merged.recv.or(monitor.recv);
            merged.settings.extend(monitor.settings);
            if monitor.kind.is_some() {
                merged.kind = monitor.kind;
                return merged;
            }
            match monitor.parent {
                Some(parent) if name(&parent) != name(&current) => current = parent,
                _ => break,
            }
        }
        merged.kind = Some(builtin(name(&current)).to_string());
        merged
    }
}

/// The port of a monitor `destination`: `*:*` is the member's, `*:9070` a
/// fixed one; `Err` for an alias address (`10.0.0.5:80`).
fn destination_port(text: &str) -> Result<Option<u16>, String> {
    let text = name(text);
    let (host, port) = text
        .rsplit_once(':')
        .or_else(|| text.rsplit_once('.'))
        .unwrap_or((text, "*"));
    let port = match super::words::port(port) {
        Some(super::words::Port::Number(port)) => Some(port),
        _ => None,
    };
    if host == "*" || host == "0.0.0.0" || host == "::" || host.is_empty() {
        Ok(port)
    } else {
        Err(text.to_string())
    }
}

/// F5's escapes in send and receive strings.
pub(super) fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn looks_like_regex(text: &str) -> bool {
    text.contains(['^', '$', '|', '[', ']', '(', ')', '*', '+', '?', '\\'])
}

/// An F5 `send` string read as an HTTP request.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    path: String,
    host: String,
    notes: Vec<String>,
}

impl Request {
    fn parse(send: &str) -> Request {
        let mut request = Request {
            path: "/".into(),
            host: String::new(),
            notes: Vec::new(),
        };
        let (head, body) = send.split_once("\r\n\r\n").unwrap_or((send, ""));
        let mut lines = head.split('\n').map(|line| line.trim_end_matches('\r'));
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("GET");
        if method != "GET" && !method.is_empty() {
            request
                .notes
                .push(format!("its `{method}` request becomes a GET"));
        }
        if let Some(target) = first.next() {
            // An absolute URL (`GET http://host/path`) keeps its path.
            let path = match target.split_once("://") {
                Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
                None => target,
            };
            if path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic()) {
                request.path = path.to_string();
            } else {
                request.notes.push(format!(
                    "the request target {target:?} is not a path; `/` is used"
                ));
            }
        }
        for line in lines.filter(|line| !line.is_empty()) {
            match line.split_once(':') {
                Some((header, value)) if header.eq_ignore_ascii_case("host") => {
                    request.host = value.trim().to_string();
                }
                Some((header, _)) if header.eq_ignore_ascii_case("connection") => {}
                Some((header, _)) => request
                    .notes
                    .push(format!("its `{header}` header is not sent")),
                None => {}
            }
        }
        if !body.trim().is_empty() {
            request.notes.push("its request body is not sent".into());
        }
        if request.host.bytes().any(|b| !b.is_ascii_graphic()) {
            request
                .notes
                .push(format!("its Host {:?} is not usable", request.host));
            request.host.clear();
        }
        request
    }
}

/// What an F5 `recv` string expects: a status (`200 OK`, `HTTP/1.1 200`,
/// `^HTTP/1\.[01] 200`) or text found anywhere in the answer. No `recv`:
/// any answer, as on F5. Returns `(expect_status, expect)`.
fn expectation(recv: &str) -> (String, String) {
    let recv = recv.trim();
    if recv.is_empty() {
        return ("\"any\"".into(), String::new());
    }
    let mut rest = recv.trim_start_matches('^');
    if rest.starts_with("HTTP") {
        rest = rest
            .split_once(' ')
            .map_or("", |(_, after)| after.trim_start());
    }
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    let status_only = digits.len() == 3
        && (after.is_empty() || after.starts_with([' ', '$']))
        && digits
            .parse::<u16>()
            .is_ok_and(|status| (100..600).contains(&status));
    if status_only {
        (digits, String::new())
    } else {
        ("\"any\"".into(), recv.to_string())
    }
}

/// What a monitor of `merged.kind` checks, with what changes on the way
/// in `details`; an error for a type vipgate has no equivalent of.
fn check(merged: &Monitor, details: &mut Vec<String>) -> Result<Check, String> {
    let kind = merged.kind.as_deref().unwrap_or_default();
    let unescaped = |text: &Option<String>| text.as_deref().map(unescape).unwrap_or_default();
    let regex_note = |expect: &str| {
        format!("recv {expect:?} is a regular expression on F5; vipgate looks for the literal text")
    };
    match kind {
        "tcp" | "tcp_half_open" => {
            if kind == "tcp_half_open" {
                details.push("a half-open (SYN) check becomes a full TCP connect".into());
            }
            let expect = unescaped(&merged.recv);
            if looks_like_regex(&expect) {
                details.push(regex_note(&expect));
            }
            Ok(Check::Tcp {
                send: unescaped(&merged.send),
                expect,
            })
        }
        "http" | "https" | "http_head_f5" | "https_head_f5" | "http2" | "http2_head_f5" => {
            let tls = kind.starts_with("https") || kind.starts_with("http2");
            if kind.starts_with("http2") {
                details.push("an HTTP/2 monitor becomes an HTTPS (HTTP/1.0 over TLS) check".into());
            }
            if kind.ends_with("head_f5") {
                details.push("F5's HEAD request becomes a GET".into());
            }
            let request = Request::parse(&unescaped(&merged.send));
            details.extend(request.notes.iter().cloned());
            let (status, expect) = expectation(&unescaped(&merged.recv));
            if looks_like_regex(&expect) {
                details.push(regex_note(&expect));
            }
            Ok(Check::Http {
                path: request.path,
                host: request.host,
                status,
                expect,
                tls,
            })
        }
        "icmp" | "gateway_icmp" => Ok(Check::Icmp),
        "none" => Err("`none` is no monitor".into()),
        other => Err(format!(
            "its type `{other}` has no vipgate equivalent (vipgate has tcp, http, https and icmp monitors)"
        )),
    }
}

/// What a monitor setting vipgate does not carry over means: nothing
/// (`None`), a note, or an error where it would invert or redirect the
/// check.
fn setting_note(key: &str, value: &str) -> Result<Option<String>, String> {
    let changes = match key {
        "reverse" | "transparent" => value == "enabled" || value == "yes",
        "manual-resume" => value == "enabled" || value == "yes",
        "time-until-up" | "up-interval" => value != "0" && value != "disabled",
        "recv-disable" => !value.is_empty() && value != "none",
        "username" | "password" | "cert" | "key" => value != "none" && !value.is_empty(),
        _ => false,
    };
    if !changes {
        return Ok(None);
    }
    if key == "reverse" || key == "transparent" {
        return Err(format!(
            "`{key} enabled` inverts or redirects the check, which vipgate cannot do"
        ));
    }
    Ok(Some(format!("`{key} {value}` is not carried over")))
}

/// The port `destination` names; `None` for the member's own.
fn port(merged: &Monitor, details: &mut Vec<String>) -> Option<u16> {
    match merged.destination.as_deref().map(destination_port) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(port))) => Some(port),
        Some(Err(alias)) => {
            details.push(format!("the alias address of `destination {alias}` is not carried over (vipgate probes the member's address)"));
            alias
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse().ok())
                .filter(|port| *port != 0)
        }
    }
}

/// Interval and timeout in seconds, F5's defaults where unset; a timeout
/// shorter than the interval becomes F5's rule 3 x interval + 1.
fn timing(merged: &Monitor, details: &mut Vec<String>) -> (u64, u64) {
    let interval = merged.interval.unwrap_or(F5_INTERVAL).clamp(1, MAX_SECONDS);
    let mut timeout = merged.timeout.unwrap_or(F5_TIMEOUT).min(MAX_SECONDS * 4);
    if timeout < interval {
        details.push(format!("timeout {timeout} is shorter than interval {interval}; F5's rule 3 x interval + 1 = {} is used", 3 * interval + 1));
        timeout = 3 * interval + 1;
    }
    (interval, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_strings_become_a_path_and_a_host() {
        let request = Request::parse(&unescape("GET /health\\r\\n"));
        assert_eq!(
            (request.path.as_str(), request.host.as_str()),
            ("/health", "")
        );
        assert!(request.notes.is_empty());
        let request = Request::parse(&unescape(
            "GET /gwe/health HTTP/1.1\\r\\nHost: gwe.internal\\r\\nConnection: close\\r\\n\\r\\n",
        ));
        assert_eq!(
            (request.path.as_str(), request.host.as_str()),
            ("/gwe/health", "gwe.internal")
        );
        assert!(request.notes.is_empty(), "{:?}", request.notes);
        let request = Request::parse(&unescape(
            "HEAD http://app/status HTTP/1.0\\r\\nUser-Agent: f5\\r\\n\\r\\n",
        ));
        assert_eq!(request.path, "/status");
        assert_eq!(request.notes.len(), 2, "{:?}", request.notes);
        assert_eq!(Request::parse("").path, "/");
    }

    #[test]
    fn receive_strings_become_a_status_or_text() {
        for (recv, status, text) in [
            ("200 OK", "200", ""),
            ("HTTP/1.1 200 OK", "200", ""),
            ("^HTTP/1\\.[01] 200", "200", ""),
            ("201 continue", "201", ""),
            ("ok", "\"any\"", "ok"),
            ("ok 200", "\"any\"", "ok 200"),
            ("", "\"any\"", ""),
            ("2000 widgets", "\"any\"", "2000 widgets"),
        ] {
            assert_eq!(
                expectation(recv),
                (status.to_string(), text.to_string()),
                "{recv}"
            );
        }
    }

    #[test]
    fn destinations_give_a_port_or_keep_the_member_s() {
        assert_eq!(destination_port("*:*"), Ok(None));
        assert_eq!(destination_port("*:9070"), Ok(Some(9070)));
        assert_eq!(destination_port("*.9070"), Ok(Some(9070)));
        assert_eq!(destination_port("*:http"), Ok(Some(80)));
        assert_eq!(destination_port("10.0.0.5:80"), Err("10.0.0.5:80".into()));
        assert_eq!(unescape("a\\r\\n\\tb\\x"), "a\r\n\tb\\x");
    }
}
