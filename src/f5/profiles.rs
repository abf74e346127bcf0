//! Profiles and persistence profiles: read in either syntax, then resolved
//! along their `defaults-from` chain to what a virtual needs from them: an
//! idle timeout, HTTP, the certificates to present, how members are
//! verified, cookie persistence.

use super::model::{find, Certificate, Model, Profile};
use super::syntax::{Position, Statement};
use super::words::{attributes, name, Arity};

/// F5's idle timeout of its built-in tcp and fastL4 profiles, seconds.
const F5_IDLE_TIMEOUT: u64 = 300;

/// An indefinite idle timeout, carried over as a day.
const INDEFINITE: u64 = 86_400;

const KEYS: [(&str, Arity); 27] = [
    ("timeout", Arity::One),
    ("mask", Arity::One),
    ("match-across-services", Arity::One),
    ("match-across-virtuals", Arity::One),
    ("match-across-pools", Arity::One),
    ("hash-algorithm", Arity::One),
    ("passphrase", Arity::One),
    ("defaults-from", Arity::One),
    ("idle-timeout", Arity::One),
    ("cert", Arity::One),
    ("key", Arity::One),
    ("chain", Arity::One),
    ("ca-file", Arity::One),
    ("server-name", Arity::One),
    ("peer-cert-mode", Arity::One),
    ("cookie-name", Arity::One),
    ("expiration", Arity::One),
    ("cookie-expiration", Arity::One),
    ("method", Arity::One),
    ("mode", Arity::One),
    ("cookie-mode", Arity::One),
    ("cert-key-chain", Arity::One),
    ("sni-default", Arity::One),
    ("httponly", Arity::One),
    ("secure", Arity::One),
    ("context", Arity::One),
    ("header-insert", Arity::One),
];

/// What a profile does for a virtual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Role {
    /// tcp or fastL4: the idle timeout in seconds.
    Tcp(u64),
    /// http: the `header-insert` text (`"Name: value"`), if any.
    Http { header_insert: Option<String> },
    /// client-ssl: the certificates to present.
    ClientSsl(Vec<Certificate>),
    /// server-ssl: the CA to verify members with (when F5 verifies them)
    /// and the name to ask for.
    ServerSsl {
        ca: Option<String>,
        server_name: Option<String>,
    },
    /// Cookie persistence, `insert` method.
    Cookie {
        name: Option<String>,
        expiration: Option<u64>,
    },
    /// Source-address persistence: the record timeout (seconds, `None`
    /// for F5's 180), the mask as written, and the `match-across-*`
    /// settings that are on.
    SourceAddress {
        timeout: Option<String>,
        mask: Option<String>,
        across: Vec<&'static str>,
    },
    /// Anything else: its kind (`udp`, `oneconnect`, `persist dest_addr`).
    Other(String),
    /// Neither defined in the file nor a BIG-IP built-in: what it does is
    /// in another file (`/Common`, another partition).
    Undefined,
}

/// The flavour of a built-in profile or persistence method by its name.
fn builtin(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "fastl4" | "fastl4-route-friendly" | "full-acceleration" | "apm-forwarding-fastl4" => {
            "fastl4"
        }
        "fasthttp" => "http",
        "cookie" => "persist-cookie",
        "source_addr" => "persist-source-addr",
        "dest_addr" => "persist-dest-addr",
        "ssl" => "persist-ssl",
        "universal" => "persist-universal",
        "hash" => "persist-hash",
        "msrdp" => "persist-msrdp",
        "sip_info" => "persist-sip",
        n if n == "tcp"
            || n.starts_with("tcp-")
            || n.starts_with("f5-tcp")
            || n.starts_with("mptcp") =>
        {
            "tcp"
        }
        n if n == "http" || n.starts_with("http-") || n.starts_with("http_") => "http",
        n if n.starts_with("clientssl") => "client-ssl",
        n if n.starts_with("serverssl") => "server-ssl",
        n if n.starts_with("udp") => "udp",
        _ => "",
    }
}

/// One spelling for bigpipe's and tmsh's profile types.
fn flavour(kind: &str) -> String {
    match kind.to_ascii_lowercase().as_str() {
        "clientssl" | "client-ssl" => "client-ssl".into(),
        "serverssl" | "server-ssl" => "server-ssl".into(),
        "fastl4" => "fastl4".into(),
        "fasthttp" => "http".into(),
        other => other.to_string(),
    }
}

