//! Reading values out of F5 words: object names without their partition,
//! addresses with service-name ports, route domains and tmsh's IPv6 form,
//! template placeholders, and statements split into attributes whether an
//! object is written one attribute per line or all on one line (`tmsh list
//! ... one-line`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use super::syntax::{Position, Statement, Word};

/// The longest duration written, in seconds (a year): F5 allows more than
/// TOML's integers hold, and nothing needs it.
pub(super) const MAX_SECONDS: u64 = 365 * 86_400;

/// The name without its partition and folder (`/Common/app.app/pool1` ->
/// `pool1`).
pub(super) fn name(text: &str) -> &str {
    text.rsplit('/').next().unwrap_or(text)
}

/// A port as F5 writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Port {
    Number(u16),
    /// `any`, `*` or `0`: the client's own port (forwarding, wildcards).
    Any,
}

/// A port number, service name (`http`, `webcache`, `pcsync-https`) or
/// `any`; `None` when it is none of these.
pub(super) fn port(text: &str) -> Option<Port> {
    match text {
        "any" | "*" | "0" => Some(Port::Any),
        digits if digits.bytes().all(|b| b.is_ascii_digit()) => match digits.parse() {
            Ok(0) => Some(Port::Any),
            Ok(port) => Some(Port::Number(port)),
            Err(_) => None,
        },
        service => services()
            .get(service.to_ascii_lowercase().as_str())
            .map(|&port| Port::Number(port)),
    }
}

/// Service names to ports, from `services.txt`, read once.
fn services() -> &'static HashMap<&'static str, u16> {
    static TABLE: OnceLock<HashMap<&'static str, u16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        for line in include_str!("services.txt").lines() {
            let mut fields = line.split_whitespace();
            let Some(Ok(port)) = fields.next().map(str::parse::<u16>) else {
                continue;
            };
            for service in fields {
                table.entry(service).or_insert(port);
            }
        }
        table
    })
}

/// Where an address points: an IP, or a name (a node's, or a host name
/// vipgate does not resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Host {
    Ip(IpAddr),
    Name(String),
}

/// An address and the port after it, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    pub host: Host,
    /// `None`: no port written; `Some(Err(text))`: a port vipgate cannot
    /// read (an unknown service name).
    pub port: Option<Result<Port, String>>,
}

/// Reads `/Common/10.0.0.1%2:http`, `10.0.0.1:80`, tmsh's IPv6
/// `2001:db8::1.80`, `[2001:db8::1]:80`, `node_name:9070` or a bare
/// address. Route domains (`%2`) are dropped: vipgate uses the host's
/// routing.
pub(super) fn endpoint(text: &str) -> Endpoint {
    let bare = name(text);
    let (host, port) = if let Some(rest) = bare.strip_prefix('[') {
        match rest.split_once(']') {
            Some((host, port)) => (host, port.strip_prefix(':')),
            None => (rest, None),
        }
    } else if bare.matches(':').count() > 1 {
        // tmsh writes IPv6 as ADDRESS.PORT; the address alone may also
        // end in a dotted IPv4 part (::ffff:10.0.0.1).
        match bare.rsplit_once('.') {
            Some((host, port)) if ip(host).is_some() => (host, Some(port)),
            _ => (bare, None),
        }
    } else {
        match bare.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (bare, None),
        }
    };
    Endpoint {
        host: match ip(host) {
            Some(ip) => Host::Ip(ip),
            None => Host::Name(host.to_string()),
        },
        port: port.map(|text| self::port(text).ok_or_else(|| text.to_string())),
    }
}

/// The largest index at most `at` that starts a character of `text`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// At most the first 60 characters of `text`, for a report line: a
/// statement of a megabyte is not printed whole.
pub(super) fn excerpt(text: &str) -> String {
    const SHOWN: usize = 60;
    if text.len() <= SHOWN {
        return text.to_string();
    }
    format!(
        "{}... ({} bytes)",
        &text[..floor_char_boundary(text, SHOWN)],
        text.len()
    )
}

/// An IP address, without its route domain.
pub(super) fn ip(text: &str) -> Option<IpAddr> {
    text.split('%').next().unwrap_or(text).parse().ok()
}

