//! Validation of source address translation: `[snat_pools.NAME]`, each
//! virtual's `snat` choice, and whether the pool can hold the clients the
//! operator expects.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use toml::Spanned;

use super::plan::{Plan, PoolPlan, VirtualPlan};
use super::raw::RawConfig;
use super::validate::Checker;

/// Default `ports` of a SNAT pool: every unprivileged port.
const DEFAULT_PORTS: (u16, u16) = (1024, 65535);

// What it means: the plan.

/// This node's share of every SNAT pool in an active/active group
/// (`--snat-share 2/3`): nodes with the same configuration must not lease
/// the same source ports toward a member, so each takes one of `parts`
/// equal slices of every pool's port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatShare {
    /// 1-based.
    pub part: u16,
    pub parts: u16,
}

impl std::str::FromStr for SnatShare {
    type Err = String;

    fn from_str(text: &str) -> Result<SnatShare, String> {
        let invalid =
            || format!("\"{text}\" is not a share; write K/N, e.g. 1/2 on the first node of two");
        let (part, parts) = text.split_once('/').ok_or_else(invalid)?;
        let part: u16 = part.trim().parse().map_err(|_| invalid())?;
        let parts: u16 = parts.trim().parse().map_err(|_| invalid())?;
        if part == 0 || part > parts || parts > 64 {
            return Err(format!(
                "{text}: the part must be from 1 to N, and N at most 64"
            ));
        }
        Ok(SnatShare { part, parts })
    }
}

impl std::fmt::Display for SnatShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.part, self.parts)
    }
}

/// `snat = "none" | "automap" | "POOL"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snat {
    /// The kernel picks the source address and port. Default.
    None,
    /// The local address facing each member (F5 SNAT automap), with the
    /// kernel's port choice.
    Automap,
    /// The named `[snat_pools.NAME]`.
    Pool(String),
}

impl fmt::Display for Snat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Snat::None => f.write_str("none"),
            Snat::Automap => f.write_str("automap"),
            Snat::Pool(name) => write!(f, "pool {name}"),
        }
    }
}

/// `[snat_pools.NAME]`: source addresses and the port range of each.
#[derive(Debug, Clone, PartialEq)]
pub struct SnatPoolPlan {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub first_port: u16,
    pub last_port: u16,
}

impl SnatPoolPlan {
    /// Ports per address toward one member.
    pub fn ports(&self) -> u64 {
        u64::from(self.last_port - self.first_port) + 1
    }
}

/// `proxy_protocol = "v1" | "v2"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

// As written: the raw serde types.

/// `[snat_pools.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnatPool {
    pub addresses: Option<Spanned<Vec<Spanned<String>>>>,
    pub ports: Option<Spanned<String>>,
}

// From one to the other: validation.

impl Checker<'_> {
    pub(super) fn snat_pools(&mut self, raw: &RawConfig) -> BTreeMap<String, SnatPoolPlan> {
        raw.snat_pools
            .iter()
            .filter_map(|(name, pool)| Some((name.clone(), self.snat_pool(name, pool)?)))
            .collect()
    }

    fn snat_pool(&mut self, name: &str, raw: &Spanned<RawSnatPool>) -> Option<SnatPoolPlan> {
        let key = format!("snat_pools.{name}");
        self.name(&key, name, raw.span());
        if matches!(name, "none" | "automap") {
            self.report(
                &key,
                Some(raw.span()),
                format!("\"{name}\" is a reserved SNAT mode, not a pool name"),
                Some("name the pool something else".into()),
            );
        }
        let pool = raw.get_ref();
        let mut addresses: Vec<IpAddr> = Vec::new();
        match &pool.addresses {
            Some(list) if !list.get_ref().is_empty() => {
                for (index, address) in list.get_ref().iter().enumerate() {
                    let address_key = format!("{key}.addresses[{index}]");
                    match address.get_ref().trim().parse::<IpAddr>() {
                        Ok(ip) if addresses.contains(&ip) => self.report(
                            &address_key,
                            Some(address.span()),
                            format!("{ip} is listed twice"),
                            None,
                        ),
                        Ok(ip) => addresses.push(ip),
                        Err(_) => self.report(
                            &address_key,
                            Some(address.span()),
                            format!("\"{}\" is not an IP address", address.get_ref()),
                            Some("write an address without port, e.g. \"10.0.0.21\"".into()),
                        ),
                    }
                }
            }
            other => self.report(
                &format!("{key}.addresses"),
                Some(other.as_ref().map_or(raw.span(), |list| list.span())),
                "a SNAT pool needs at least one address".into(),
                Some("e.g. addresses = [\"10.0.0.21\", \"10.0.0.22\"]".into()),
            ),
        }
        let (first_port, last_port) = match &pool.ports {
            None => DEFAULT_PORTS,
            Some(ports) => match parse_port_range(ports.get_ref()) {
                Some(range) => range,
                None => {
                    self.report(
                        &format!("{key}.ports"),
                        Some(ports.span()),
                        format!("\"{}\" is not a port range", ports.get_ref()),
                        Some("write FIRST-LAST with 1 <= FIRST <= LAST <= 65535, e.g. \"1024-65535\"".into()),
                    );
                    DEFAULT_PORTS
                }
            },
        };
        Some(SnatPoolPlan {
            name: name.to_string(),
            addresses,
            first_port,
            last_port,
        })
    }

    pub(super) fn snat_choice(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        raw: &RawConfig,
    ) -> Option<Snat> {
        let Some(value) = value else {
            return Some(Snat::None);
        };
        match value.get_ref().as_str() {
            "none" => Some(Snat::None),
            "automap" => Some(Snat::Automap),
            name if raw.snat_pools.contains_key(name) => Some(Snat::Pool(name.to_string())),
            name => {
                let known: Vec<&str> = raw.snat_pools.keys().map(String::as_str).collect();
                let hint = if known.is_empty() {
                    "use \"none\", \"automap\", or define a [snat_pools.NAME] table".to_string()
                } else {
                    format!("use \"none\", \"automap\" or one of: {}", known.join(", "))
                };
                self.report(
                    &format!("{key}.snat"),
                    Some(value.span()),
                    format!("no SNAT pool named \"{name}\""),
                    Some(hint),
                );
                None
            }
        }
    }

    /// SNAT addresses must be of the members' family; and a virtual that
    /// expects more clients than 80% of its SNAT capacity gets a warning.
    pub(super) fn snat_fit(
        &mut self,
        virtuals: &[VirtualPlan],
        pools: &BTreeMap<String, PoolPlan>,
        snat_pools: &BTreeMap<String, SnatPoolPlan>,
    ) {
        for virtual_server in virtuals {
            let (Snat::Pool(name), Some(pool)) = (
                &virtual_server.snat,
                virtual_server.pool.as_ref().and_then(|p| pools.get(p)),
            ) else {
                continue;
            };
            // An empty pool is reported on its own.
            let Some(snat) = snat_pools.get(name).filter(|s| !s.addresses.is_empty()) else {
                continue;
            };
            if let Some(member) = pool.members.iter().find(|m| {
                snat.addresses
                    .iter()
                    .all(|a| a.is_ipv4() != m.address.is_ipv4())
            }) {
                self.report(
                    &format!("virtuals.{}.snat", virtual_server.name),
                    None,
                    format!(
                        "SNAT pool \"{name}\" has no address of the family of member {}",
                        member.address
                    ),
                    Some("add an address of that family to the SNAT pool".into()),
                );
                continue;
            }
            let capacity = snat.addresses.len() as u64 * pool.members.len() as u64 * snat.ports();
            if virtual_server.expected_clients * 10 > capacity * 8 {
                self.warnings.push(format!(
                    "virtuals.{}: expected_clients {} is over 80% of the SNAT capacity {capacity} ({} addresses x {} members x {} ports); add addresses to snat_pools.{name}",
                    virtual_server.name,
                    virtual_server.expected_clients,
                    snat.addresses.len(),
                    pool.members.len(),
                    snat.ports(),
                ));
            }
        }
    }
}