impl Model {
    pub(super) fn profile(&mut self, kind: &str, written: &str, statement: &Statement) {
        let mut profile = Profile {
            at: statement.at,
            flavour: flavour(kind),
            ..Profile::default()
        };
        self.profile_settings(statement.children(), &mut profile);
        if let Some(parent) = profile.settings.remove("defaults-from") {
            profile.parent = Some(parent);
        }
        // bigpipe v9: `profile persist NAME { mode cookie }`.
        if profile.flavour == "persist" {
            let mode = profile.settings.get("mode").cloned().unwrap_or_default();
            profile.flavour = format!("persist-{}", mode.replace('_', "-"));
        }
        self.profiles.insert(written.to_string(), profile);
    }

    fn profile_settings(&mut self, statements: &[Statement], profile: &mut Profile) {
        for attribute in attributes(statements, &KEYS) {
            match attribute.key.as_str() {
                "cert-key-chain" => {
                    for entry in attribute.block.unwrap_or(&[]) {
                        let mut pair = Profile::default();
                        self.profile_settings(entry.children(), &mut pair);
                        if let (Some(cert), Some(key)) =
                            (pair.settings.get("cert"), pair.settings.get("key"))
                        {
                            profile.certificates.push(Certificate {
                                cert: cert.clone(),
                                key: key.clone(),
                                chain: pair.settings.get("chain").filter(|c| *c != "none").cloned(),
                                encrypted: pair.settings.contains_key("passphrase"),
                            });
                        }
                    }
                }
                // A header, not a name: kept as written.
                "header-insert" => {
                    let value = attribute.value().to_string();
                    profile
                        .settings
                        .entry("header-insert".into())
                        .or_insert(value);
                }
                key if attribute.known => {
                    let value = name(attribute.value()).to_string();
                    profile.settings.entry(key.to_string()).or_insert(value);
                }
                _ => {
                    if let Some(block) = attribute.block {
                        self.profile_settings(block, profile);
                    }
                }
            }
        }
        if let (Some(cert), Some(key)) = (profile.settings.get("cert"), profile.settings.get("key"))
        {
            if profile.certificates.is_empty() && cert != "none" {
                profile.certificates.push(Certificate {
                    cert: cert.clone(),
                    key: key.clone(),
                    chain: profile
                        .settings
                        .get("chain")
                        .filter(|c| *c != "none")
                        .cloned(),
                    encrypted: profile.settings.contains_key("passphrase"),
                });
            }
        }
    }

    /// What profile `reference` does, following its `defaults-from` chain:
    /// settings of the profile win over its parent's.
    pub(super) fn role(&self, reference: &str) -> Role {
        let mut settings = std::collections::BTreeMap::new();
        let mut certificates: Vec<Certificate> = Vec::new();
        let mut current = reference.to_string();
        let mut kind = String::new();
        for _ in 0..16 {
            match find(&self.profiles, &current) {
                Some((_, profile)) => {
                    for (key, value) in &profile.settings {
                        settings.entry(key.clone()).or_insert_with(|| value.clone());
                    }
                    if certificates.is_empty() {
                        certificates = profile.certificates.clone();
                    }
                    if kind.is_empty() && !profile.flavour.is_empty() {
                        kind = profile.flavour.clone();
                    }
                    match &profile.parent {
                        Some(parent) if name(parent) != name(&current) => current = parent.clone(),
                        _ => break,
                    }
                }
                None => {
                    if kind.is_empty() {
                        kind = builtin(name(&current)).to_string();
                    }
                    // F5's built-in client-ssl profiles present its default
                    // certificate.
                    if kind == "client-ssl" && certificates.is_empty() {
                        certificates.push(Certificate {
                            cert: "default.crt".into(),
                            key: "default.key".into(),
                            ..Certificate::default()
                        });
                    }
                    break;
                }
            }
        }
        let get = |key: &str| {
            settings
                .get(key)
                .cloned()
                .filter(|v| v != "none" && !v.is_empty())
        };
        match kind.as_str() {
            "tcp" | "fastl4" => Role::Tcp(match get("idle-timeout").as_deref() {
                Some("indefinite") => INDEFINITE,
                Some(seconds) => seconds.parse().unwrap_or(F5_IDLE_TIMEOUT),
                None => F5_IDLE_TIMEOUT,
            }),
            "http" => Role::Http {
                header_insert: get("header-insert"),
            },
            "client-ssl" => {
                // A chain or passphrase set on the profile (or its parent)
                // applies to the certificate its cert/key pair named.
                let chain = get("chain");
                let encrypted = settings.contains_key("passphrase");
                for certificate in &mut certificates {
                    certificate.chain = certificate.chain.take().or_else(|| chain.clone());
                    certificate.encrypted |= encrypted;
                }
                Role::ClientSsl(certificates)
            }
            "server-ssl" => Role::ServerSsl {
                ca: get("ca-file").filter(|_| get("peer-cert-mode").as_deref() == Some("require")),
                server_name: get("server-name"),
            },
            "persist-cookie" => {
                let method = get("method").or_else(|| get("cookie-mode"));
                if method.as_deref().is_some_and(|m| m != "insert") {
                    return Role::Other(format!(
                        "cookie persistence by {}",
                        method.unwrap_or_default()
                    ));
                }
                Role::Cookie {
                    name: get("cookie-name"),
                    expiration: get("expiration")
                        .or_else(|| get("cookie-expiration"))
                        .and_then(|e| expiration(&e)),
                }
            }
            "persist-source-addr" => Role::SourceAddress {
                timeout: get("timeout"),
                mask: get("mask"),
                across: [
                    "match-across-services",
                    "match-across-virtuals",
                    "match-across-pools",
                ]
                .into_iter()
                .filter(|key| get(key).as_deref() == Some("enabled"))
                .collect(),
            },
            "" => Role::Undefined,
            other => Role::Other(other.replace("persist-", "persistence ").replace('-', " ")),
        }
    }

