//! Writing the model read from an F5 file as a vipgate configuration.
//! Anything that would make the result invalid (a reference to something
//! not defined, a monitor type vipgate lacks, a port of "any") is left out
//! with a note, so the output always passes `vipgate check`.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::convert::{Model, MonitorKind, Note, Rule};
use super::syntax::Position;

/// F5's default monitor timing: interval 5 s, timeout 16 s.
const F5_INTERVAL: u64 = 5;
const F5_TIMEOUT: u64 = 16;

/// The path a cookie-persistence secret is expected at, relative to where
/// vipgate runs.
pub const SECRET_FILE: &str = "cookie-secret";

/// A TOML string literal.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// A table key: bare when it can be, quoted otherwise.
fn table_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        name.to_string()
    } else {
        quote(name)
    }
}

/// F5 send and receive strings keep `\r`, `\n` and `\t` as escapes.
fn unescape(text: &str) -> String {
    text.replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\t", "\t")
}

/// The first three-digit status code in an F5 `recv` string.
fn status_in(recv: &str) -> Option<u16> {
    recv.split(|c: char| !c.is_ascii_digit())
        .find(|part| part.len() == 3)
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..600).contains(code))
}

struct Writer<'a> {
    model: &'a Model,
    out: String,
    notes: Vec<Note>,
    /// Monitors that are written (defined, or built in and used).
    monitors: BTreeSet<String>,
}

/// The vipgate configuration for `model`, and the notes written on the way.
pub(super) fn emit(model: &Model, source: &str) -> (String, Vec<Note>) {
    let mut writer = Writer {
        model,
        out: String::new(),
        notes: Vec::new(),
        monitors: BTreeSet::new(),
    };
    let _ = writeln!(
        writer.out,
        "# Converted by `vipgate import-f5` from {source}.\n# Check it with `vipgate check -c FILE`; what could not be carried over was\n# listed on stderr, with line numbers in {source}.\n"
    );
    writer.monitors();
    writer.nodes();
    writer.snat_pools();
    writer.pools();
    writer.virtuals();
    (writer.out, writer.notes)
}