impl Plan {
    /// Narrows every SNAT pool to this node's slice of its ports. Fails,
    /// naming the pool, when a range has fewer ports than there are nodes.
    pub fn take_snat_share(&mut self, share: SnatShare) -> Result<(), String> {
        for pool in self.snat_pools.values_mut() {
            let ports = pool.ports();
            let slice = ports / u64::from(share.parts);
            if slice == 0 {
                return Err(format!(
                    "snat_pools.{}: {ports} ports cannot be shared by {} nodes",
                    pool.name, share.parts
                ));
            }
            let first = u64::from(pool.first_port) + slice * u64::from(share.part - 1);
            let last = if share.part == share.parts {
                u64::from(pool.last_port)
            } else {
                first + slice - 1
            };
            // Both lie within the pool's own range, which fits in a u16.
            pool.first_port = first as u16;
            pool.last_port = last as u16;
        }
        Ok(())
    }
}

/// `"FIRST-LAST"`, or a single port.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (first, last) = text
        .trim()
        .split_once('-')
        .unwrap_or((text.trim(), text.trim()));
    let first: u16 = first.trim().parse().ok()?;
    let last: u16 = last.trim().parse().ok()?;
    (first >= 1 && first <= last).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::{parse_port_range, SnatShare};

    #[test]
    fn shares_split_every_pool_without_overlap() {
        let text = "[snat_pools.s]\naddresses = [\"127.0.0.21\"]\nports = \"1024-65535\"\n[pools.p]\nmembers = [ { address = \"127.0.0.11:1\" } ]\n[virtuals.v]\nlisten = \"127.0.0.100:1\"\npool = \"p\"\nsnat = \"s\"\n";
        let ranges: Vec<(u16, u16)> = (1..=3)
            .map(|part| {
                let mut plan = crate::config::parse(text, "t").unwrap();
                plan.take_snat_share(SnatShare { part, parts: 3 }).unwrap();
                let pool = &plan.snat_pools["s"];
                (pool.first_port, pool.last_port)
            })
            .collect();
        assert_eq!(ranges, [(1024, 22527), (22528, 44031), (44032, 65535)]);
        assert_eq!(
            "2/3".parse::<SnatShare>(),
            Ok(SnatShare { part: 2, parts: 3 })
        );
        for bad in ["0/2", "3/2", "1/65", "x", "1/"] {
            assert!(bad.parse::<SnatShare>().is_err(), "{bad}");
        }
        let mut tiny = crate::config::parse(&text.replace("1024-65535", "5000-5001"), "t").unwrap();
        assert!(tiny
            .take_snat_share(SnatShare { part: 1, parts: 3 })
            .unwrap_err()
            .contains("2 ports cannot be shared by 3 nodes"));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("1024-65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range(" 40000 - 40015 "), Some((40000, 40015)));
        assert_eq!(parse_port_range("5000"), Some((5000, 5000)));
        assert_eq!(parse_port_range("0-10"), None);
        assert_eq!(parse_port_range("10-5"), None);
        assert_eq!(parse_port_range("1-70000"), None);
        assert_eq!(parse_port_range("a-b"), None);
    }
}
