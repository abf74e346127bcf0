//! Session persistence in the configuration: by URL parameter (jvmRoute)
//! or by a cookie vipgate inserts (its lifetime and attributes), the
//! shared secret that seals it, and the checks that need the pools too.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::plan::{Mode, PoolPlan, VirtualPlan};
use super::raw::{RawConfig, RawDuration};
use super::tls::{SessionTickets, Tls};
use super::validate::Checker;

/// Shortest secret accepted for sealing cookies: 16 bytes.
pub const MIN_SECRET_BYTES: usize = 16;

// What it means: the plan.

/// How requests of one session stay on one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// Every request is balanced on its own.
    None,
    /// The route after the last `.` of this parameter's value (path
    /// parameter or query) names the member (jvmRoute). With `in_cookie`, a
    /// cookie of the same name (any case) is read when the URL has none.
    UrlParam { name: String, in_cookie: bool },
    /// vipgate inserts a cookie naming the member, sealed with the secret
    /// in `secret_file`.
    Cookie {
        name: String,
        lifetime: CookieLifetime,
        secret_file: PathBuf,
        attributes: CookieAttributes,
    },
}

/// The attributes of an inserted persistence cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttributes {
    /// `HttpOnly`: scripts in the page cannot read it. Default on.
    pub http_only: bool,
    /// `Secure`: sent back over HTTPS only. Default: when the client came
    /// over TLS.
    pub secure: CookieSecure,
    /// `SameSite`. Default `Lax`.
    pub same_site: SameSite,
    /// `Domain`, to share the cookie with sibling hosts. Default none
    /// (this host only).
    pub domain: Option<String>,
    /// `Path`. Default `/`.
    pub path: String,
}

impl Default for CookieAttributes {
    fn default() -> CookieAttributes {
        CookieAttributes {
            http_only: true,
            secure: CookieSecure::Auto,
            same_site: SameSite::Lax,
            domain: None,
            path: "/".into(),
        }
    }
}

/// When an inserted cookie carries `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSecure {
    /// When the client came over TLS (`secure` not set).
    Auto,
    /// Always (`secure = true`): for a virtual behind a TLS offloader.
    Always,
    /// Never (`secure = false`).
    Never,
}

/// The `SameSite` attribute of an inserted cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    Lax,
    Strict,
    /// Sent with cross-site requests too; browsers require `Secure` with it.
    None,
    /// `same_site = "off"`: no attribute (the browser's default applies).
    #[serde(rename = "off")]
    Omitted,
}

/// How long an inserted persistence cookie lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieLifetime {
    /// Until the browser closes; the token itself does not expire.
    Session,
    /// `Max-Age`; the token expires with it and is renewed when half of it
    /// has passed.
    MaxAge(Duration),
}

impl std::fmt::Display for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Persistence::None => f.write_str("no persistence"),
            Persistence::UrlParam { name, in_cookie } => {
                write!(f, "persistence by URL parameter {name}")?;
                if *in_cookie {
                    f.write_str(" or its cookie")?;
                }
                Ok(())
            }
            Persistence::Cookie {
                name,
                lifetime,
                secret_file,
                attributes,
            } => {
                write!(f, "persistence by inserted cookie {name}")?;
                if let CookieLifetime::MaxAge(max_age) = lifetime {
                    write!(f, " for {}", humantime::format_duration(*max_age))?;
                }
                write!(f, " (Path={}", attributes.path)?;
                if let Some(domain) = &attributes.domain {
                    write!(f, ", Domain={domain}")?;
                }
                if attributes.http_only {
                    f.write_str(", HttpOnly")?;
                }
                f.write_str(match attributes.secure {
                    CookieSecure::Auto => ", Secure over TLS",
                    CookieSecure::Always => ", Secure",
                    CookieSecure::Never => "",
                })?;
                f.write_str(match attributes.same_site {
                    SameSite::Lax => ", SameSite=Lax",
                    SameSite::Strict => ", SameSite=Strict",
                    SameSite::None => ", SameSite=None",
                    SameSite::Omitted => "",
                })?;
                write!(f, "), secret {}", secret_file.display())
            }
        }
    }
}

/// Default `source_address.timeout`: 180 s, as F5's `source_addr`.
pub const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(180);

