//! Reading F5 statements (bigpipe or tmsh) into a model of what vipgate can
//! carry over, with a note for everything it cannot.
//!
//! Keys are matched in either spelling: bigpipe's words (`defaults from`,
//! `min active members`) and tmsh's hyphenated ones (`defaults-from`,
//! `min-active-members`) are the same key here.

use std::collections::{BTreeMap, BTreeSet};

use super::syntax::{Position, Statement, Word};

/// One thing said about the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub at: Position,
    pub message: String,
}

/// What a monitor checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MonitorKind {
    Tcp,
    Http,
}

#[derive(Debug, Clone)]
pub(super) struct Monitor {
    pub kind: MonitorKind,
    /// `None`: the member's own port (`*:*`).
    pub port: Option<u16>,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub send: Option<String>,
    pub recv: Option<String>,
}

/// `monitor all A and B` / `monitor min N of A B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rule {
    All(Vec<String>),
    Min(usize, Vec<String>),
}

#[derive(Debug, Clone, Default)]
pub(super) struct Member {
    pub address: String,
    pub monitor: Option<Rule>,
    pub ratio: Option<u64>,
    pub priority: Option<u64>,
    pub state: Option<&'static str>,
    pub connection_limit: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Pool {
    pub algorithm: Option<&'static str>,
    pub monitor: Option<Rule>,
    pub members: Vec<Member>,
    pub min_active_members: Option<u64>,
    pub slow_ramp: Option<u64>,
    pub reset_on_down: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Virtual {
    pub destination: Option<String>,
    pub pool: Option<String>,
    /// `automap`, or the name of a SNAT pool.
    pub snat: Option<String>,
    pub profiles: Vec<(String, Position)>,
    pub persist: Vec<(String, Position)>,
    pub connection_limit: Option<u64>,
    pub at: Option<Position>,
    /// `ip-protocol tcp` (or none said).
    pub tcp: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct CookiePersistence {
    pub cookie_name: Option<String>,
    /// Seconds; `None` or 0: a session cookie.
    pub expiration: Option<u64>,
    pub insert: bool,
}

/// Everything read from the file.
#[derive(Debug, Default)]
pub(super) struct Model {
    pub monitors: BTreeMap<String, Monitor>,
    pub nodes: BTreeMap<String, (Rule, Position)>,
    pub pools: BTreeMap<String, Pool>,
    pub virtuals: BTreeMap<String, Virtual>,
    pub snat_pools: BTreeMap<String, Vec<String>>,
    pub tcp_profiles: BTreeMap<String, Option<u64>>,
    pub http_profiles: BTreeSet<String>,
    pub client_ssl: BTreeMap<String, (Option<String>, Option<String>)>,
    pub server_ssl: BTreeMap<String, (Option<String>, Option<String>)>,
    pub cookies: BTreeMap<String, CookiePersistence>,
    /// Statements not carried over, and why.
    pub notes: Vec<Note>,
    /// Statements that make the output wrong if ignored (placeholders).
    pub errors: Vec<Note>,
}

/// The name without its partition (`/Common/poolCSP01` -> `poolCSP01`).
pub(super) fn name(text: &str) -> String {
    text.rsplit('/').next().unwrap_or(text).to_string()
}

/// An address as vipgate writes it: partition and route domain removed,
/// tmsh's IPv6 `addr.port` turned into `[addr]:port`, well-known service
/// names turned into ports.
pub(super) fn address(text: &str) -> String {
    let bare = name(text);
    let (host, port) = if bare.matches(':').count() > 1 {
        match bare.rsplit_once('.') {
            Some((host, port)) => (host.to_string(), port.to_string()),
            None => (bare.clone(), String::new()),
        }
    } else {
        match bare.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.to_string()),
            None => (bare.clone(), String::new()),
        }
    };
    let host = host.split('%').next().unwrap_or(&host).to_string();
    let port = match port.as_str() {
        "http" => "80".to_string(),
        "https" => "443".to_string(),
        "any" | "*" => "0".to_string(),
        other => other.to_string(),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    if port.is_empty() {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Matches the start of `statement` against `keys` (hyphenated); returns
/// the key and the words after it.
pub(super) fn key<'a>(
    statement: &'a Statement,
    keys: &[&'static str],
) -> Option<(&'static str, &'a [Word])> {
    for words in (1..=4).rev() {
        if statement.words.len() < words {
            continue;
        }
        let joined: Vec<&str> = statement.words[..words]
            .iter()
            .map(|w| w.text.as_str())
            .collect();
        let joined = joined.join("-");
        if let Some(found) = keys.iter().find(|k| **k == joined) {
            return Some((found, &statement.words[words..]));
        }
    }
    None
}

/// What a pool member may say about itself.
pub(super) const MEMBER_KEYS: [&str; 12] = [
    "address",
    "monitor",
    "ratio",
    "priority",
    "priority-group",
    "session",
    "state",
    "connection-limit",
    "limit",
    "description",
    "dynamic-ratio",
    "rate-limit",
];

pub(super) fn number(words: &[Word]) -> Option<u64> {
    words.first()?.text.parse().ok()
}

impl Model {
    pub(super) fn note(&mut self, at: Position, message: impl Into<String>) {
        self.notes.push(Note {
            at,
            message: message.into(),
        });
    }

    /// Reads every top-level statement.
    pub(super) fn read(statements: &[Statement]) -> Model {
        let mut model = Model::default();
        for statement in statements {
            // Placeholders in statements that are not carried over (the
            // sample's `self <F5 IP address>`) do not matter.
            if !is_host_setup(statement) {
                model.placeholders(statement);
            }
        }
        for statement in statements {
            if matches!(
                statement.word(0),
                "ltm" | "net" | "sys" | "auth" | "cm" | "security" | "apm" | "gtm"
            ) {
                model.tmsh(statement);
            } else {
                model.bigpipe(statement);
            }
        }
        model
    }

    /// Reports every template placeholder, wherever it is.
    fn placeholders(&mut self, statement: &Statement) {
        for word in statement.words.iter().filter(|w| w.placeholder) {
            self.errors.push(Note {
                at: word.at,
                message: format!(
                    "`{}` is a placeholder from the deployment guide, not a value; replace it with the real address and import again",
                    word.text
                ),
            });
        }
        for child in statement.children() {
            self.placeholders(child);
        }
    }

    fn bigpipe(&mut self, statement: &Statement) {
        let kind = statement.word(0);
        let object = name(statement.word(1));
        match kind {
            "monitor" => self.monitor(&object, None, statement),
            "profile" => {
                let object = name(statement.word(2));
                self.profile(statement.word(1), &object, statement);
            }
            "node" => self.node(statement.word(1), statement),
            "pool" => self.pool(&object, statement),
            "virtual" => self.virtual_server(&object, statement),
            "snatpool" | "snat-pool" => self.snat_pool(&object, statement),
            _ if is_host_setup(statement) => self.note(
                statement.at,
                format!("`{kind}` is network or system setup, which stays with the host (vipgate uses the host's addresses and routes)"),
            ),
            "" => {}
            other => self.note(statement.at, format!("`{other}` is not something vipgate carries over")),
        }
    }

    fn tmsh(&mut self, statement: &Statement) {
        if is_host_setup(statement) {
            self.note(
                statement.at,
                format!(
                    "`{} {}` is network or system setup, which stays with the host",
                    statement.word(0),
                    statement.word(1)
                ),
            );
            return;
        }
        let kind = statement.word(1);
        match kind {
            "monitor" => {
                let object = name(statement.word(3));
                self.monitor(&object, Some(statement.word(2)), statement);
            }
            "profile" | "persistence" => {
                let object = name(statement.word(3));
                let flavour = if kind == "persistence" {
                    format!("persist-{}", statement.word(2))
                } else {
                    statement.word(2).to_string()
                };
                self.profile(&flavour, &object, statement);
            }
            "node" => self.node(statement.word(2), statement),
            "pool" => self.pool(&name(statement.word(2)), statement),
            "virtual" => self.virtual_server(&name(statement.word(2)), statement),
            "snatpool" => self.snat_pool(&name(statement.word(2)), statement),
            "rule" => self.note(statement.at, "iRules are not carried over: vipgate has no scripting; express the routing with pools, SNI routes or persistence"),
            other => self.note(statement.at, format!("`ltm {other}` is not something vipgate carries over")),
        }
    }

    fn monitor(&mut self, object: &str, tmsh_type: Option<&str>, statement: &Statement) {
        let mut kind = tmsh_type.map(str::to_string);
        let mut monitor = Monitor {
            kind: MonitorKind::Tcp,
            port: None,
            interval: None,
            timeout: None,
            send: None,
            recv: None,
        };
        for child in statement.children() {
            let Some((found, rest)) = key(
                child,
                &[
                    "defaults-from",
                    "dest",
                    "destination",
                    "interval",
                    "timeout",
                    "send",
                    "recv",
                    "description",
                    "time-until-up",
                    "up-interval",
                    "manual-resume",
                    "recv-disable",
                ],
            ) else {
                self.note(
                    child.at,
                    format!(
                        "monitor {object}: `{}` is not carried over",
                        child
                            .words
                            .iter()
                            .map(|w| w.text.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                );
                continue;
            };
            match found {
                "defaults-from" => {
                    if kind.is_none() {
                        kind = rest.first().map(|w| name(&w.text));
                    }
                }
                "dest" | "destination" => {
                    let port = rest
                        .first()
                        .and_then(|w| w.text.rsplit([':', '.']).next().map(str::to_string));
                    monitor.port = port.and_then(|p| p.parse().ok());
                }
                "interval" => monitor.interval = number(rest),
                "timeout" => monitor.timeout = number(rest),
                "send" => monitor.send = rest.first().map(|w| w.text.clone()),
                "recv" => {
                    monitor.recv = rest
                        .first()
                        .map(|w| w.text.clone())
                        .filter(|r| !r.is_empty())
                }
                "description" => {}
                other => self.note(
                    child.at,
                    format!("monitor {object}: `{other}` is not carried over"),
                ),
            }
        }
        match kind.as_deref() {
            Some("tcp") => {}
            Some("http") => monitor.kind = MonitorKind::Http,
            Some(other) => {
                self.note(statement.at, format!("monitor {object}: type `{other}` is not supported (vipgate has tcp and http monitors); members using it are left to their other monitors"));
                return;
            }
            None => {
                self.note(
                    statement.at,
                    format!(
                        "monitor {object}: its type (`defaults from tcp`) is missing; read as tcp"
                    ),
                );
            }
        }
        self.monitors.insert(object.to_string(), monitor);
    }

    fn profile(&mut self, flavour: &str, object: &str, statement: &Statement) {
        let mut pairs = Vec::new();
        profile_pairs(statement.children(), &mut pairs);
        let get = |wanted: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == wanted)
                .map(|(_, v)| v.clone())
        };
        match flavour {
            "tcp" | "fastl4" => {
                let idle = get("idle-timeout");
                let seconds = match idle.as_deref() {
                    None => None,
                    Some("indefinite") => {
                        self.note(statement.at, format!("profile {object}: an indefinite idle timeout becomes 24 h (vipgate always times idle connections out)"));
                        Some(86_400)
                    }
                    Some(value) => value.parse().ok(),
                };
                self.tcp_profiles.insert(object.to_string(), seconds);
            }
            "http" => {
                self.http_profiles.insert(object.to_string());
            }
            "clientssl" | "client-ssl" => {
                self.client_ssl
                    .insert(object.to_string(), (get("cert"), get("key")));
            }
            "serverssl" | "server-ssl" => {
                self.server_ssl
                    .insert(object.to_string(), (get("ca-file"), get("server-name")));
            }
            "persist-cookie" | "persist" => {
                let mode = get("mode");
                if flavour == "persist" && mode.as_deref() != Some("cookie") {
                    self.note(
                        statement.at,
                        format!(
                            "persistence profile {object}: only cookie persistence is carried over"
                        ),
                    );
                    return;
                }
                let method = get("method").or_else(|| get("cookie-mode"));
                let cookie = CookiePersistence {
                    cookie_name: get("cookie-name"),
                    expiration: get("expiration")
                        .or_else(|| get("cookie-expiration"))
                        .and_then(|e| expiration(&e)),
                    insert: method.as_deref().is_none_or(|m| m == "insert"),
                };
                if !cookie.insert {
                    self.note(statement.at, format!("persistence profile {object}: only `method insert` is carried over (vipgate inserts its own cookie)"));
                    return;
                }
                self.cookies.insert(object.to_string(), cookie);
            }
            other => self.note(
                statement.at,
                format!("profile {object} of type `{other}` is not carried over"),
            ),
        }
    }

    fn node(&mut self, raw_address: &str, statement: &Statement) {
        let mut address_text = name(raw_address);
        for child in statement.children() {
            match key(child, &["address", "monitor", "screen", "description", "limit", "connection-limit", "ratio", "session", "state", "dynamic-ratio"]) {
                Some(("address", rest)) => {
                    if let Some(word) = rest.first() {
                        address_text = address(&word.text);
                    }
                }
                Some(("monitor", rest)) => {
                    if let Some(rule) = self.rule(rest, child.at, &format!("node {address_text}")) {
                        self.nodes.insert(address_text.clone(), (rule, child.at));
                    }
                }
                Some(("description", _)) => {}
                Some((other, _)) => self.note(child.at, format!("node {address_text}: `{other}` is not carried over (vipgate has no node-level limits or screens)")),
                None => self.note(child.at, format!("node {address_text}: `{}` is not carried over", child.word(0))),
            }
        }
    }

    /// A monitor rule, without monitors vipgate does not have (reported).
    pub(super) fn rule(&mut self, words: &[Word], at: Position, owner: &str) -> Option<Rule> {
        let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
        let (min, names): (Option<usize>, Vec<String>) = match texts.as_slice() {
            ["min", count, "of", rest @ ..] => {
                (count.parse().ok(), rest.iter().map(|n| name(n)).collect())
            }
            ["all", rest @ ..] => (
                None,
                rest.iter()
                    .filter(|w| **w != "and")
                    .map(|n| name(n))
                    .collect(),
            ),
            rest => (
                None,
                rest.iter()
                    .filter(|w| **w != "and")
                    .map(|n| name(n))
                    .collect(),
            ),
        };
        let mut names: Vec<String> = names.into_iter().filter(|n| !n.is_empty()).collect();
        names.retain(|monitor| match monitor.as_str() {
            "none" => false,
            "icmp" | "gateway_icmp" | "gateway-icmp" => {
                self.notes.push(Note {
                    at,
                    message: format!("{owner}: monitor {monitor} is not carried over (vipgate does not send ICMP); the members' own monitors decide"),
                });
                false
            }
            _ => true,
        });
        if names.is_empty() {
            return None;
        }
        Some(match min {
            Some(min) => Rule::Min(min, names),
            None => Rule::All(names),
        })
    }
}

/// Network and system statements: the host's business, not vipgate's.
fn is_host_setup(statement: &Statement) -> bool {
    matches!(
        statement.word(0),
        "vlan"
            | "self"
            | "route"
            | "interface"
            | "trunk"
            | "stp"
            | "user"
            | "partition"
            | "net"
            | "sys"
            | "auth"
            | "cm"
    )
}

/// The `key value` pairs of a profile, nested blocks included
/// (`cert-key-chain { default { cert x key y } }`). Values are names
/// without their partition: F5 profiles name file objects (`/Common/vip.crt`),
/// which the operator exports under the same name.
fn profile_pairs(statements: &[Statement], pairs: &mut Vec<(&'static str, String)>) {
    const KEYS: [&str; 12] = [
        "idle-timeout",
        "cert",
        "key",
        "ca-file",
        "server-name",
        "cookie-name",
        "expiration",
        "method",
        "mode",
        "cookie-mode",
        "cookie-expiration",
        "defaults-from",
    ];
    for statement in statements {
        if let Some((found, rest)) = key(statement, &KEYS) {
            if let Some(value) = rest.first() {
                pairs.push((found, name(&value.text)));
            }
        }
        profile_pairs(statement.children(), pairs);
    }
}

/// An F5 cookie expiration (`8:0:0`, `1:0:0:0`, `3600`) in seconds.
fn expiration(text: &str) -> Option<u64> {
    if let Ok(seconds) = text.parse() {
        return Some(seconds);
    }
    let parts: Vec<u64> = text
        .split(':')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    let multipliers: &[u64] = match parts.len() {
        2 => &[60, 1],
        3 => &[3600, 60, 1],
        4 => &[86_400, 3600, 60, 1],
        _ => return None,
    };
    Some(parts.iter().zip(multipliers).map(|(p, m)| p * m).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_lose_partitions_and_route_domains() {
        assert_eq!(name("/Common/poolCSP01"), "poolCSP01");
        assert_eq!(address("/Common/10.0.0.11:9070"), "10.0.0.11:9070");
        assert_eq!(address("10.0.0.11%2:9070"), "10.0.0.11:9070");
        assert_eq!(address("2001:db8::1.9070"), "[2001:db8::1]:9070");
        assert_eq!(address("10.0.0.1:http"), "10.0.0.1:80");
        assert_eq!(address("/Common/10.0.0.21"), "10.0.0.21");
    }

    #[test]
    fn cookie_expirations() {
        assert_eq!(expiration("8:0:0"), Some(8 * 3600));
        assert_eq!(expiration("1:0:0:0"), Some(86_400));
        assert_eq!(expiration("0"), Some(0));
        assert_eq!(expiration("soon"), None);
    }
}
