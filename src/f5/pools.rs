//! Pools and their members, in every layout F5 has used: tmsh blocks
//! (`members { /Common/n1:80 { address 10.0.0.1 } }`), tmsh on one line,
//! bigpipe v10 blocks, bigpipe v9 `members` followed by one member per line
//! with its attribute lines under it, and single-line `member 10.0.0.1:http
//! ratio 3` (bigpipe v9 and v4).

use std::slice;

use super::model::{Member, MemberState, Model, Pool};
use super::syntax::Statement;
use super::words::{attributes, Arity, Attribute};

const POOL_KEYS: [(&str, Arity); 33] = [
    ("load-balancing-mode", Arity::One),
    ("lb-method", Arity::Rest),
    ("lb-mode", Arity::Rest),
    ("monitor", Arity::Many),
    ("members", Arity::Many),
    ("member", Arity::Many),
    ("min-active-members", Arity::One),
    ("slow-ramp-time", Arity::One),
    ("service-down-action", Arity::One),
    ("action-on-svcdown", Arity::One),
    ("action-on-service-down", Arity::One),
    ("description", Arity::Rest),
    ("app-service", Arity::One),
    ("partition", Arity::One),
    ("allow-snat", Arity::One),
    ("allow-nat", Arity::One),
    ("min-up-members", Arity::One),
    ("min-up-members-action", Arity::One),
    ("min-up-members-checking", Arity::One),
    ("queue-depth-limit", Arity::One),
    ("queue-on-connection-limit", Arity::One),
    ("queue-time-limit", Arity::One),
    ("reselect-tries", Arity::One),
    ("ip-tos-to-client", Arity::One),
    ("ip-tos-to-server", Arity::One),
    ("link-qos-to-client", Arity::One),
    ("link-qos-to-server", Arity::One),
    ("ignore-persisted-weight", Arity::One),
    ("profiles", Arity::Many),
    ("autoscale-group-id", Arity::One),
    ("nat", Arity::One),
    ("snat", Arity::One),
    ("metadata", Arity::One),
];

const MEMBER_KEYS: [(&str, Arity); 20] = [
    ("address", Arity::One),
    ("fqdn", Arity::One),
    ("monitor", Arity::Many),
    ("ratio", Arity::One),
    ("priority-group", Arity::One),
    ("priority", Arity::One),
    ("connection-limit", Arity::One),
    ("limit", Arity::One),
    ("rate-limit", Arity::One),
    ("session", Arity::Many),
    ("state", Arity::Many),
    ("description", Arity::Rest),
    ("dynamic-ratio", Arity::One),
    ("inherit-profile", Arity::One),
    ("profiles", Arity::Many),
    ("ephemeral", Arity::One),
    ("app-service", Arity::One),
    ("partition", Arity::One),
    ("logging", Arity::One),
    ("metadata", Arity::One),
];

/// Settings of a pool that change nothing vipgate does.
const QUIET: [&str; 6] = [
    "description",
    "app-service",
    "partition",
    "allow-snat",
    "allow-nat",
    "metadata",
];

/// Whether a word names a member (`10.0.0.1:80`, `/Common/n1:80`,
/// `node:http`, tmsh IPv6 `2001:db8::1.80`).
fn is_member_name(text: &str) -> bool {
    text.contains(':') && !text.ends_with(':')
}

/// The vipgate algorithm for an F5 load-balancing mode, in any spelling.
fn algorithm(mode: &str) -> Option<&'static str> {
    let mode = mode.replace(['_', ' '], "-");
    Some(match mode.as_str() {
        "round-robin" | "rr" => "round-robin",
        "ratio-member" | "member-ratio" | "ratio" | "ratio-node" | "ratio-node-address" => "ratio",
        "least-connections-member"
        | "least-conn-member"
        | "member-least-conn"
        | "least-conn"
        | "least-connections-node"
        | "least-conn-node"
        | "least-connections-node-address"
        | "least-connections" => "least-connections",
        _ => return None,
    })
}

impl Model {
    pub(super) fn pool(&mut self, written: &str, statement: &Statement) {
        let mut pool = Pool {
            at: statement.at,
            ..Pool::default()
        };
        // bigpipe v9: after a bare `members`, each line is a member or an
        // attribute of the member above it.
        let mut listing_members = false;
        for child in statement.children() {
            if listing_members {
                if is_member_name(child.word(0)) {
                    self.member(&mut pool, child);
                    continue;
                }
                let member_attributes = attributes(slice::from_ref(child), &MEMBER_KEYS);
                if member_attributes.iter().all(|a| a.known) {
                    if let Some(member) = pool.members.last_mut() {
                        let mut member = std::mem::take(member);
                        for attribute in &member_attributes {
                            self.member_attribute(&mut member, attribute);
                        }
                        if let Some(last) = pool.members.last_mut() {
                            *last = member;
                        }
                        continue;
                    }
                }
                listing_members = false;
            }
            for attribute in attributes(slice::from_ref(child), &POOL_KEYS) {
                listing_members |= self.pool_attribute(&mut pool, &attribute);
            }
        }
        self.pools.insert(written.to_string(), pool);
    }