    /// Where profile `reference` is defined, for notes.
    pub(super) fn profile_at(&self, reference: &str) -> Option<Position> {
        find(&self.profiles, reference).map(|(_, profile)| profile.at)
    }
}

/// An F5 cookie expiration (`8:0:0`, `1:0:0:0`, `3600`) in seconds.
pub(super) fn expiration(text: &str) -> Option<u64> {
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
    parts
        .iter()
        .zip(multipliers)
        .try_fold(0u64, |sum, (part, unit)| {
            sum.checked_add(part.checked_mul(*unit)?)
        })
}

/// An http profile's `header-insert` (`"X-Site: paris"`) as a field
/// vipgate can set: a valid name and a value without iRule expressions.
pub(super) fn header_field(text: &str) -> Option<(String, String)> {
    let (field, value) = text.split_once(':')?;
    let (field, value) = (field.trim(), value.trim());
    let plain = !value.contains('[') && !value.contains('$');
    // Framing and persistence fields are vipgate's own.
    let settable = !crate::config::is_managed_header(field);
    let valid = http::HeaderName::from_bytes(field.as_bytes()).is_ok()
        && http::HeaderValue::from_str(value).is_ok();
    (plain && valid && settable).then(|| (field.to_string(), value.to_string()))
}

/// Which side an undefined TLS profile is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsSide {
    Client,
    Server,
    /// Its name says TLS, nothing says which side.
    Unknown,
}

/// Whether a profile not defined in the file is TLS, and on which side:
/// by the virtual's `context` for it, else by its name. `None`: not TLS
/// by its name.
pub(super) fn undefined_tls(profile: &str, context: Option<&str>) -> Option<TlsSide> {
    let lower = name(profile).to_ascii_lowercase();
    if !lower.contains("ssl") && !lower.contains("tls") {
        return None;
    }
    Some(match context {
        Some("clientside") => TlsSide::Client,
        Some("serverside") => TlsSide::Server,
        _ if lower.contains("client") => TlsSide::Client,
        _ if lower.contains("server") => TlsSide::Server,
        _ => TlsSide::Unknown,
    })
}

/// A profile's name as a file name: what the operator exports it as.
pub(super) fn export_name(profile: &str) -> String {
    name(profile)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_expirations() {
        assert_eq!(expiration("8:0:0"), Some(8 * 3600));
        assert_eq!(expiration("1:0:0:0"), Some(86_400));
        assert_eq!(expiration("0"), Some(0));
        assert_eq!(expiration("soon"), None);
        assert_eq!(expiration("99999999999999999:0:0:0"), None);
    }

    #[test]
    fn header_insert_carries_plain_fields_only() {
        assert_eq!(
            header_field("X-Site: paris"),
            Some(("X-Site".into(), "paris".into()))
        );
        assert_eq!(
            header_field(" X-Forwarded-Proto :https "),
            Some(("X-Forwarded-Proto".into(), "https".into()))
        );
        for not_plain in [
            "X-Forwarded-For: [IP::client_addr]",
            "X-Vs: $vs",
            "no colon",
            "Bad Name: x",
            "Connection: close",
            "Content-Length: 5",
        ] {
            assert_eq!(header_field(not_plain), None, "{not_plain}");
        }
    }

    #[test]
    fn built_in_profiles_by_name() {
        assert_eq!(builtin("tcp-lan-optimized"), "tcp");
        assert_eq!(builtin("fastL4"), "fastl4");
        assert_eq!(builtin("clientssl-secure"), "client-ssl");
        assert_eq!(builtin("serverssl-insecure-compatible"), "server-ssl");
        assert_eq!(builtin("source_addr"), "persist-source-addr");
        assert_eq!(builtin("oneconnect"), "");
    }
}
