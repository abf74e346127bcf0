//! `GET /connections`: which connections match an operator's filter, a
//! page at a time, oldest first (by id), with where the next page starts.

use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use super::{Open, Registry};

/// Connections one page lists at most (`limit` may ask for fewer).
pub const MAX_PAGE: usize = 1000;
/// Connections a page lists when `limit` is not given.
const DEFAULT_PAGE: usize = 100;

/// Which connections to list: every field given must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub virtual_name: Option<String>,
    pub pool: Option<String>,
    pub member: Option<SocketAddr>,
    /// A client address alone matches every port of it.
    pub client: Option<ClientFilter>,
    /// Only connections with a larger id (the previous page's `next`).
    pub after: u64,
    pub limit: usize,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            virtual_name: None,
            pool: None,
            member: None,
            client: None,
            after: 0,
            limit: DEFAULT_PAGE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFilter {
    Address(IpAddr),
    Socket(SocketAddr),
}

/// A query parameter `GET /connections` cannot take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown parameter \"{0}\"; filter with virtual, pool, member, client, and page with after and limit")]
    Unknown(String),
    #[error("{key}={value}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

impl Filter {
    /// The filter a query's decoded `key=value` pairs ask for.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Filter, FilterError> {
        let mut filter = Filter::default();
        for (key, value) in pairs {
            let invalid = |key, why| FilterError::Invalid {
                key,
                value: value.to_string(),
                why,
            };
            match key {
                "virtual" => filter.virtual_name = Some(value.to_string()),
                "pool" => filter.pool = Some(value.to_string()),
                "member" => {
                    filter.member = Some(value.parse().map_err(|_| {
                        invalid(
                            "member",
                            "a member is its address and port, e.g. 10.0.0.11:9070",
                        )
                    })?)
                }
                "client" => {
                    filter.client = Some(if let Ok(socket) = value.parse() {
                        ClientFilter::Socket(socket)
                    } else {
                        ClientFilter::Address(value.parse().map_err(|_| {
                            invalid(
                                "client",
                                "a client is an address (every port) or address:port",
                            )
                        })?)
                    })
                }
                "after" => {
                    filter.after = value.parse().map_err(|_| {
                        invalid("after", "the `next` of the previous page, a number")
                    })?
                }
                "limit" => {
                    filter.limit = value
                        .parse()
                        .ok()
                        .filter(|limit| (1..=MAX_PAGE).contains(limit))
                        .ok_or_else(|| invalid("limit", "a number from 1 to 1000"))?
                }
                other => return Err(FilterError::Unknown(other.to_string())),
            }
        }
        Ok(filter)
    }

    fn matches(&self, open: &Open) -> bool {
        open.id > self.after
            && self
                .virtual_name
                .as_deref()
                .is_none_or(|name| *open.virtual_name == *name)
            && self
                .pool
                .as_deref()
                .is_none_or(|pool| open.pool.name() == pool)
            && self
                .member
                .is_none_or(|member| open.member_address() == member)
            && self.client.is_none_or(|client| match client {
                ClientFilter::Address(address) => open.client.ip() == address,
                ClientFilter::Socket(socket) => open.client == socket,
            })
    }
}

/// One listed connection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Listed {
    pub id: u64,
    #[serde(rename = "virtual")]
    pub virtual_name: String,
    pub pool: String,
    pub member: SocketAddr,
    pub client: SocketAddr,
    /// The address and port the member sees (SNAT or vipgate's own).
    pub source: Option<SocketAddr>,
    pub age_seconds: f64,
    pub idle_seconds: f64,
    pub bytes_to_member: u64,
    pub bytes_to_client: u64,
    /// Asked to leave: "rebalance", "lifetime" or "drain".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaving: Option<&'static str>,
}

impl Listed {
    fn of(open: &Open) -> Listed {
        let (bytes_to_member, bytes_to_client) = open.tally.bytes();
        Listed {
            id: open.id,
            virtual_name: open.virtual_name.to_string(),
            pool: open.pool.name().to_string(),
            member: open.member_address(),
            client: open.client,
            source: open.source,
            age_seconds: round_ms(open.tally.age().as_secs_f64()),
            idle_seconds: round_ms(open.tally.idle().as_secs_f64()),
            bytes_to_member,
            bytes_to_client,
            leaving: open.tally.leave().map(|leave| leave.reason.as_str()),
        }
    }
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// One page of matching connections.
#[derive(Debug, Serialize)]
pub struct Page {
    pub connections: Vec<Listed>,
    /// Where the next page starts (`after=`), when more may match.
    pub next: Option<u64>,
    /// Connections open in the whole process, matching or not.
    pub open: usize,
}

impl Registry {
    /// The page of connections `filter` asks for: the `limit` lowest ids
    /// above `after`, found with a heap of that size, so a page costs one
    /// pass and no more memory than itself however many are open.
    pub fn list(&self, filter: &Filter) -> Page {
        // A max-heap of the lowest ids seen: its top is the one to drop.
        let mut lowest: BinaryHeap<Ranked> = BinaryHeap::with_capacity(filter.limit + 1);
        let mut more = false;
        let mut open = 0;
        self.for_each(|connection| {
            open += 1;
            if !filter.matches(connection) {
                return;
            }
            lowest.push(Ranked(Arc::clone(connection)));
            if lowest.len() > filter.limit {
                lowest.pop();
                more = true;
            }
        });
        let mut connections: Vec<Listed> = lowest.into_iter().map(|r| Listed::of(&r.0)).collect();
        connections.sort_by_key(|listed| listed.id);
        let next = more
            .then(|| connections.last().map(|listed| listed.id))
            .flatten();
        Page {
            connections,
            next,
            open,
        }
    }
}

/// An open connection ordered by id.
struct Ranked(Arc<Open>);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_becomes_a_filter_and_bad_values_say_what_fits() {
        let filter = Filter::from_pairs([
            ("virtual", "agents"),
            ("member", "127.0.0.11:9070"),
            ("client", "10.1.2.3"),
            ("after", "17"),
            ("limit", "5"),
        ])
        .unwrap();
        assert_eq!(filter.virtual_name.as_deref(), Some("agents"));
        assert_eq!(filter.member, Some("127.0.0.11:9070".parse().unwrap()));
        assert_eq!(
            filter.client,
            Some(ClientFilter::Address("10.1.2.3".parse().unwrap()))
        );
        assert_eq!((filter.after, filter.limit), (17, 5));
        let socket = Filter::from_pairs([("client", "[::1]:4000")]).unwrap();
        assert_eq!(
            socket.client,
            Some(ClientFilter::Socket("[::1]:4000".parse().unwrap()))
        );
        assert_eq!(Filter::from_pairs([]).unwrap().limit, DEFAULT_PAGE);
        let error = Filter::from_pairs([("limit", "5000")]).unwrap_err();
        assert_eq!(error.to_string(), "limit=5000: a number from 1 to 1000");
        let error = Filter::from_pairs([("member", "proxy3")]).unwrap_err();
        assert!(error.to_string().contains("10.0.0.11:9070"), "{error}");
        let error = Filter::from_pairs([("sort", "age")]).unwrap_err();
        assert!(matches!(error, FilterError::Unknown(key) if key == "sort"));
    }
}