/// Whether a word holds a template placeholder: `<...>`, `{{ ... }}`,
/// `${...}` (marked by the lexer) or `__NAME__`.
pub(super) fn is_template(word: &Word) -> bool {
    word.template || {
        let text = &word.text;
        text.match_indices("__").any(|(start, _)| {
            let rest = &text[start + 2..];
            // A name between the underscores is short: looking no further
            // keeps this linear on a word of underscores.
            let rest = &rest[..floor_char_boundary(rest, 64)];
            rest.find("__").is_some_and(|end| {
                end > 0
                    && rest[..end]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
        })
    }
}

/// How many words follow a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arity {
    /// None (`vlans-enabled`, `disabled`).
    Flag,
    /// One word, or a block.
    One,
    /// Words up to the next known key (`monitor /Common/a and /Common/b`).
    Many,
    /// Every word left (`lb method member least conn`).
    Rest,
}

/// One `key values [{ block }]` of an object.
#[derive(Debug)]
pub(super) struct Attribute<'a> {
    /// The key hyphenated (`lb method` and `lb_method` read `lb-method`);
    /// an unknown key is its first word.
    pub key: String,
    pub known: bool,
    pub values: &'a [Word],
    /// The block after the last value, if the key has one.
    pub block: Option<&'a [Statement]>,
    pub at: Position,
}

impl Attribute<'_> {
    /// The first value's text ("" without one).
    pub fn value(&self) -> &str {
        self.values.first().map_or("", |w| w.text.as_str())
    }

    /// The first value as a number.
    pub fn number(&self) -> Option<u64> {
        self.value().parse().ok()
    }

    /// Every word of the block's statements, in order (`members { a b }`,
    /// `monitor min 1 of { a b }`).
    pub fn block_words(&self) -> impl Iterator<Item = &Word> {
        self.block
            .unwrap_or(&[])
            .iter()
            .flat_map(|statement| statement.words.iter())
    }
}