/// `persistence = { source_address = { ... } }`: a client address goes
/// back to the member it used before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePersistence {
    /// How long a record outlives the client's last connection (TCP) or
    /// request (HTTP). Default 180 s.
    pub timeout: Duration,
    /// IPv4 clients sharing this many leading bits share a record. Default
    /// 32 (each address its own).
    pub ipv4_prefix: u8,
    /// The same for IPv6 clients. Default 128.
    pub ipv6_prefix: u8,
}

impl SourcePersistence {
    /// The part of `client` that names its record: the address cut to its
    /// prefix.
    pub fn record_key(&self, client: std::net::IpAddr) -> std::net::IpAddr {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        match client {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.ipv4_prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl std::fmt::Display for SourcePersistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "persistence by source address (/{}, IPv6 /{}) for {}",
            self.ipv4_prefix,
            self.ipv6_prefix,
            humantime::format_duration(self.timeout)
        )
    }
}

// As written: the raw serde types.

/// `persistence = { url_param = "jsessionid" }` or
/// `persistence = { cookie = "GWELB", max_age = "8h" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersistence {
    pub url_param: Option<Spanned<String>>,
    pub in_cookie: Option<bool>,
    pub cookie: Option<Spanned<String>>,
    pub max_age: Option<Spanned<RawDuration>>,
    pub http_only: Option<Spanned<bool>>,
    pub secure: Option<Spanned<bool>>,
    pub same_site: Option<Spanned<SameSite>>,
    pub domain: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub source_address: Option<Spanned<RawSourceAddress>>,
}

/// `source_address = { timeout = "180s", mask = 24, ipv6_mask = 64 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceAddress {
    pub timeout: Option<Spanned<RawDuration>>,
    pub mask: Option<Spanned<i64>>,
    pub ipv6_mask: Option<Spanned<i64>>,
}

impl RawPersistence {
    /// The settings given besides `source_address`, with where.
    fn other_kinds(&self) -> impl Iterator<Item = (&'static str, std::ops::Range<usize>)> + '_ {
        [
            ("url_param", self.url_param.as_ref().map(|v| v.span())),
            ("in_cookie", self.in_cookie.map(|_| 0..0)),
            ("cookie", self.cookie.as_ref().map(|v| v.span())),
            ("max_age", self.max_age.as_ref().map(|v| v.span())),
            ("http_only", self.http_only.as_ref().map(|v| v.span())),
            ("secure", self.secure.as_ref().map(|v| v.span())),
            ("same_site", self.same_site.as_ref().map(|v| v.span())),
            ("domain", self.domain.as_ref().map(|v| v.span())),
            ("path", self.path.as_ref().map(|v| v.span())),
        ]
        .into_iter()
        .filter_map(|(name, span)| span.map(|span| (name, span)))
    }
}

/// `[persistence]`: what every cookie-persistence virtual shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersistenceSettings {
    pub secret_file: Option<Spanned<String>>,
}

// From one to the other: validation.

