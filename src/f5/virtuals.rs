//! Virtual servers, read from either syntax: destination, pool, SNAT, the
//! profiles and persistence attached, and everything that makes a virtual
//! something other than a load balancer (forwarding, reject, UDP).

use std::net::SocketAddr;

use super::model::{Model, SnatChoice, Virtual};
use super::syntax::{Position, Statement, Word};
use super::words::{attributes, endpoint, name, Arity, Attribute, Host, Port};

const KEYS: [(&str, Arity); 47] = [
    ("netmask", Arity::One),
    ("unit", Arity::One),
    ("destination", Arity::One),
    ("pool", Arity::One),
    ("use-pool", Arity::One),
    ("snat", Arity::One),
    ("snatpool", Arity::One),
    ("source-address-translation", Arity::One),
    ("profiles", Arity::Many),
    ("profile", Arity::Many),
    ("persist", Arity::Many),
    ("fallback-persistence", Arity::One),
    ("rules", Arity::Many),
    ("rule", Arity::Many),
    ("policies", Arity::Many),
    ("limit", Arity::One),
    ("connection-limit", Arity::One),
    ("ip-protocol", Arity::One),
    ("mask", Arity::One),
    ("source", Arity::One),
    ("vlans", Arity::Many),
    ("vlans-enabled", Arity::Flag),
    ("vlans-disabled", Arity::Flag),
    ("translate-address", Arity::One),
    ("translate-port", Arity::One),
    ("description", Arity::Rest),
    ("creation-time", Arity::One),
    ("last-modified-time", Arity::One),
    ("enabled", Arity::Flag),
    ("disabled", Arity::Flag),
    ("enable", Arity::Flag),
    ("disable", Arity::Flag),
    ("ip-forward", Arity::Flag),
    ("l2-forward", Arity::Flag),
    ("reject", Arity::Flag),
    ("stateless", Arity::Flag),
    ("internal", Arity::Flag),
    ("dhcp-relay", Arity::Flag),
    ("serverssl-use-sni", Arity::One),
    ("source-port", Arity::One),
    ("auto-lasthop", Arity::One),
    ("cmp-enabled", Arity::One),
    ("app-service", Arity::One),
    ("partition", Arity::One),
    ("vs-index", Arity::One),
    ("rate-limit", Arity::One),
    ("security-log-profiles", Arity::Many),
];

/// Settings that change nothing vipgate does.
const QUIET: [&str; 13] = [
    // v4: the VIP's own netmask and its failover unit.
    "netmask",
    "unit",
    "description",
    "creation-time",
    "last-modified-time",
    "enabled",
    "enable",
    "serverssl-use-sni",
    "auto-lasthop",
    "cmp-enabled",
    "app-service",
    "partition",
    "vs-index",
];

/// Names of the attached objects in `values` and the block's statements
/// (`profiles { /Common/tcp { context clientside } }`, `profile http tcp`).
fn references(attribute: &Attribute) -> Vec<(String, Position)> {
    let mut found: Vec<(String, Position)> = attribute
        .values
        .iter()
        .map(|w| (w.text.clone(), w.at))
        .collect();
    for statement in attribute.block.unwrap_or(&[]) {
        if let Some(word) = statement.words.first() {
            found.push((word.text.clone(), word.at));
        }
    }
    found.retain(|(text, _)| !text.is_empty() && text != "none");
    found
}

/// The profiles attached, each with its `context` when the block says it
/// (`/Common/www_clientssl { context clientside }`): for a profile not
/// defined in the file, the context is what tells client-ssl from
/// server-ssl.
fn profile_references(attribute: &Attribute) -> Vec<(String, Position, Option<String>)> {
    let mut found: Vec<(String, Position, Option<String>)> = attribute
        .values
        .iter()
        .map(|w| (w.text.clone(), w.at, None))
        .collect();
    for statement in attribute.block.unwrap_or(&[]) {
        if let Some(word) = statement.words.first() {
            let context = attributes(statement.children(), &[("context", Arity::One)])
                .into_iter()
                .find(|a| a.key == "context")
                .map(|a| a.value().to_string());
            found.push((word.text.clone(), word.at, context));
        }
    }
    found.retain(|(text, _, _)| !text.is_empty() && text != "none");
    found
}

