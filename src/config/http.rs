//! HTTP virtuals in the configuration: `mode = "http"`, what it offers by
//! ALPN, the guards on what a client may send, the header fields it
//! inserts, and member routes. Session persistence is `persistence`.

use std::time::Duration;

use toml::Spanned;

use super::persistence::Persistence;
use super::plan::{Mode, VirtualMode};
use super::raw::{RawConfig, RawVirtual};
use super::snat::ProxyProtocol;
use super::tls::Tls;
use super::validate::Checker;

/// Default `header_timeout`: 10 s for a client to send a request's headers.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `keepalive_timeout`: 60 s between requests on one connection.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `max_header_size`: 32 KiB of request line and headers.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 * 1024;

/// Default `max_concurrent_streams`: 100 requests at once on one HTTP/2
/// connection (what browsers expect; HTTP/2's own advice is at least 100).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

/// What an HTTP virtual offers by ALPN when `alpn` is not set.
pub const HTTP_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// Header fields `request_headers` and `response_headers` may not set:
/// the message's framing, hop-by-hop fields, and what vipgate writes
/// itself.
const MANAGED_FIELDS: [&str; 12] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
    "set-cookie",
    "cookie",
    "x-forwarded-for",
];

/// Whether header field `name` is one `request_headers` and
/// `response_headers` may not set (see [`MANAGED_FIELDS`]).
pub fn is_managed_header(name: &str) -> bool {
    MANAGED_FIELDS
        .iter()
        .any(|managed| managed.eq_ignore_ascii_case(name))
}

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
    /// Largest request line and headers, in bytes; larger gets 431 (over
    /// HTTP/2, the stream is refused). Default 32 KiB.
    pub max_header_size: usize,
    /// Most requests in flight at once on one HTTP/2 connection. Default
    /// 100.
    pub max_concurrent_streams: u32,
    /// Header fields set on every request to a member (F5's http profile
    /// `header-insert`), replacing any the client sent of the same name.
    pub request_headers: Vec<(String, String)>,
    /// Header fields set on every response to a client
    /// (`Strict-Transport-Security`, ...), vipgate's own answers included.
    pub response_headers: Vec<(String, String)>,
    /// Answer every request with this redirect instead of forwarding it
    /// (the virtual then has no pool).
    pub redirect: Option<super::Redirect>,
}

impl std::fmt::Display for HttpPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        match &self.redirect {
            Some(redirect) => write!(f, "{redirect}")?,
            None => write!(f, "{}", self.persistence)?,
        }
        write!(
            f,
            "; header_timeout {}, keepalive_timeout {}, max_header_size {}, HTTP/2 streams {}",
            show(self.header_timeout),
            show(self.keepalive_timeout),
            self.max_header_size,
            self.max_concurrent_streams,
        )?;
        for (name, value) in &self.request_headers {
            write!(f, "; request {name}: {value}")?;
        }
        for (name, value) in &self.response_headers {
            write!(f, "; response {name}: {value}")?;
        }
        Ok(())
    }
}

// As written: the raw serde types.

// From one to the other: validation.