impl Checker<'_> {
    pub(super) fn persistence(
        &mut self,
        key: &str,
        raw: &Spanned<RawPersistence>,
        file: &RawConfig,
    ) -> Option<Persistence> {
        let persistence = raw.get_ref();
        if persistence.source_address.is_some() {
            // Read by `source_persistence`, for either mode.
            return Some(Persistence::None);
        }
        match (&persistence.url_param, &persistence.cookie) {
            (Some(_), Some(_)) | (None, None) => {
                self.report(
                    key,
                    Some(raw.span()),
                    "persistence needs exactly one of `url_param` and `cookie`".into(),
                    Some("persistence = { url_param = \"jsessionid\" } or persistence = { cookie = \"GWELB\", max_age = \"8h\" }".into()),
                );
                None
            }
            (Some(name), None) => {
                let cookie_only = [
                    (
                        "http_only",
                        persistence.http_only.as_ref().map(|v| v.span()),
                    ),
                    ("secure", persistence.secure.as_ref().map(|v| v.span())),
                    (
                        "same_site",
                        persistence.same_site.as_ref().map(|v| v.span()),
                    ),
                    ("domain", persistence.domain.as_ref().map(|v| v.span())),
                    ("path", persistence.path.as_ref().map(|v| v.span())),
                ];
                for (field, span) in cookie_only {
                    if let Some(span) = span {
                        self.report(
                            &format!("{key}.{field}"),
                            Some(span),
                            format!("{field} is an attribute of an inserted cookie"),
                            Some("remove it: the application sets its own session cookie".into()),
                        );
                    }
                }
                if persistence.max_age.is_some() {
                    self.report(
                        &format!("{key}.max_age"),
                        Some(raw.span()),
                        "max_age only applies to an inserted cookie".into(),
                        Some("remove it: the application owns its session id".into()),
                    );
                }
                let valid = self.token(&format!("{key}.url_param"), name, "parameter");
                Some(Persistence::UrlParam {
                    name: valid?,
                    in_cookie: persistence.in_cookie.unwrap_or(false),
                })
            }
            (None, Some(name)) => {
                if persistence.in_cookie.is_some() {
                    self.report(
                        &format!("{key}.in_cookie"),
                        Some(raw.span()),
                        "in_cookie only applies to url_param persistence".into(),
                        Some("remove it".into()),
                    );
                }
                let name = self.token(&format!("{key}.cookie"), name, "cookie");
                let lifetime = match &persistence.max_age {
                    None => CookieLifetime::Session,
                    Some(value) => CookieLifetime::MaxAge(self.duration(
                        &format!("{key}.max_age"),
                        Some(value),
                        Duration::from_secs(8 * 3600),
                    )),
                };
                let secret_file = file
                    .persistence
                    .as_ref()
                    .and_then(|p| p.get_ref().secret_file.as_ref());
                let Some(secret_file) = secret_file else {
                    self.report(
                        key,
                        Some(raw.span()),
                        "an inserted cookie is sealed with a secret, and none is configured".into(),
                        Some("add [persistence] secret_file = \"/etc/vipgate/cookie-secret\" and create it with `head -c 32 /dev/urandom > /etc/vipgate/cookie-secret`; give every instance of a pair the same file".into()),
                    );
                    return None;
                };
                let attributes = self.cookie_attributes(key, persistence);
                Some(Persistence::Cookie {
                    name: name?,
                    lifetime,
                    secret_file: secret_file.get_ref().into(),
                    attributes: attributes?,
                })
            }
        }
    }

    /// `persistence.source_address` of a virtual of either mode: `None`
    /// when it is wrong, `Some(None)` when it is not set.
    pub(super) fn source_persistence(
        &mut self,
        key: &str,
        raw: Option<&Spanned<RawPersistence>>,
    ) -> Option<Option<SourcePersistence>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let Some(source) = &raw.get_ref().source_address else {
            return Some(None);
        };
        let key = format!("{key}.persistence");
        let mut valid = true;
        for (field, span) in raw.get_ref().other_kinds() {
            valid = false;
            let span = if span.is_empty() { raw.span() } else { span };
            self.report(
                &format!("{key}.{field}"),
                Some(span),
                format!("{field} cannot be combined with source_address persistence"),
                Some("a virtual persists one way: keep source_address, or remove it and use url_param or cookie".into()),
            );
        }
        let given = source.get_ref();
        let timeout = self.duration(
            &format!("{key}.source_address.timeout"),
            given.timeout.as_ref(),
            DEFAULT_SOURCE_TIMEOUT,
        );
        let mut prefix = |name: &str, value: &Option<Spanned<i64>>, bits: i64| match value {
            None => Some(bits as u8),
            Some(value) => self
                .integer_in(
                    &format!("{key}.source_address.{name}"),
                    value,
                    0,
                    bits,
                    "a prefix length in bits",
                )
                .map(|n| n as u8),
        };
        let ipv4_prefix = prefix("mask", &given.mask, 32);
        let ipv6_prefix = prefix("ipv6_mask", &given.ipv6_mask, 128);
        let plan = SourcePersistence {
            timeout,
            ipv4_prefix: ipv4_prefix?,
            ipv6_prefix: ipv6_prefix?,
        };
        valid.then_some(Some(plan))
    }

    /// `http_only`, `secure`, `same_site`, `domain` and `path` of an
    /// inserted cookie.
    fn cookie_attributes(
        &mut self,
        key: &str,
        persistence: &RawPersistence,
    ) -> Option<CookieAttributes> {
        let defaults = CookieAttributes::default();
        let secure = match persistence.secure.as_ref().map(|s| *s.get_ref()) {
            None => CookieSecure::Auto,
            Some(true) => CookieSecure::Always,
            Some(false) => CookieSecure::Never,
        };
        let same_site = persistence
            .same_site
            .as_ref()
            .map_or(defaults.same_site, |s| *s.get_ref());
        let mut valid = true;
        if same_site == SameSite::None && secure != CookieSecure::Always {
            valid = false;
            self.report(
                &format!("{key}.same_site"),
                persistence.same_site.as_ref().map(|s| s.span()),
                "browsers drop a SameSite=None cookie that is not Secure".into(),
                Some(
                    "add secure = true (the site must be HTTPS), or use same_site = \"lax\"".into(),
                ),
            );
        }
        // Attribute values go into Set-Cookie as written: no `;`, no
        // spaces or control characters.
        let attribute = |value: &str| {
            !value.is_empty()
                && value.len() <= 255
                && value
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        };
        let domain = persistence.domain.as_ref().map(|d| d.get_ref().clone());
        if let Some(raw) = &persistence.domain {
            if !attribute(raw.get_ref()) {
                valid = false;
                self.report(
                    &format!("{key}.domain"),
                    Some(raw.span()),
                    format!("\"{}\" is not a cookie domain", raw.get_ref()),
                    Some("a host name such as \"example.com\"".into()),
                );
            }
        }
        let path = persistence
            .path
            .as_ref()
            .map_or(defaults.path, |p| p.get_ref().clone());
        if let Some(raw) = &persistence.path {
            if !attribute(raw.get_ref()) || !raw.get_ref().starts_with('/') {
                valid = false;
                self.report(
                    &format!("{key}.path"),
                    Some(raw.span()),
                    format!("\"{}\" is not a cookie path", raw.get_ref()),
                    Some("a path from the site's root, such as \"/\" or \"/gwe\"".into()),
                );
            }
        }
        valid.then_some(CookieAttributes {
            http_only: persistence
                .http_only
                .as_ref()
                .map_or(defaults.http_only, |h| *h.get_ref()),
            secure,
            same_site,
            domain,
            path,
        })
    }

    /// A cookie or parameter name: an HTTP token (RFC 9110 `tchar`s).
    fn token(&mut self, key: &str, value: &Spanned<String>, what: &str) -> Option<String> {
        let name = value.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if valid {
            Some(name.clone())
        } else {
            self.report(
                key,
                Some(value.span()),
                format!("\"{name}\" is not a usable {what} name"),
                Some("use letters, digits, '-' and '_' (at most 64)".into()),
            );
            None
        }
    }

    /// Checks that need the pools and virtuals together: URL persistence
    /// toward a pool without routes, a secret nobody uses.
    pub(super) fn persistence_fit(
        &mut self,
        virtuals: &[VirtualPlan],
        pools: &std::collections::BTreeMap<String, PoolPlan>,
        file: &RawConfig,
    ) {
        let mut cookies = false;
        for virtual_server in virtuals {
            let Mode::Http(http) = &virtual_server.mode else {
                continue;
            };
            match &http.persistence {
                Persistence::UrlParam { name, .. } => {
                    let Some(pool) = virtual_server.pool.as_ref().and_then(|p| pools.get(p)) else {
                        continue;
                    };
                    if pool.members.iter().all(|m| m.route.is_none()) {
                        self.warnings.push(format!(
                            "virtuals.{}.persistence: no member of pool {} has a `route`, so the {name} parameter never picks a member",
                            virtual_server.name, pool.name
                        ));
                    }
                }
                Persistence::Cookie { .. } => cookies = true,
                Persistence::None => {}
            }
        }
        let tickets = virtuals
            .iter()
            .any(|v| matches!(&v.tls, Tls::Terminate(t) if matches!(t.tickets, SessionTickets::Shared(_))));
        if !cookies && !tickets && file.persistence.is_some() {
            self.warnings.push(
                "persistence.secret_file: no virtual uses cookie persistence or terminates TLS"
                    .into(),
            );
        }
    }
}