impl Model {
    pub(super) fn virtual_server(&mut self, written: &str, statement: &Statement) {
        let mut virtual_server = Virtual {
            at: statement.at,
            ..Virtual::default()
        };
        for attribute in attributes(statement.children(), &KEYS) {
            let at = attribute.at;
            match attribute.key.as_str() {
                "destination" => {
                    if let Some(word) = attribute.values.first() {
                        if !self.template(word) {
                            virtual_server.destination = Some(word.clone());
                        }
                    }
                }
                // bigpipe v4: `use pool NAME`.
                "pool" | "use-pool" => {
                    if let Some(word) = attribute.values.first() {
                        if !self.template(word) && word.text != "none" {
                            virtual_server.pool = Some(word.clone());
                        }
                    }
                }
                "snat" if attribute.value() == "automap" => virtual_server.snat = SnatChoice::Automap,
                "snat" if attribute.value() == "none" => {}
                "snat" | "snatpool" => {
                    virtual_server.snat = SnatChoice::Pool(attribute.value().to_string())
                }
                "source-address-translation" => {
                    let inner = attributes(
                        attribute.block.unwrap_or(&[]),
                        &[("type", Arity::One), ("pool", Arity::One)],
                    );
                    let get = |key: &str| inner.iter().find(|a| a.key == key).map(|a| a.value().to_string());
                    virtual_server.snat = match (get("type").as_deref(), get("pool")) {
                        (Some("automap"), _) => SnatChoice::Automap,
                        (Some("snat"), Some(pool)) => SnatChoice::Pool(pool),
                        (Some("lsn"), _) => {
                            self.detail(at, format!("virtual {}: large-scale NAT is not carried over; no SNAT written", name(written)));
                            SnatChoice::None
                        }
                        _ => SnatChoice::None,
                    };
                }
                "profiles" | "profile" => {
                    virtual_server.profiles.extend(profile_references(&attribute))
                }
                "persist" => virtual_server.persist.extend(references(&attribute)),
                "fallback-persistence" => {
                    virtual_server.fallback_persistence =
                        references(&attribute).into_iter().next()
                }
                "rules" | "rule" => virtual_server.rules.extend(references(&attribute)),
                "policies" => virtual_server.policies.extend(references(&attribute)),
                "limit" | "connection-limit" => virtual_server.connection_limit = attribute.number(),
                "ip-protocol" => {
                    virtual_server.protocol = Some((attribute.value().to_string(), at))
                }
                "mask" => virtual_server.mask = Some(attribute.value().to_string()),
                "source" => virtual_server.source = Some((attribute.value().to_string(), at)),
                "translate-address" => {
                    virtual_server.translate_address =
                        Some((attribute.value() != "disabled", at))
                }
                "translate-port" | "vlans-disabled" => {}
                "disabled" | "disable" => virtual_server.disabled = true,
                "ip-forward" | "l2-forward" | "reject" | "stateless" | "internal" | "dhcp-relay" => {
                    virtual_server.special = Some((attribute.key.clone(), at))
                }
                "vlans" | "vlans-enabled" => virtual_server.unsupported.push((at, "virtual `vlans`".into(), "vipgate listens on its address on every interface; limit clients with the host's firewall".into())),
                key if QUIET.contains(&key) => {}
                key => virtual_server.unsupported.push((at, format!("virtual `{key}`"), "a virtual setting vipgate does not have".into())),
            }
        }
        // bigpipe v4 names a virtual by its address: `virtual 10.0.0.1:80 {`.
        if virtual_server.destination.is_none() {
            virtual_server.destination = statement
                .words
                .iter()
                .find(|w| w.text == written && w.text.contains(':'))
                .cloned();
        }
        self.virtuals.insert(written.to_string(), virtual_server);
    }
}

/// What vipgate makes of a virtual server, before its pool and profiles.
impl Virtual {
    /// Whether this virtual is a load-balancing TCP virtual vipgate can stand in
    /// for; why not otherwise.
    pub(super) fn balances_tcp(&self) -> Result<(), String> {
        if let Some((kind, _)) = &self.special {
            return Err(format!("it is an `{kind}` virtual, not a load balancer"));
        }
        if self.disabled {
            return Err("it is disabled on the BIG-IP".into());
        }
        if let Some((protocol, _)) = &self.protocol {
            if protocol != "tcp" {
                return Err(format!(
                    "its protocol is {protocol} and vipgate is TCP only"
                ));
            }
        }
        if let Some((false, _)) = self.translate_address {
            return Err(
                "it forwards without address translation (translate-address disabled)".into(),
            );
        }
        Ok(())
    }

    /// The one address and port this virtual listens on.
    pub(super) fn listen_address(&self) -> Result<SocketAddr, String> {
        let destination = self.destination.as_ref().ok_or("it has no destination")?;
        let written = endpoint(&destination.text);
        let address = match written.host {
            Host::Ip(address) => address,
            Host::Name(host) => {
                return Err(format!("its destination `{host}` is not an IP address"))
            }
        };
        let port = match written.port {
            Some(Ok(Port::Number(port))) => port,
            Some(Ok(Port::Any)) => {
                return Err("its destination has no fixed port (port any)".into())
            }
            Some(Err(text)) => {
                return Err(format!(
                    "its port `{text}` is not a number or a known service name"
                ))
            }
            None => return Err("its destination has no port".into()),
        };
        let host_mask = [
            "255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "none",
        ];
        if let Some(mask) = self.mask.as_deref().filter(|m| !host_mask.contains(m)) {
            return Err(format!(
                "it is a network virtual (mask {mask}); vipgate listens on one address"
            ));
        }
        Ok(SocketAddr::new(address, port))
    }

    /// The pool this virtual sends to; without one, what decides instead.
    pub(super) fn pool_word(&self) -> Result<&Word, String> {
        match &self.pool {
            Some(pool) => Ok(pool),
            None if !self.rules.is_empty() => {
                let rules: Vec<&str> = self.rules.iter().map(|(r, _)| name(r)).collect();
                Err(format!(
                    "it has no pool; its iRules ({}) decide where traffic goes",
                    rules.join(", ")
                ))
            }
            None if !self.policies.is_empty() => {
                Err("it has no pool; an LTM policy decides where traffic goes".into())
            }
            None => Err("it has no pool".into()),
        }
    }
}