    /// Reads one pool attribute; true when it starts a bigpipe member list.
    fn pool_attribute(&mut self, pool: &mut Pool, attribute: &Attribute) -> bool {
        match attribute.key.as_str() {
            "load-balancing-mode" | "lb-method" | "lb-mode" => {
                let written: Vec<&str> = attribute.values.iter().map(|w| w.text.as_str()).collect();
                let written = written.join(" ");
                pool.algorithm = Some((algorithm(&written), written, attribute.at));
            }
            "monitor" => pool.monitor = self.rule(attribute),
            "members" | "member" => {
                // `member 10.0.0.1:http ratio 3`, `members a:80 b:80`, or a
                // block of members.
                let values = attribute.values;
                let mut index = 0;
                while index < values.len() {
                    let end = (index + 1..values.len())
                        .find(|&at| is_member_name(&values[at].text))
                        .unwrap_or(values.len());
                    let line = Statement {
                        words: values[index..end].to_vec(),
                        block: if end == values.len() {
                            attribute.block.map(<[Statement]>::to_vec)
                        } else {
                            None
                        },
                        at: values[index].at,
                    };
                    self.member(pool, &line);
                    index = end;
                }
                match attribute.block {
                    Some(block) if values.is_empty() => {
                        for member in block {
                            self.member_or_group(pool, member);
                        }
                    }
                    Some(_) => {}
                    // The lines that follow are members, or attributes of
                    // the member above them.
                    None => return true,
                }
            }
            "min-active-members" => pool.min_active_members = attribute.number(),
            "slow-ramp-time" => pool.slow_ramp = attribute.number(),
            "service-down-action" | "action-on-svcdown" | "action-on-service-down" => {
                match attribute.value() {
                    "reset" => pool.reset_on_down = true,
                    "none" | "" => {}
                    other => self.detail(
                        attribute.at,
                        format!(
                            "service-down-action {other} becomes none (vipgate has none and reset)"
                        ),
                    ),
                }
            }
            key if QUIET.contains(&key) => {}
            key => self.dropped(
                attribute.at,
                format!("pool `{key}`"),
                "a pool setting vipgate does not have",
            ),
        }
        false
    }

    /// A statement in a `members { }` block: a member, or (bigpipe v10's
    /// `{ ... }` groups) a bare block of members.
    fn member_or_group(&mut self, pool: &mut Pool, statement: &Statement) {
        if statement.words.is_empty() {
            for inner in statement.children() {
                self.member_or_group(pool, inner);
            }
        } else {
            self.member(pool, statement);
        }
    }

    /// A member: its name, attributes on the same line (bigpipe) and in its
    /// block (tmsh).
    fn member(&mut self, pool: &mut Pool, statement: &Statement) {
        let Some(name) = statement.words.first() else {
            return;
        };
        let mut member = Member {
            at: name.at,
            written: name.text.clone(),
            ..Member::default()
        };
        self.template(name);
        let inline = Statement {
            words: statement.words[1..].to_vec(),
            block: None,
            at: statement.at,
        };
        for attribute in attributes(slice::from_ref(&inline), &MEMBER_KEYS)
            .iter()
            .chain(attributes(statement.children(), &MEMBER_KEYS).iter())
        {
            self.member_attribute(&mut member, attribute);
        }
        pool.members.push(member);
    }

    fn member_attribute(&mut self, member: &mut Member, attribute: &Attribute) {
        let words: Vec<&str> = attribute.values.iter().map(|w| w.text.as_str()).collect();
        let joined = words.join("-");
        match attribute.key.as_str() {
            "address" => {
                if let Some(word) = attribute.values.first() {
                    if !self.template(word) {
                        member.address = Some(word.text.clone());
                    }
                }
            }
            "fqdn" => {
                let fqdn = attributes(attribute.block.unwrap_or(&[]), &[("name", Arity::One)]);
                member.fqdn = fqdn
                    .iter()
                    .find(|a| a.key == "name")
                    .map(|a| a.value().to_string())
                    .or_else(|| Some(String::new()));
            }
            // bigpipe v10: `monitor state user down` is a state.
            "monitor" if words.first() == Some(&"state") => {
                if joined.contains("user-down") {
                    member.state = Some(MemberState::ForcedOffline);
                }
            }
            "monitor" => member.monitor = self.rule(attribute),
            "ratio" => member.ratio = attribute.number(),
            "priority" | "priority-group" => member.priority = attribute.number(),
            "connection-limit" | "limit" => member.connection_limit = attribute.number(),
            "rate-limit" => member.rate_limit = attribute.number(),
            "session" => {
                // tmsh `user-disabled`; bigpipe `disable`, `user disabled`.
                let disabled = joined.contains("disable") && !joined.contains("enable");
                if disabled && member.state.is_none() {
                    member.state = Some(MemberState::Disabled);
                }
            }
            "state" => {
                // Only `user-down` is the operator's; `down` is the monitor's
                // verdict when the file was exported.
                if joined.contains("user-down") {
                    member.state = Some(MemberState::ForcedOffline);
                }
            }
            "description" | "app-service" | "partition" | "ephemeral" | "inherit-profile"
            | "logging" | "metadata" => {}
            "up" | "down" => {}
            key => self.dropped(
                attribute.at,
                format!("member `{key}`"),
                "a member setting vipgate does not have",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancing_modes_in_every_spelling() {
        for (written, expected) in [
            ("round-robin", Some("round-robin")),
            ("least-connections-member", Some("least-connections")),
            ("member least conn", Some("least-connections")),
            ("least_conn", Some("least-connections")),
            ("ratio-member", Some("ratio")),
            ("member ratio", Some("ratio")),
            ("observed-member", None),
            ("fastest", None),
        ] {
            assert_eq!(algorithm(written), expected, "{written}");
        }
    }
}
