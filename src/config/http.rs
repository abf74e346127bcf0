//! HTTP virtuals in the configuration: `mode = "http"`, session
//! persistence (URL parameter or inserted cookie), member routes, the
//! shared cookie secret, and the guards on what a client may send.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::plan::{Mode, PoolPlan, VirtualMode, VirtualPlan};
use super::raw::{RawConfig, RawDuration, RawVirtual};
use super::snat::ProxyProtocol;
use super::tls::{SessionTickets, Tls};
use super::validate::Checker;

/// Default `header_timeout`: 10 s for a client to send a request's headers.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `keepalive_timeout`: 60 s between requests on one connection.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `max_header_size`: 32 KiB of request line and headers.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 * 1024;

/// Shortest secret accepted for sealing cookies: 16 bytes.
pub const MIN_SECRET_BYTES: usize = 16;

// What it means: the plan.

/// The settings of a `mode = "http"` virtual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPlan {
    pub persistence: Persistence,
    /// Most time a client may take to send a request's line and headers,
    /// counted from its first byte; then it gets 408. Default 10 s.
    pub header_timeout: Duration,
    /// A client connection waiting for its next request is closed after
    /// this long. Default 60 s.
    pub keepalive_timeout: Duration,
    /// Largest request line and headers, in bytes; larger gets 431.
    /// Default 32 KiB.
    pub max_header_size: usize,
}

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
    },
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

impl std::fmt::Display for HttpPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        match &self.persistence {
            Persistence::None => f.write_str("no persistence")?,
            Persistence::UrlParam { name, in_cookie } => {
                write!(f, "persistence by URL parameter {name}")?;
                if *in_cookie {
                    f.write_str(" or its cookie")?;
                }
            }
            Persistence::Cookie {
                name,
                lifetime,
                secret_file,
            } => {
                write!(f, "persistence by inserted cookie {name}")?;
                if let CookieLifetime::MaxAge(max_age) = lifetime {
                    write!(f, " for {}", show(*max_age))?;
                }
                write!(f, ", secret {}", secret_file.display())?;
            }
        }
        write!(
            f,
            "; header_timeout {}, keepalive_timeout {}, max_header_size {}",
            show(self.header_timeout),
            show(self.keepalive_timeout),
            self.max_header_size
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
}

/// `[persistence]`: what every cookie-persistence virtual shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersistenceSettings {
    pub secret_file: Option<Spanned<String>>,
}

// From one to the other: validation.

