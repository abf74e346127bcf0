//! Pools (with their members), virtual servers and SNAT pools, read from
//! either syntax. bigpipe lists a pool's members on the lines after
//! `members`, each followed by its own attribute lines; tmsh puts them in
//! blocks.

use super::convert::{address, key, name, number, Member, Model, Pool, Virtual, MEMBER_KEYS};
use super::syntax::{Statement, Word};

impl Model {
    pub(super) fn pool(&mut self, object: &str, statement: &Statement) {
        let mut pool = Pool::default();
        let mut in_members = false;
        let keys = [
            "load-balancing-mode",
            "lb-method",
            "lb-mode",
            "monitor",
            "members",
            "min-active-members",
            "slow-ramp-time",
            "service-down-action",
            "action-on-svcdown",
            "action-on-service-down",
            "description",
            "allow-snat",
            "allow-nat",
            "min-up-members",
        ];
        for child in statement.children() {
            let found = key(child, &keys);
            if in_members {
                let first = child.word(0);
                let starts_member = first.contains(':')
                    || (child.words.len() == 1 && child.block.is_some() && found.is_none());
                if starts_member {
                    self.member_line(&mut pool, child);
                    continue;
                }
                // bigpipe: attribute lines after a member belong to it.
                if key(child, &MEMBER_KEYS).is_some() {
                    if let Some(member) = pool.members.last_mut() {
                        self.member_attribute(member, child);
                        continue;
                    }
                }
            }
            let Some((found, rest)) = found else {
                self.note(
                    child.at,
                    format!("pool {object}: `{}` is not carried over", child.word(0)),
                );
                continue;
            };
            match found {
                "load-balancing-mode" | "lb-method" | "lb-mode" => {
                    let mode: Vec<&str> = rest.iter().map(|w| w.text.as_str()).collect();
                    pool.algorithm = match mode.join("-").as_str() {
                        "round-robin" | "rr" => Some("round-robin"),
                        "ratio-member" | "member-ratio" | "ratio" | "ratio-node" => Some("ratio"),
                        "least-connections-member" | "least-conn-member" | "member-least-conn" | "least-conn" | "least-connections-node" => Some("least-connections"),
                        other => {
                            self.note(child.at, format!("pool {object}: load balancing `{other}` is not available; round-robin is used"));
                            None
                        }
                    };
                }
                "monitor" => {
                    let words: Vec<Word> = rest.iter().cloned().chain(child.children().iter().flat_map(|s| s.words.iter().cloned())).collect();
                    pool.monitor = self.rule(&words, child.at, &format!("pool {object}"));
                }
                "members" => {
                    // bigpipe lists members (and their attributes) on the
                    // lines that follow; tmsh puts them in a block.
                    in_members = child.block.is_none();
                    // `members 10.0.0.1:80 10.0.0.2:80` on one line.
                    for word in rest {
                        pool.members.push(Member { address: address(&word.text), ..Member::default() });
                    }
                    for member in child.children() {
                        self.member_line(&mut pool, member);
                    }
                }
                "min-active-members" => pool.min_active_members = number(rest),
                "slow-ramp-time" => pool.slow_ramp = number(rest),
                "service-down-action" | "action-on-svcdown" | "action-on-service-down" => {
                    match rest.first().map(|w| w.text.as_str()) {
                        Some("reset") => pool.reset_on_down = true,
                        Some("none") | None => {}
                        Some(other) => self.note(child.at, format!("pool {object}: service-down-action {other} becomes none (vipgate has none and reset)")),
                    }
                }
                _ => {}
            }
        }
        self.pools.insert(object.to_string(), pool);
    }

    /// A member: `10.0.0.1:80`, with its attributes on the following lines
    /// (bigpipe) or in its block (tmsh).
    fn member_line(&mut self, pool: &mut Pool, statement: &Statement) {
        if statement.words.is_empty() {
            for inner in statement.children() {
                self.member_line(pool, inner);
            }
            return;
        }
        let mut member = Member {
            address: address(statement.word(0)),
            ..Member::default()
        };
        // bigpipe may write attributes on the same line.
        if statement.words.len() > 1 {
            let rest = Statement {
                words: statement.words[1..].to_vec(),
                block: None,
                at: statement.at,
            };
            self.member_attribute(&mut member, &rest);
        }
        for child in statement.children() {
            self.member_attribute(&mut member, child);
        }
        pool.members.push(member);
    }