/// The known key starting at `words[0]`: the longest run of up to four
/// words that, hyphenated, is in `keys`.
fn known_key(
    words: &[Word],
    keys: &[(&'static str, Arity)],
) -> Option<(&'static str, Arity, usize)> {
    (1..=words.len().min(4)).rev().find_map(|length| {
        if words[..length].iter().any(|w| w.quoted) {
            return None;
        }
        let joined = words[..length]
            .iter()
            .map(|w| w.text.replace('_', "-"))
            .collect::<Vec<_>>()
            .join("-");
        keys.iter()
            .find(|(key, _)| *key == joined)
            .map(|(key, arity)| (*key, *arity, length))
    })
}

/// Splits an object's statements into attributes, by the keys it knows:
/// one attribute per statement as tmsh and bigpipe print by default, or
/// many in one statement (`tmsh list one-line`).
pub(super) fn attributes<'a>(
    statements: &'a [Statement],
    keys: &[(&'static str, Arity)],
) -> Vec<Attribute<'a>> {
    let mut found = Vec::new();
    for statement in statements {
        let words = &statement.words[..];
        if words.is_empty() {
            if statement.block.is_none() {
                continue;
            }
            found.push(Attribute {
                key: String::new(),
                known: false,
                values: &[],
                block: statement.block.as_deref(),
                at: statement.at,
            });
            continue;
        }
        let mut index = 0;
        while index < words.len() {
            let (key, known, arity, length) = match known_key(&words[index..], keys) {
                Some((key, arity, length)) => (key.to_string(), true, arity, length),
                None => (words[index].text.clone(), false, Arity::Many, 1),
            };
            let start = index + length;
            let end = match arity {
                Arity::Flag => start,
                Arity::One => (start + 1).min(words.len()),
                Arity::Rest => words.len(),
                Arity::Many => (start..words.len())
                    .find(|&at| known_key(&words[at..], keys).is_some())
                    .unwrap_or(words.len()),
            };
            found.push(Attribute {
                key,
                known,
                values: &words[start..end],
                block: if end == words.len() {
                    statement.block.as_deref()
                } else {
                    None
                },
                at: words[index].at,
            });
            index = end;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f5::syntax::parse;

    #[test]
    fn names_and_addresses_lose_partitions_and_route_domains() {
        assert_eq!(name("/Common/app.app/poolCSP01"), "poolCSP01");
        let ip = |text: &str| Host::Ip(text.parse().unwrap());
        let number = |port| Some(Ok(Port::Number(port)));
        assert_eq!(
            endpoint("/Common/10.0.0.11%2:9070"),
            Endpoint {
                host: ip("10.0.0.11"),
                port: number(9070)
            }
        );
        assert_eq!(endpoint("2001:db8::1.9070").host, ip("2001:db8::1"));
        assert_eq!(endpoint("2001:db8::1.9070").port, number(9070));
        assert_eq!(endpoint("[2001:db8::1]:443").port, number(443));
        assert_eq!(endpoint("::ffff:10.0.0.1").port, None);
        assert_eq!(endpoint("10.0.0.1:any").port, Some(Ok(Port::Any)));
        assert_eq!(
            endpoint("/Common/10.0.0.21"),
            Endpoint {
                host: ip("10.0.0.21"),
                port: None
            }
        );
        assert_eq!(
            endpoint("/Common/app1_Node1:80"),
            Endpoint {
                host: Host::Name("app1_Node1".into()),
                port: number(80)
            }
        );
        assert_eq!(
            endpoint("10.0.0.1:nosuchservice").port,
            Some(Err("nosuchservice".into()))
        );
    }

    #[test]
    fn service_names_are_the_ports_bigip_prints() {
        for (service, number) in [
            ("http", 80),
            ("https", 443),
            ("webcache", 8080),
            ("domain", 53),
            ("ssh", 22),
            ("ftp", 21),
            ("smtp", 25),
            ("pcsync-https", 8443),
            ("ldaps", 636),
            ("ms-sql-s", 1433),
            ("mysql", 3306),
            ("ms-wbt-server", 3389),
            ("HTTP", 80),
        ] {
            assert_eq!(port(service), Some(Port::Number(number)), "{service}");
        }
        assert_eq!(port("any"), Some(Port::Any));
        assert_eq!(port("99999"), None);
    }

    #[test]
    fn templates_of_every_style_are_seen() {
        let word = |text: &str| Word {
            text: text.into(),
            at: Position::default(),
            quoted: false,
            template: false,
        };
        assert!(is_template(&word("__VS_ADDR__:80")));
        assert!(!is_template(&word("my__pool")));
        assert!(!is_template(&word("_sys_https_redirect")));
        assert!(!is_template(&word("____")));
    }

    const POOL_KEYS: [(&str, Arity); 5] = [
        ("members", Arity::Many),
        ("monitor", Arity::Many),
        ("load-balancing-mode", Arity::One),
        ("lb-method", Arity::Rest),
        ("member", Arity::Many),
    ];

    fn keys_and_values(text: &str) -> Vec<(String, Vec<String>, bool)> {
        let parsed = parse(text).unwrap();
        attributes(parsed.statements[0].children(), &POOL_KEYS)
            .iter()
            .map(|a| {
                (
                    a.key.clone(),
                    a.values.iter().map(|w| w.text.clone()).collect(),
                    a.block.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn one_line_and_block_forms_give_the_same_attributes() {
        let block = "ltm pool p {\n    load-balancing-mode least-connections-member\n    members {\n        /Common/a:80 { address 10.0.0.1 }\n    }\n    monitor /Common/http and /Common/tcp\n}\n";
        let one_line = "ltm pool p { load-balancing-mode least-connections-member members { /Common/a:80 { address 10.0.0.1 } } monitor /Common/http and /Common/tcp }\n";
        let expected = vec![
            (
                "load-balancing-mode".to_string(),
                vec!["least-connections-member".to_string()],
                false,
            ),
            ("members".to_string(), vec![], true),
            (
                "monitor".to_string(),
                vec!["/Common/http".into(), "and".into(), "/Common/tcp".into()],
                false,
            ),
        ];
        assert_eq!(keys_and_values(block), expected);
        assert_eq!(keys_and_values(one_line), expected);
        // bigpipe: several words for the key, the rest for the value.
        assert_eq!(
            keys_and_values(
                "pool p {\n   lb method member least conn\n   member 10.0.0.1:http ratio 3\n}\n"
            ),
            vec![
                (
                    "lb-method".to_string(),
                    vec!["member".into(), "least".into(), "conn".into()],
                    false
                ),
                (
                    "member".to_string(),
                    vec!["10.0.0.1:http".into(), "ratio".into(), "3".into()],
                    false
                ),
            ]
        );
    }
}