impl Writer<'_> {
    fn note(&mut self, at: Position, message: String) {
        self.notes.push(Note { at, message });
    }

    fn monitors(&mut self) {
        let model = self.model;
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut add = |rule: &Option<Rule>| {
            if let Some(Rule::All(names) | Rule::Min(_, names)) = rule {
                used.extend(names.iter().cloned());
            }
        };
        for pool in model.pools.values() {
            add(&pool.monitor);
            for member in &pool.members {
                add(&member.monitor);
            }
        }
        for (rule, _) in model.nodes.values() {
            add(&Some(rule.clone()));
        }
        for (name, monitor) in &model.monitors {
            let _ = writeln!(self.out, "[monitors.{}]", table_key(name));
            let interval = monitor.interval.unwrap_or(F5_INTERVAL).max(1);
            let mut timeout = monitor.timeout.unwrap_or(F5_TIMEOUT);
            if timeout < interval {
                timeout = 3 * interval + 1;
            }
            let mut kind = monitor.kind;
            let status = monitor.recv.as_deref().map(status_in);
            if kind == MonitorKind::Http && matches!(status, Some(None)) {
                // A body match: vipgate's tcp monitor sends and expects text.
                kind = MonitorKind::Tcp;
            }
            match kind {
                MonitorKind::Tcp => {
                    let _ = writeln!(self.out, "type = \"tcp\"");
                    if let Some(send) = &monitor.send {
                        let _ = writeln!(self.out, "send = {}", quote(&unescape(send)));
                    }
                    if let Some(recv) = &monitor.recv {
                        let _ = writeln!(self.out, "expect = {}", quote(&unescape(recv)));
                    }
                }
                MonitorKind::Http => {
                    let path = monitor
                        .send
                        .as_deref()
                        .and_then(|send| send.split_whitespace().nth(1))
                        .filter(|path| path.starts_with('/'))
                        .unwrap_or("/");
                    let _ = writeln!(self.out, "type = \"http\"\npath = {}", quote(path));
                    if let Some(Some(code)) = status {
                        let _ = writeln!(self.out, "expect_status = {code}");
                    }
                }
            }
            if let Some(port) = monitor.port.filter(|p| *p != 0) {
                let _ = writeln!(self.out, "port = {port}");
            }
            let _ = writeln!(self.out, "interval = {interval}\ntimeout = {timeout}\n");
            self.monitors.insert(name.clone());
        }
        for builtin in used {
            if self.monitors.contains(&builtin) {
                continue;
            }
            let text = match builtin.as_str() {
                "tcp" => "type = \"tcp\"",
                "http" => "type = \"http\"\npath = \"/\"",
                _ => continue,
            };
            let _ = writeln!(self.out, "# F5's built-in {builtin} monitor.\n[monitors.{builtin}]\n{text}\ninterval = {F5_INTERVAL}\ntimeout = {F5_TIMEOUT}\n");
            self.monitors.insert(builtin);
        }
    }

    /// A rule as TOML, without monitors that are not written; `None` when
    /// none is left.
    fn rule(&mut self, rule: &Option<Rule>, owner: &str, at: Position) -> Option<String> {
        let (min, names) = match rule.as_ref()? {
            Rule::All(names) => (None, names),
            Rule::Min(min, names) => (Some(*min), names),
        };
        let mut kept = Vec::new();
        for name in names {
            if self.monitors.contains(name) {
                kept.push(quote(name));
            } else {
                self.note(at, format!("{owner}: monitor {name} is not defined in the file (or has a type vipgate lacks) and is left out"));
            }
        }
        if kept.is_empty() {
            return None;
        }
        Some(match min {
            Some(min) => format!(
                "{{ min = {}, of = [{}] }}",
                min.min(kept.len()),
                kept.join(", ")
            ),
            None => format!("{{ all = [{}] }}", kept.join(", ")),
        })
    }

    fn nodes(&mut self) {
        for (address, (rule, at)) in &self.model.nodes {
            if let Some(text) = self.rule(&Some(rule.clone()), &format!("node {address}"), *at) {
                let _ = writeln!(self.out, "[nodes.{}]\nmonitor = {text}\n", quote(address));
            }
        }
    }

    fn snat_pools(&mut self) {
        for (name, addresses) in &self.model.snat_pools {
            let listed: Vec<String> = addresses.iter().map(|a| quote(a)).collect();
            let _ = writeln!(
                self.out,
                "[snat_pools.{}]\naddresses = [{}]\n",
                table_key(name),
                listed.join(", ")
            );
        }
    }

    fn pools(&mut self) {
        let model = self.model;
        for (name, pool) in &model.pools {
            let at = Position { line: 0, column: 0 };
            let _ = writeln!(self.out, "[pools.{}]", table_key(name));
            if let Some(algorithm) = pool.algorithm {
                let _ = writeln!(self.out, "algorithm = \"{algorithm}\"");
            }
            if let Some(rule) = self.rule(&pool.monitor, &format!("pool {name}"), at) {
                let _ = writeln!(self.out, "monitor = {rule}");
            }
            if pool.reset_on_down {
                let _ = writeln!(self.out, "action_on_service_down = \"reset\"");
            }
            if let Some(seconds) = pool.slow_ramp.filter(|s| *s > 0) {
                let _ = writeln!(self.out, "slow_ramp = {seconds}");
            }
            if let Some(count) = pool.min_active_members.filter(|c| *c > 0) {
                let _ = writeln!(self.out, "min_active_members = {count}");
            }
            if let Some(tls) = self.server_ssl_of(name) {
                let _ = writeln!(self.out, "tls = {tls}");
            }
            let _ = writeln!(self.out, "members = [");
            for member in &pool.members {
                if member.address.ends_with(":0") || !member.address.contains(':') {
                    self.note(at, format!("pool {name}: member {} has no fixed port (F5 `any`), which vipgate cannot connect to; left out", member.address));
                    continue;
                }
                let mut fields = vec![format!("address = {}", quote(&member.address))];
                if let Some(rule) =
                    self.rule(&member.monitor, &format!("member {}", member.address), at)
                {
                    fields.push(format!("monitor = {rule}"));
                }
                if let Some(ratio) = member.ratio.filter(|r| *r != 1) {
                    fields.push(format!("ratio = {}", ratio.clamp(1, 100)));
                }
                if let Some(priority) = member.priority.filter(|p| *p != 0) {
                    fields.push(format!("priority = {}", priority.min(65535)));
                }
                if let Some(limit) = member.connection_limit.filter(|l| *l != 0) {
                    fields.push(format!("connection_limit = {limit}"));
                }
                if let Some(state) = member.state {
                    fields.push(format!("state = \"{state}\""));
                }
                let _ = writeln!(self.out, "  {{ {} }},", fields.join(", "));
            }
            let _ = writeln!(self.out, "]\n");
        }
    }

    /// Re-encryption toward a pool, from the server-ssl profile of a
    /// virtual that uses it.
    fn server_ssl_of(&mut self, pool: &str) -> Option<String> {
        let model = self.model;
        let (profile, at) = model
            .virtuals
            .values()
            .filter(|v| v.pool.as_deref() == Some(pool))
            .flat_map(|v| v.profiles.iter())
            .find(|(profile, _)| {
                model.server_ssl.contains_key(profile) || profile == "serverssl"
            })?;
        let (ca, server_name) = model
            .server_ssl
            .get(profile)
            .cloned()
            .unwrap_or((None, None));
        let mut fields = Vec::new();
        match ca {
            Some(ca) => fields.push(format!("ca = {}", quote(&ca))),
            None => {
                self.note(*at, format!("pool {pool}: server-ssl profile {profile} does not verify the members (no ca-file); written as verify = false"));
                fields.push("verify = false".into());
            }
        }
        if let Some(server_name) = server_name {
            fields.push(format!("server_name = {}", quote(&server_name)));
        }
        Some(format!("{{ {} }}", fields.join(", ")))
    }

    fn virtuals(&mut self) {
        let model = self.model;
        let mut secret_needed = false;
        for (name, virtual_server) in &model.virtuals {
            let at = virtual_server.at.unwrap_or(Position { line: 0, column: 0 });
            if !virtual_server.tcp {
                continue;
            }
            let Some(pool) = virtual_server
                .pool
                .as_ref()
                .filter(|p| model.pools.contains_key(*p))
            else {
                self.note(at, format!("virtual {name}: it has no pool defined in the file (F5 forwarding or iRule-only virtuals have no vipgate equivalent); left out"));
                continue;
            };
            let Some(listen) = virtual_server
                .destination
                .as_ref()
                .filter(|d| d.contains(':') && !d.ends_with(":0"))
            else {
                self.note(
                    at,
                    format!("virtual {name}: its destination has no fixed port; left out"),
                );
                continue;
            };
            let _ = writeln!(
                self.out,
                "[virtuals.{}]\nlisten = {}\npool = {}",
                table_key(name),
                quote(listen),
                quote(pool)
            );
            match virtual_server.snat.as_deref() {
                None => {}
                Some("automap") => {
                    let _ = writeln!(self.out, "snat = \"automap\"");
                }
                Some(snat) if model.snat_pools.contains_key(snat) => {
                    let _ = writeln!(self.out, "snat = {}", quote(snat));
                }
                Some(snat) => self.note(at, format!("virtual {name}: snatpool {snat} is not defined in the file; no SNAT written")),
            }
            if let Some(limit) = virtual_server.connection_limit.filter(|l| *l != 0) {
                let _ = writeln!(self.out, "connection_limit = {limit}");
            }
            let mut http = false;
            for (profile, profile_at) in &virtual_server.profiles {
                if let Some(idle) = model.tcp_profiles.get(profile) {
                    if let Some(seconds) = idle.filter(|s| *s > 0) {
                        let _ = writeln!(self.out, "idle_timeout = {seconds}");
                    }
                } else if model.http_profiles.contains(profile) || profile == "http" {
                    http = true;
                } else if let Some((cert, key)) = model.client_ssl.get(profile) {
                    match (cert, key) {
                        (Some(cert), Some(key)) => {
                            let _ = writeln!(self.out, "# client-ssl profile {profile}: export the certificate and key from the BIG-IP as PEM files under these names.\ntls = {{ mode = \"terminate\", certs = [ {{ cert = {}, key = {} }} ] }}", quote(cert), quote(key));
                        }
                        _ => self.note(*profile_at, format!("virtual {name}: client-ssl profile {profile} names no certificate and key; TLS not written")),
                    }
                } else if profile == "tcp"
                    || model.server_ssl.contains_key(profile)
                    || profile == "serverssl"
                {
                } else if profile == "clientssl" {
                    self.note(*profile_at, format!("virtual {name}: the built-in clientssl profile uses the BIG-IP's default certificate; TLS not written, add tls = {{ mode = \"terminate\", certs = [...] }} with your own"));
                } else {
                    self.note(
                        *profile_at,
                        format!("virtual {name}: profile {profile} is not carried over"),
                    );
                }
            }
            for (persist, persist_at) in &virtual_server.persist {
                let cookie = model
                    .cookies
                    .get(persist)
                    .cloned()
                    .or_else(|| (persist == "cookie").then(Default::default));
                match cookie {
                    Some(cookie) => {
                        http = true;
                        secret_needed = true;
                        let cookie_name = cookie.cookie_name.unwrap_or_else(|| format!("BIGipServer{pool}"));
                        match cookie.expiration.filter(|e| *e > 0) {
                            Some(seconds) => {
                                let _ = writeln!(self.out, "persistence = {{ cookie = {}, max_age = {seconds} }}", quote(&cookie_name));
                            }
                            None => {
                                let _ = writeln!(self.out, "persistence = {{ cookie = {} }}", quote(&cookie_name));
                            }
                        }
                        self.note(*persist_at, format!("virtual {name}: cookie persistence is carried over, but vipgate's cookie is sealed with its own secret, so sessions pinned by the BIG-IP's cookie are balanced once after the switch"));
                    }
                    None => self.note(*persist_at, format!("virtual {name}: persistence profile {persist} is not carried over (vipgate has cookie insert and URL-parameter persistence)")),
                }
            }
            if http {
                let _ = writeln!(self.out, "mode = \"http\"");
            }
            let _ = writeln!(self.out);
        }
        if secret_needed {
            let _ = writeln!(self.out, "# Cookie persistence seals its cookies with this secret; create it with\n#   head -c 32 /dev/urandom > {SECRET_FILE}\n# and give every vipgate instance of a pair the same file.\n[persistence]\nsecret_file = \"{SECRET_FILE}\"");
        }
    }
}
