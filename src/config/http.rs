//! HTTP virtuals in the configuration: `mode = "http"`, session
//! persistence (URL parameter or inserted cookie), member routes, the
//! shared cookie secret, and the guards on what a client may send.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::plan::*;
use super::raw::*;
use super::validate::Checker;

/// Default `header_timeout`: 10 s for a client to send a request's headers.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `keepalive_timeout`: 60 s between requests on one connection.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `max_header_size`: 32 KiB of request line and headers.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 * 1024;

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

/// Shortest secret accepted for sealing cookies: 16 bytes.
pub const MIN_SECRET_BYTES: usize = 16;

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
        if !cookies && file.persistence.is_some() {
            self.warnings
                .push("persistence.secret_file: no virtual uses cookie persistence".into());
        }
    }
}