impl Checker<'_> {
    /// The `mode` of a virtual and, for HTTP, its settings. Keys that only
    /// mean something for HTTP are refused on a TCP virtual.
    pub(super) fn mode(
        &mut self,
        key: &str,
        raw_virtual: &Spanned<RawVirtual>,
        tls: Option<&mut Tls>,
        file: &RawConfig,
    ) -> Option<Mode> {
        let virtual_server = raw_virtual.get_ref();
        let mode = virtual_server
            .mode
            .as_ref()
            .map_or(VirtualMode::Tcp, |m| *m.get_ref());
        if mode == VirtualMode::Tcp {
            self.no_http_keys(key, virtual_server);
            return Some(Mode::Tcp);
        }
        self.http_front(key, raw_virtual, tls);
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
        let (max_header_size, max_concurrent_streams) = self.http_limits(key, virtual_server);
        let request_headers = self.header_fields(
            &format!("{key}.request_headers"),
            virtual_server.request_headers.as_ref(),
        );
        let response_headers = self.header_fields(
            &format!("{key}.response_headers"),
            virtual_server.response_headers.as_ref(),
        );
        let persistence = match &virtual_server.persistence {
            None => Some(Persistence::None),
            Some(raw) => self.persistence(&format!("{key}.persistence"), raw, file),
        };
        let redirect = match &virtual_server.redirect {
            None => Some(None),
            Some(raw) => self.redirect(&format!("{key}.redirect"), raw).map(Some),
        };
        Some(Mode::Http(Box::new(HttpPlan {
            redirect: redirect?,
            persistence: persistence?,
            header_timeout,
            keepalive_timeout,
            max_header_size: max_header_size?,
            max_concurrent_streams: max_concurrent_streams?,
            request_headers: request_headers?,
            response_headers: response_headers?,
        })))
    }

    /// A TCP virtual: every HTTP-only key it sets is a problem.
    fn no_http_keys(&mut self, key: &str, virtual_server: &RawVirtual) {
        let http_only = [
            (
                "persistence",
                virtual_server
                    .persistence
                    .as_ref()
                    // Source-address persistence works on TCP too.
                    .filter(|p| p.get_ref().source_address.is_none())
                    .map(|p| p.span()),
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
            (
                "max_concurrent_streams",
                virtual_server
                    .max_concurrent_streams
                    .as_ref()
                    .map(|p| p.span()),
            ),
            (
                "request_headers",
                virtual_server.request_headers.as_ref().map(|p| p.span()),
            ),
            (
                "response_headers",
                virtual_server.response_headers.as_ref().map(|p| p.span()),
            ),
            (
                "redirect",
                virtual_server.redirect.as_ref().map(|p| p.span()),
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
    }

    /// The client side of an HTTP virtual: ALPN offered when TLS ends here
    /// (HTTP's protocols unless narrowed), no passthrough, no PROXY header.
    fn http_front(
        &mut self,
        key: &str,
        raw_virtual: &Spanned<RawVirtual>,
        mut tls: Option<&mut Tls>,
    ) {
        let virtual_server = raw_virtual.get_ref();
        let mode_span = virtual_server.mode.as_ref().map(|m| m.span());
        if let Some(Tls::Terminate(terminate)) = tls.as_deref() {
            self.http_alpn(key, raw_virtual, &terminate.alpn);
        }
        if let Some(Tls::Terminate(terminate)) = tls.as_deref_mut() {
            if terminate.alpn.is_empty() {
                terminate.alpn = HTTP_ALPN.iter().map(|p| p.to_string()).collect();
            }
        }
        if let Some(Tls::Passthrough { .. }) = tls.as_deref() {
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
    }

    /// `max_header_size` (bytes) and `max_concurrent_streams`, defaults
    /// where unset; `None` where out of range (reported).
    fn http_limits(
        &mut self,
        key: &str,
        virtual_server: &RawVirtual,
    ) -> (Option<usize>, Option<u32>) {
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
        let max_concurrent_streams = match &virtual_server.max_concurrent_streams {
            None => Some(DEFAULT_MAX_CONCURRENT_STREAMS),
            Some(value) => self
                .integer_in(
                    &format!("{key}.max_concurrent_streams"),
                    value,
                    1,
                    10_000,
                    "a number of HTTP/2 streams",
                )
                .map(|n| n as u32),
        };
        (max_header_size, max_concurrent_streams)
    }

    /// An HTTP virtual's ALPN list may offer only what it serves.
    fn http_alpn(&mut self, key: &str, raw_virtual: &Spanned<RawVirtual>, alpn: &[String]) {
        for protocol in alpn {
            if !HTTP_ALPN.contains(&protocol.as_str()) && protocol != "http/1.0" {
                let span = raw_virtual.get_ref().tls.as_ref().map(|t| t.span());
                self.report(
                    &format!("{key}.tls.alpn"),
                    span,
                    format!("an HTTP virtual cannot serve \"{protocol}\" (it serves h2, http/1.1 and http/1.0)"),
                    Some("offer alpn = [\"h2\", \"http/1.1\"] (the default for HTTP virtuals), or use mode = \"tcp\" to pass another protocol through".into()),
                );
            }
        }
    }

    /// `request_headers` / `response_headers`: names and values HTTP
    /// accepts, none of the fields vipgate manages itself.
    fn header_fields(
        &mut self,
        key: &str,
        raw: Option<&Spanned<std::collections::BTreeMap<String, String>>>,
    ) -> Option<Vec<(String, String)>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let mut fields = Vec::new();
        let mut valid = true;
        for (name, value) in raw.get_ref() {
            let lower = name.to_ascii_lowercase();
            let problem = if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                Some(format!("\"{name}\" is not a header field name"))
            } else if http::HeaderValue::from_str(value).is_err() {
                Some(format!(
                    "the value of {name} holds characters a header cannot carry"
                ))
            } else if is_managed_header(&lower) {
                Some(format!(
                    "{name} is managed by vipgate (framing, hop-by-hop or persistence)"
                ))
            } else {
                None
            };
            match problem {
                Some(problem) => {
                    valid = false;
                    self.report(
                        &format!("{key}.\"{name}\""),
                        Some(raw.span()),
                        problem,
                        Some("use letters, digits and '-' in names, printable text in values; leave framing and persistence fields to vipgate".into()),
                    );
                }
                None => fields.push((lower, value.clone())),
            }
        }
        valid.then_some(fields)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, ConfigError, Problem};
    use crate::config::{CookieAttributes, CookieLifetime, CookieSecure, SameSite};

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
            Mode::Http(http) => (**http).clone(),
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
                secret_file: "/etc/vipgate/cookie-secret".into(),
                attributes: CookieAttributes::default(),
            }
        );
        assert_eq!(
            cookie.max_concurrent_streams,
            DEFAULT_MAX_CONCURRENT_STREAMS
        );
    }

    #[test]
    fn cookie_attributes_headers_and_streams_are_read() {
        let plan = http_plan(&with_virtual(
            "mode = \"http\"\nmax_concurrent_streams = 32\n\
             persistence = { cookie = \"GWELB\", http_only = false, secure = true, same_site = \"none\", domain = \"example.com\", path = \"/gwe\" }\n\
             request_headers = { \"X-Site\" = \"paris\" }\n\
             response_headers = { \"Strict-Transport-Security\" = \"max-age=31536000\" }",
            "[persistence]\nsecret_file = \"/etc/vipgate/cookie-secret\"\n",
        ));
        let Persistence::Cookie { attributes, .. } = &plan.persistence else {
            panic!("{:?}", plan.persistence)
        };
        assert_eq!(
            attributes,
            &CookieAttributes {
                http_only: false,
                secure: CookieSecure::Always,
                same_site: SameSite::None,
                domain: Some("example.com".into()),
                path: "/gwe".into(),
            }
        );
        assert_eq!(plan.max_concurrent_streams, 32);
        assert_eq!(
            plan.request_headers,
            [("x-site".to_string(), "paris".to_string())]
        );
        assert_eq!(
            plan.response_headers,
            [(
                "strict-transport-security".to_string(),
                "max-age=31536000".to_string()
            )]
        );
    }

    #[test]
    fn bad_cookie_attributes_header_fields_and_alpn_are_refused() {
        let found = problems(&with_virtual(
            "mode = \"http\"\nmax_concurrent_streams = 0\n\
             tls = { mode = \"terminate\", certs = [ { cert = \"c.pem\", key = \"k.pem\" } ], alpn = [\"h2\", \"spdy/3\"] }\n\
             persistence = { cookie = \"GWELB\", same_site = \"none\", path = \"gwe; x\" }\n\
             request_headers = { \"Content-Length\" = \"5\", \"bad name\" = \"x\" }\n\
             response_headers = { \"X-Ok\" = \"line\\nbreak\" }",
            "[persistence]\nsecret_file = \"/etc/vipgate/cookie-secret\"\n",
        ));
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "virtuals.web.max_concurrent_streams",
            "virtuals.web.tls.alpn",
            "virtuals.web.persistence.same_site",
            "virtuals.web.persistence.path",
            "virtuals.web.request_headers.\"Content-Length\"",
            "virtuals.web.request_headers.\"bad name\"",
            "virtuals.web.response_headers.\"X-Ok\"",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
        let alpn = found
            .iter()
            .find(|p| p.key == "virtuals.web.tls.alpn")
            .unwrap();
        assert!(alpn.message.contains("spdy/3"), "{}", alpn.message);
    }

    #[test]
    fn an_http_virtual_offers_h2_and_http_1_1_by_default() {
        let config = parse(
            &with_virtual(
                "mode = \"http\"\ntls = { mode = \"terminate\", certs = [ { cert = \"c.pem\", key = \"k.pem\" } ] }",
                "",
            ),
            "t.toml",
        )
        .unwrap();
        let Tls::Terminate(terminate) = &config.virtuals[0].tls else {
            panic!()
        };
        assert_eq!(terminate.alpn, ["h2", "http/1.1"]);
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