    fn member_attribute(&mut self, member: &mut Member, statement: &Statement) {
        let owner = format!("member {}", member.address);
        // A compact block holds several pairs on one line
        // (`{ address 10.0.0.11 ratio 3 }`): read the rest after this one.
        if let Some((found, rest)) = key(statement, &MEMBER_KEYS) {
            if found != "monitor" && found != "description" && rest.len() > 1 {
                let more = Statement {
                    words: rest[1..].to_vec(),
                    block: None,
                    at: rest[1].at,
                };
                self.member_attribute(member, &more);
            }
        }
        match key(statement, &MEMBER_KEYS) {
            Some(("address", rest)) => {
                if let Some(word) = rest.first() {
                    let port = member
                        .address
                        .rsplit_once(':')
                        .map(|(_, p)| p.to_string())
                        .unwrap_or_default();
                    member.address = format!("{}:{port}", address(&word.text));
                }
            }
            Some(("monitor", rest)) => member.monitor = self.rule(rest, statement.at, &owner),
            Some(("ratio", rest)) => member.ratio = number(rest),
            Some(("priority" | "priority-group", rest)) => member.priority = number(rest),
            Some(("connection-limit" | "limit", rest)) => member.connection_limit = number(rest),
            Some(("session", rest)) => {
                if rest.first().is_some_and(|w| w.text.contains("disabled")) {
                    member.state = Some("disabled");
                }
            }
            Some(("state", rest)) => {
                if rest.first().is_some_and(|w| w.text.contains("down")) {
                    member.state = Some("forced-offline");
                }
            }
            Some(("description", _)) => {}
            Some((other, _)) => self.note(
                statement.at,
                format!("{owner}: `{other}` is not carried over"),
            ),
            None => self.note(
                statement.at,
                format!("{owner}: `{}` is not carried over", statement.word(0)),
            ),
        }
    }

    pub(super) fn virtual_server(&mut self, object: &str, statement: &Statement) {
        let mut virtual_server = Virtual {
            at: Some(statement.at),
            tcp: true,
            ..Virtual::default()
        };
        let keys = [
            "destination",
            "pool",
            "snat",
            "snatpool",
            "source-address-translation",
            "profiles",
            "profile",
            "persist",
            "limit",
            "connection-limit",
            "ip-protocol",
            "description",
            "mask",
            "vlans",
            "vlans-enabled",
            "vlans-disabled",
            "translate-address",
            "translate-port",
            "source",
            "rules",
            "rule",
            "fallback-persistence",
            "creation-time",
            "last-modified-time",
            "enabled",
        ];
        for child in statement.children() {
            let Some((found, rest)) = key(child, &keys) else {
                self.note(
                    child.at,
                    format!("virtual {object}: `{}` is not carried over", child.word(0)),
                );
                continue;
            };
            let first = rest.first().map(|w| w.text.as_str()).unwrap_or("");
            match found {
                "destination" => virtual_server.destination = Some(address(first)),
                "pool" => virtual_server.pool = Some(name(first)),
                "snat" if first == "automap" => virtual_server.snat = Some("automap".into()),
                "snatpool" => virtual_server.snat = Some(name(first)),
                "source-address-translation" => {
                    let mut kind = "";
                    let mut snat_pool = None;
                    for inner in child.children() {
                        let words: Vec<&str> =
                            inner.words.iter().map(|w| w.text.as_str()).collect();
                        for pair in words.chunks(2) {
                            match pair {
                                ["type", value] => kind = value,
                                ["pool", value] => snat_pool = Some(name(value)),
                                _ => {}
                            }
                        }
                    }
                    match kind {
                        "automap" => virtual_server.snat = Some("automap".into()),
                        "snat" => virtual_server.snat = snat_pool,
                        _ => {}
                    }
                }
                "profiles" | "profile" => {
                    for word in rest {
                        virtual_server.profiles.push((name(&word.text), word.at));
                    }
                    for inner in child.children() {
                        if let Some(word) = inner.words.first() {
                            virtual_server.profiles.push((name(&word.text), word.at));
                        }
                    }
                }
                "persist" => {
                    for word in rest {
                        virtual_server.persist.push((name(&word.text), word.at));
                    }
                    for inner in child.children() {
                        if let Some(word) = inner.words.first() {
                            virtual_server.persist.push((name(&word.text), word.at));
                        }
                    }
                }
                "limit" | "connection-limit" => virtual_server.connection_limit = number(rest),
                "ip-protocol" => {
                    virtual_server.tcp = first == "tcp";
                    if first != "tcp" {
                        self.note(child.at, format!("virtual {object}: ip protocol {first}: vipgate is TCP only, so this virtual is left out"));
                    }
                }
                "rules" | "rule" => self.note(
                    child.at,
                    format!("virtual {object}: iRules are not carried over"),
                ),
                "description" | "mask" | "source" | "translate-address" | "translate-port"
                | "creation-time" | "last-modified-time" | "enabled" => {}
                other => self.note(
                    child.at,
                    format!("virtual {object}: `{other}` is not carried over"),
                ),
            }
        }
        self.virtuals.insert(object.to_string(), virtual_server);
    }

    pub(super) fn snat_pool(&mut self, object: &str, statement: &Statement) {
        let mut addresses = Vec::new();
        for child in statement.children() {
            match key(child, &["member", "members"]) {
                Some((_, rest)) => {
                    addresses.extend(rest.iter().map(|w| address(&w.text)));
                    for inner in child.children() {
                        addresses.extend(inner.words.iter().map(|w| address(&w.text)));
                    }
                }
                None => self.note(
                    child.at,
                    format!("snatpool {object}: `{}` is not carried over", child.word(0)),
                ),
            }
        }
        self.snat_pools.insert(object.to_string(), addresses);
    }
}
