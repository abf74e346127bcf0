//! What an F5 file says, read into objects before anything is converted:
//! monitors, nodes, pools with their members, virtuals, SNAT pools and
//! profiles, keyed by their full name as written (`/Common/pool1` in tmsh,
//! `pool1` in bigpipe). Both syntaxes land in the same objects; keys are
//! matched in either spelling (`defaults from` and `defaults-from` are one
//! key). Statements vipgate has no use for are noted here, grouped by kind.

use std::collections::BTreeMap;

use super::report::{Note, NoteKind};
use super::syntax::{Position, Statement, Word};
use super::words::{self, attributes, is_template, name, Arity, Attribute};

/// A monitor rule as written: `all A and B`, `A and B`, `min N of { A B }`.
#[derive(Debug, Clone)]
pub(super) struct RuleSpec {
    /// `None`: all of them.
    pub min: Option<usize>,
    /// Monitor references and where each is written.
    pub names: Vec<(String, Position)>,
    pub at: Position,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Monitor {
    pub at: Position,
    /// The tmsh type (`ltm monitor http NAME`), if written.
    pub kind: Option<String>,
    /// `defaults-from`.
    pub parent: Option<String>,
    pub destination: Option<String>,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub send: Option<String>,
    pub recv: Option<String>,
    /// Settings that change what the monitor does, for the report:
    /// `(key, value, where)`.
    pub settings: Vec<(String, String, Position)>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Node {
    /// The address, or `None` for an FQDN node (`fqdn { name ... }`).
    pub address: Option<std::net::IpAddr>,
    pub fqdn: Option<String>,
    pub monitor: Option<RuleSpec>,
}

/// A member's admin state as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MemberState {
    Disabled,
    ForcedOffline,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Member {
    pub at: Position,
    /// The member's name as written (`/Common/node1:80`, `10.0.0.1:http`).
    pub written: String,
    /// Its `address` attribute, when the name is not the address.
    pub address: Option<String>,
    /// Its `fqdn { name ... }`.
    pub fqdn: Option<String>,
    pub monitor: Option<RuleSpec>,
    pub ratio: Option<u64>,
    pub priority: Option<u64>,
    pub connection_limit: Option<u64>,
    pub rate_limit: Option<u64>,
    pub state: Option<MemberState>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Pool {
    pub at: Position,
    /// `(vipgate algorithm, as written)`.
    pub algorithm: Option<(Option<&'static str>, String, Position)>,
    pub monitor: Option<RuleSpec>,
    pub members: Vec<Member>,
    pub min_active_members: Option<u64>,
    pub slow_ramp: Option<u64>,
    pub reset_on_down: bool,
}

/// A virtual's source address translation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum SnatChoice {
    #[default]
    None,
    Automap,
    Pool(String),
}

#[derive(Debug, Clone, Default)]
pub(super) struct Virtual {
    pub at: Position,
    pub destination: Option<Word>,
    pub mask: Option<String>,
    pub pool: Option<Word>,
    pub snat: SnatChoice,
    /// Profile references, where written.
    /// Each profile with where it is named and its `context`
    /// (`clientside`, `serverside`, `all`) when the virtual says it.
    pub profiles: Vec<(String, Position, Option<String>)>,
    pub persist: Vec<(String, Position)>,
    pub fallback_persistence: Option<(String, Position)>,
    /// iRules and LTM policies.
    pub rules: Vec<(String, Position)>,
    pub policies: Vec<(String, Position)>,
    pub connection_limit: Option<u64>,
    pub protocol: Option<(String, Position)>,
    pub disabled: bool,
    /// `ip-forward`, `l2-forward`, `reject`, `stateless`, `internal`,
    /// `dhcp-relay`: not a load-balancing virtual.
    pub special: Option<(String, Position)>,
    pub translate_address: Option<(bool, Position)>,
    pub source: Option<(String, Position)>,
    /// Settings vipgate has no equivalent for: `(where, group, why)`,
    /// reported only if the virtual is converted (a virtual left out says
    /// so in one line).
    pub unsupported: Vec<(Position, String, String)>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Profile {
    pub at: Position,
    /// `tcp`, `fastl4`, `http`, `client-ssl`, `server-ssl`,
    /// `persist-cookie`, ... (bigpipe and tmsh spellings made one).
    pub flavour: String,
    pub parent: Option<String>,
    /// Settings by key (`idle-timeout`, `cookie-name`, `ca-file`, ...).
    pub settings: BTreeMap<String, String>,
    /// The certificates of a client-ssl profile.
    pub certificates: Vec<Certificate>,
}

/// One certificate a client-ssl profile presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Certificate {
    pub cert: String,
    pub key: String,
    /// Intermediates in a file of their own (`chain`).
    pub chain: Option<String>,
    /// A `passphrase` protects the key on the BIG-IP.
    pub encrypted: bool,
}

/// Everything read from the file.
#[derive(Debug, Default)]
pub(super) struct Model {
    pub monitors: BTreeMap<String, Monitor>,
    pub nodes: BTreeMap<String, Node>,
    pub default_node_monitor: Option<RuleSpec>,
    pub pools: BTreeMap<String, Pool>,
    pub virtuals: BTreeMap<String, Virtual>,
    /// SNAT pools: addresses (or snat-translation names) as written.
    pub snat_pools: BTreeMap<String, (Position, Vec<Word>)>,
    pub snat_translations: BTreeMap<String, String>,
    pub profiles: BTreeMap<String, Profile>,
    /// iRules that only redirect to HTTPS, with the status they answer.
    pub redirect_rules: BTreeMap<String, u16>,
    pub notes: Vec<Note>,
    /// Template placeholders where vipgate needs a value.
    pub templates: Vec<Note>,
}

/// The SNAT pool v4's `snat map` default becomes.
pub(super) const DEFAULT_SNAT: &str = "snat_map_default";

/// Top-level words of statements that are the host's business.
fn host_setup(word: &str) -> bool {
    matches!(
        word,
        "net"
            | "sys"
            | "auth"
            | "cm"
            | "vlan"
            | "self"
            | "route"
            | "interface"
            | "trunk"
            | "stp"
            | "user"
            | "partition"
            | "shell"
            | "mgmt"
            | "dns"
            | "ntp"
            | "snmp"
            | "syslog"
            | "httpd"
            | "sshd"
            | "ha"
            | "failover"
            | "remote-users"
            | "system"
    )
}

/// BIG-IP modules other than LTM.
fn other_module(word: &str) -> Option<&'static str> {
    Some(match word {
        "security" => "the Advanced Firewall and DoS modules",
        "asm" => "the Application Security Manager",
        "apm" => "the Access Policy Manager",
        "gtm" => "the DNS (GTM) module",
        "pem" => "the Policy Enforcement Manager",
        "wom" => "the WAN Optimization Manager",
        "ilx" => "iRules LX",
        "analytics" => "the Analytics module",
        "wam" => "the Web Acceleration Manager",
        _ => return None,
    })
}

impl Model {
    pub(super) fn note(&mut self, at: Position, kind: NoteKind, message: impl Into<String>) {
        self.notes.push(Note {
            at,
            kind,
            message: message.into(),
        });
    }

    /// A statement vipgate has no equivalent for, grouped under `group`.
    pub(super) fn dropped(
        &mut self,
        at: Position,
        group: impl Into<String>,
        why: impl Into<String>,
    ) {
        self.note(
            at,
            NoteKind::Dropped {
                group: group.into(),
                why: why.into(),
            },
            String::new(),
        );
    }

    /// Something that behaves differently after the conversion, or is
    /// left out: listed one by one.
    pub(super) fn detail(&mut self, at: Position, message: impl Into<String>) {
        self.note(at, NoteKind::Detail, message);
    }

    /// Records `word` as a placeholder if it is one; true if it is.
    pub(super) fn template(&mut self, word: &Word) -> bool {
        if !is_template(word) {
            return false;
        }
        self.templates.push(Note {
            at: word.at,
            kind: NoteKind::Detail,
            message: format!(
                "`{}` is a template placeholder, not a value; fill it in and import again",
                words::excerpt(&word.text)
            ),
        });
        true
    }

    /// Reads every top-level statement.
    pub(super) fn read(statements: &[Statement]) -> Model {
        let mut model = Model::default();
        for statement in statements {
            match statement.word(0) {
                "ltm" => model.ltm(statement),
                "" => {}
                first if statement.words.len() == 1 && statement.block.is_none() => {
                    // A bare `__POOL_CFG__` stands for objects to convert.
                    if !model.template(&statement.words[0]) {
                        model.dropped(
                            statement.at,
                            format!("`{}`", words::excerpt(first)),
                            "a statement vipgate does not know",
                        );
                    }
                }
                first => {
                    let first = words::excerpt(first);
                    // tmsh says `net vlan`, bigpipe `vlan`: group by both
                    // words where the first is only a module.
                    let group = if matches!(first.as_str(), "net" | "sys" | "cm" | "auth") {
                        format!("{first} {}", words::excerpt(statement.word(1)))
                    } else {
                        first.clone()
                    };
                    if host_setup(&first) {
                        model.dropped(statement.at, group, "network or system setup, which stays with the host (vipgate uses the host's addresses and routes)");
                    } else if let Some(module) = other_module(&first) {
                        model.dropped(
                            statement.at,
                            format!("{first} {}", words::excerpt(statement.word(1))),
                            format!("{module}, which vipgate does not replace"),
                        );
                    } else {
                        model.bigpipe(statement);
                    }
                }
            }
        }
        model
    }

    fn ltm(&mut self, statement: &Statement) {
        let kind = statement.word(1);
        match kind {
            "monitor" => self.monitor(statement.word(3), Some(statement.word(2)), statement),
            "profile" => self.profile(statement.word(2), statement.word(3), statement),
            "persistence" => {
                let flavour = format!("persist-{}", statement.word(2));
                self.profile(&flavour, statement.word(3), statement);
            }
            "node" => self.node(statement.word(2), statement),
            "pool" => self.pool(statement.word(2), statement),
            "virtual" => self.virtual_server(statement.word(2), statement),
            "snatpool" => self.snat_pool(statement.word(2), statement),
            "snat-translation" => self.snat_translation(statement.word(2), statement),
            "default-node-monitor" => self.default_node_monitor(statement),
            "rule" => self.irule(statement.word(2), statement, "ltm rule"),
            "policy" => self.dropped(statement.at, "ltm policy", "LTM policies: vipgate routes by pool, SNI and persistence only"),
            "virtual-address" => self.dropped(statement.at, "ltm virtual-address", "the VIP's address is the host's (or keepalived's); vipgate binds it even before it arrives"),
            other => self.dropped(statement.at, format!("ltm {other}"), "not something vipgate carries over"),
        }
    }

    fn bigpipe(&mut self, statement: &Statement) {
        let kind = statement.word(0);
        match kind {
            "monitor" => self.monitor(statement.word(1), None, statement),
            "profile" => self.profile(statement.word(1), statement.word(2), statement),
            "node" => self.node(statement.word(1), statement),
            "pool" => self.pool(statement.word(1), statement),
            // v4 writes a virtual as `vip 10.1.1.10:http unit 1 { ... }`.
            "virtual" | "vip" => self.virtual_server(statement.word(1), statement),
            "snatpool" | "snat-pool" => self.snat_pool(statement.word(1), statement),
            "snat" if statement.word(1) == "map" => self.snat_map(statement),
            "rule" => self.irule(statement.word(1), statement, "rule"),
            other => self.dropped(
                statement.at,
                words::excerpt(other),
                "not something vipgate carries over",
            ),
        }
    }

    /// v4's `snat map { default to 10.1.1.9 unit 1 }`: the default
    /// translation, which applies to every virtual without a SNAT of its
    /// own, becomes a SNAT pool; translations by origin are reported.
    fn snat_map(&mut self, statement: &Statement) {
        for entry in statement.children() {
            let words: Vec<&str> = entry.words.iter().map(|w| w.text.as_str()).collect();
            match words.as_slice() {
                ["default", "to", address, ..] => {
                    let word = entry.words[2].clone();
                    if words::ip(address).is_some() {
                        self.snat_pools
                            .insert(DEFAULT_SNAT.to_string(), (entry.at, vec![word]));
                    }
                }
                _ => self.dropped(entry.at, "`snat map` by origin", "vipgate translates per virtual (its `snat`), not by the client's address; write the translation on the virtuals those clients use"),
            }
        }
    }

    /// A monitor rule from its words (and the words of its block).
    pub(super) fn rule(&mut self, attribute: &Attribute) -> Option<RuleSpec> {
        let words: Vec<&Word> = attribute
            .values
            .iter()
            .chain(attribute.block_words())
            .collect();
        let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
        // bigpipe v10 writes `monitor rule NAME`.
        let skip = usize::from(texts.first() == Some(&"rule"));
        let (min, first) = match &texts[skip..] {
            ["min", count, "of", ..] => (count.parse().ok(), skip + 3),
            ["all", ..] => (None, skip + 1),
            _ => (None, skip),
        };
        let mut names = Vec::new();
        for word in &words[first.min(words.len())..] {
            if word.text == "and" || word.text == "none" || word.text.is_empty() {
                continue;
            }
            if !self.template(word) {
                names.push((word.text.clone(), word.at));
            }
        }
        (!names.is_empty()).then_some(RuleSpec {
            min,
            names,
            at: attribute.at,
        })
    }

    fn node(&mut self, written: &str, statement: &Statement) {
        const KEYS: [(&str, Arity); 14] = [
            ("address", Arity::One),
            ("partition", Arity::One),
            ("app-service", Arity::One),
            ("monitor", Arity::Many),
            ("fqdn", Arity::One),
            ("description", Arity::Rest),
            ("screen", Arity::One),
            ("limit", Arity::One),
            ("connection-limit", Arity::One),
            ("ratio", Arity::One),
            ("session", Arity::One),
            ("state", Arity::One),
            ("dynamic-ratio", Arity::One),
            ("rate-limit", Arity::One),
        ];
        let mut node = Node {
            address: words::ip(name(written)),
            ..Node::default()
        };
        for attribute in attributes(statement.children(), &KEYS) {
            match attribute.key.as_str() {
                "address" => {
                    if let Some(word) = attribute.values.first() {
                        if !self.template(word) {
                            node.address = words::ip(&word.text);
                        }
                    }
                }
                "fqdn" => {
                    let fqdn = attributes(attribute.block.unwrap_or(&[]), &[("name", Arity::One)]);
                    node.fqdn = fqdn
                        .iter()
                        .find(|a| a.key == "name")
                        .map(|a| a.value().to_string());
                }
                "monitor" => node.monitor = self.rule(&attribute),
                // `partition` (old `tmsh list` prints it) only says whose
                // the node is.
                "description" | "session" | "state" | "partition" | "app-service" => {}
                other => self.dropped(
                    attribute.at,
                    format!("node `{other}`"),
                    "vipgate has no node-level limits, ratios or screens",
                ),
            }
        }
        let path = written.to_string();
        if let Some(word) = statement.words.iter().find(|w| w.text == written) {
            self.template(word);
        }
        self.nodes.insert(path, node);
    }

    fn default_node_monitor(&mut self, statement: &Statement) {
        for attribute in attributes(statement.children(), &[("rule", Arity::Many)]) {
            if attribute.key == "rule" {
                self.default_node_monitor = self.rule(&attribute);
            }
        }
    }

    fn snat_pool(&mut self, written: &str, statement: &Statement) {
        let mut addresses = Vec::new();
        // bigpipe: a bare `members` and one address per line after it.
        let mut listing = false;
        for attribute in attributes(
            statement.children(),
            &[("members", Arity::Many), ("member", Arity::Many)],
        ) {
            if listing && !attribute.known && words::ip(name(&attribute.key)).is_some() {
                for word in attribute.values.iter().chain(attribute.block_words()) {
                    addresses.push(word.clone());
                }
                addresses.push(Word {
                    text: attribute.key.clone(),
                    at: attribute.at,
                    quoted: false,
                    template: false,
                });
                continue;
            }
            listing = false;
            match attribute.key.as_str() {
                "members" | "member"
                    if attribute.values.is_empty() && attribute.block.is_none() =>
                {
                    listing = true;
                }
                "members" | "member" => {
                    for word in attribute.values.iter().chain(attribute.block_words()) {
                        if !self.template(word) {
                            addresses.push(word.clone());
                        }
                    }
                }
                "description" | "partition" | "app-service" => {}
                other => self.dropped(
                    attribute.at,
                    format!("snatpool `{other}`"),
                    "not carried over",
                ),
            }
        }
        self.snat_pools
            .insert(written.to_string(), (statement.at, addresses));
    }

    fn snat_translation(&mut self, written: &str, statement: &Statement) {
        for attribute in attributes(statement.children(), &[("address", Arity::One)]) {
            if attribute.key == "address" {
                self.snat_translations
                    .insert(written.to_string(), attribute.value().to_string());
            }
        }
    }
}

/// Looks `reference` up in `objects`: by its full name, then by its name
/// without partition (preferring `/Common`), as BIG-IP resolves a bare
/// name.
pub(super) fn find<'a, T>(
    objects: &'a BTreeMap<String, T>,
    reference: &str,
) -> Option<(&'a str, &'a T)> {
    if let Some((key, value)) = objects.get_key_value(reference) {
        return Some((key.as_str(), value));
    }
    let wanted = name(reference);
    let common = format!("/Common/{wanted}");
    if let Some((key, value)) = objects.get_key_value(&common) {
        return Some((key.as_str(), value));
    }
    let mut matching = objects.iter().filter(|(key, _)| name(key) == wanted);
    match (matching.next(), matching.next()) {
        (Some((key, value)), None) => Some((key.as_str(), value)),
        _ => None,
    }
}