impl Checker<'_> {
    /// The `mode` of a virtual and, for HTTP, its settings. Keys that only
    /// mean something for HTTP are refused on a TCP virtual.
    pub(super) fn mode(
        &mut self,
        key: &str,
        raw_virtual: &Spanned<RawVirtual>,
        tls: Option<&Tls>,
        file: &RawConfig,
    ) -> Option<Mode> {
        let virtual_server = raw_virtual.get_ref();
        let mode = virtual_server
            .mode
            .as_ref()
            .map_or(VirtualMode::Tcp, |m| *m.get_ref());
        if mode == VirtualMode::Tcp {
            let http_only = [
                (
                    "persistence",
                    virtual_server.persistence.as_ref().map(|p| p.span()),
                ),
                (
                    "header_timeout",
                    virtual_server.header_timeout.as_ref().map(|p| p.span()),
                ),
                (
                    "keepalive_timeout",
                    virtual_server.keepalive_timeout.as_ref().map(|p| p.span()),
                ),
                (
                    "max_header_size",
                    virtual_server.max_header_size.as_ref().map(|p| p.span()),
                ),
            ];
            for (field, span) in http_only {
                if let Some(span) = span {
                    self.report(
                        &format!("{key}.{field}"),
                        Some(span),
                        format!("`{field}` only applies to HTTP virtuals"),
                        Some("add mode = \"http\" to the virtual, or remove the key".into()),
                    );
                }
            }
            return Some(Mode::Tcp);
        }
        let mode_span = virtual_server.mode.as_ref().map(|m| m.span());
        if let Some(Tls::Passthrough { .. }) = tls {
            self.report(
                &format!("{key}.tls.mode"),
                mode_span.clone(),
                "an HTTP virtual must read the requests, and TLS passthrough hides them".into(),
                Some("use tls = { mode = \"terminate\", ... }, or leave mode = \"tcp\"".into()),
            );
        }
        if virtual_server.proxy_protocol.unwrap_or_default() != ProxyProtocol::Off {
            self.report(
                &format!("{key}.proxy_protocol"),
                mode_span,
                "an HTTP virtual does not send a PROXY protocol header".into(),
                Some("remove proxy_protocol: members learn the client's address from X-Forwarded-For".into()),
            );
        }
        let header_timeout = self.duration(
            &format!("{key}.header_timeout"),
            virtual_server.header_timeout.as_ref(),
            DEFAULT_HEADER_TIMEOUT,
        );
        let keepalive_timeout = self.duration(
            &format!("{key}.keepalive_timeout"),
            virtual_server.keepalive_timeout.as_ref(),
            DEFAULT_KEEPALIVE_TIMEOUT,
        );
        let max_header_size = match &virtual_server.max_header_size {
            None => Some(DEFAULT_MAX_HEADER_SIZE),
            Some(value) => self.integer_in(
                &format!("{key}.max_header_size"),
                value,
                1024,
                1024 * 1024,
                "a size in bytes",
            ),
        };
        let persistence = match &virtual_server.persistence {
            None => Some(Persistence::None),
            Some(raw) => self.persistence(&format!("{key}.persistence"), raw, file),
        };
        Some(Mode::Http(HttpPlan {
            persistence: persistence?,
            header_timeout,
            keepalive_timeout,
            max_header_size: max_header_size?,
        }))
    }

    fn persistence(
        &mut self,
        key: &str,
        raw: &Spanned<RawPersistence>,
        file: &RawConfig,
    ) -> Option<Persistence> {
        let persistence = raw.get_ref();
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
                Some(Persistence::Cookie {
                    name: name?,
                    lifetime,
                    secret_file: secret_file.get_ref().into(),
                })
            }
        }
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

    /// A member's `route`: the text after the last `.` of a session id, so
    /// it cannot hold a `.` itself.
    pub(super) fn route(&mut self, key: &str, value: &Spanned<String>) -> Option<String> {
        let route = value.get_ref();
        let valid = !route.is_empty()
            && route.len() <= 64
            && route
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Some(route.clone())
        } else {
            self.report(
                key,
                Some(value.span()),
                format!("\"{route}\" is not a usable route"),
                Some(
                    "use letters, digits, '-' and '_' as in a jvmRoute (\"GWE_Node1\"); no '.'"
                        .into(),
                ),
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
                    let pool = &pools[&virtual_server.pool];
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
            .any(|v| matches!(&v.tls, Tls::Terminate(t) if t.tickets != SessionTickets::Off));
        if !cookies && !tickets && file.persistence.is_some() {
            self.warnings.push(
                "persistence.secret_file: no virtual uses cookie persistence or terminates TLS"
                    .into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, ConfigError, Problem};

    const POOL: &str = r#"
[pools.gwe]
members = [ { address = "127.0.0.11:9081", route = "GWE_Node1" }, { address = "127.0.0.12:9081", route = "GWE_Node2" } ]
"#;

    fn with_virtual(lines: &str, rest: &str) -> String {
        format!(
            "[virtuals.web]\nlisten = \"127.0.0.100:8080\"\npool = \"gwe\"\n{lines}\n{POOL}{rest}"
        )
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, "t.toml") {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn http_plan(text: &str) -> HttpPlan {
        let plan = parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        match &plan.virtuals[0].mode {
            Mode::Http(http) => http.clone(),
            Mode::Tcp => panic!("not an HTTP virtual"),
        }
    }

    #[test]
    fn http_virtuals_get_documented_defaults_and_members_their_routes() {
        let text = with_virtual("mode = \"http\"", "");
        let http = http_plan(&text);
        assert_eq!(http.persistence, Persistence::None);
        assert_eq!(http.header_timeout, Duration::from_secs(10));
        assert_eq!(http.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(http.max_header_size, 32 * 1024);
        let plan = parse(&text, "t").unwrap();
        assert_eq!(
            plan.pools["gwe"].members[1].route.as_deref(),
            Some("GWE_Node2")
        );
        assert_eq!(
            parse(&with_virtual("", ""), "t").unwrap().virtuals[0].mode,
            Mode::Tcp
        );
    }

    #[test]
    fn both_kinds_of_persistence_are_read() {
        let url = http_plan(&with_virtual(
            "mode = \"http\"\npersistence = { url_param = \"jsessionid\", in_cookie = true }",
            "",
        ));
        assert_eq!(
            url.persistence,
            Persistence::UrlParam {
                name: "jsessionid".into(),
                in_cookie: true
            }
        );
        let cookie = http_plan(&with_virtual(
            "mode = \"http\"\npersistence = { cookie = \"GWELB\", max_age = \"8h\" }",
            "[persistence]\nsecret_file = \"/etc/vipgate/cookie-secret\"\n",
        ));
        assert_eq!(
            cookie.persistence,
            Persistence::Cookie {
                name: "GWELB".into(),
                lifetime: CookieLifetime::MaxAge(Duration::from_secs(8 * 3600)),
                secret_file: "/etc/vipgate/cookie-secret".into()
            }
        );
    }

    #[test]
    fn http_settings_on_a_tcp_virtual_are_refused() {
        let found = problems(&with_virtual(
            "persistence = { url_param = \"jsessionid\" }\nheader_timeout = \"5s\"",
            "",
        ));
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["virtuals.web.persistence", "virtuals.web.header_timeout"]
        );
        assert!(found[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("mode = \"http\""));
    }

    #[test]
    fn cookie_persistence_needs_a_secret_and_one_kind_at_a_time() {
        let found = problems(&with_virtual(
            "mode = \"http\"\npersistence = { cookie = \"GWELB\" }",
            "",
        ));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].key, "virtuals.web.persistence");
        assert!(found[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("head -c 32 /dev/urandom"));

        let found = problems(&with_virtual(
            "mode = \"http\"\npersistence = { cookie = \"GWELB\", url_param = \"jsessionid\" }",
            "",
        ));
        assert!(found[0].message.contains("exactly one of"), "{found:#?}");
        let found = problems(&with_virtual(
            "mode = \"http\"\npersistence = { url_param = \"jsession id\", max_age = \"1h\" }",
            "",
        ));
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "virtuals.web.persistence.max_age",
                "virtuals.web.persistence.url_param"
            ]
        );
    }

    #[test]
    fn routes_must_be_unique_and_free_of_dots() {
        let text = r#"
[virtuals.web]
listen = "127.0.0.100:8080"
pool = "gwe"
mode = "http"
[pools.gwe]
members = [ { address = "127.0.0.11:9081", route = "A" }, { address = "127.0.0.12:9081", route = "A" }, { address = "127.0.0.13:9081", route = "B.1" } ]
"#;
        let found = problems(text);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(found[0].key, "pools.gwe.members[1].route");
        assert!(found[0].message.contains("also the route of members[0]"));
        assert_eq!(found[1].key, "pools.gwe.members[2].route");
    }

    #[test]
    fn http_cannot_see_through_passthrough_or_send_proxy_headers() {
        let found = problems(&with_virtual(
            "mode = \"http\"\nproxy_protocol = \"v2\"\ntls = { mode = \"passthrough\" }\nmax_header_size = 100",
            "",
        ));
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "virtuals.web.tls.mode",
                "virtuals.web.proxy_protocol",
                "virtuals.web.max_header_size"
            ]
        );
    }

    #[test]
    fn url_persistence_without_routes_and_an_unused_secret_are_warnings() {
        let text = "[virtuals.web]\nlisten = \"127.0.0.100:8080\"\npool = \"p\"\nmode = \"http\"\npersistence = { url_param = \"jsessionid\" }\n[pools.p]\nmembers = [ { address = \"127.0.0.11:1\" } ]\n[persistence]\nsecret_file = \"s\"\n";
        let plan = parse(text, "t").unwrap();
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
        assert!(plan.warnings[0].contains("no member of pool p has a `route`"));
        assert!(plan.warnings[1].contains("no virtual uses cookie persistence"));
    }
}
