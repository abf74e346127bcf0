//! `redirect` on an HTTP virtual without a pool: every request is answered
//! with a redirect to the same host and path over another scheme (F5's
//! `_sys_https_redirect`, the port-80 virtual in front of almost every
//! HTTPS site).

use serde::Deserialize;
use toml::Spanned;

use super::validate::Checker;

// What it means: the plan.

/// Where a redirect virtual sends every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// `"https"` (default) or `"http"`.
    pub scheme: Scheme,
    /// 301 (default), 302, 303, 307 or 308.
    pub status: u16,
    /// The port in the new address; `None` (default): the scheme's own
    /// (443, 80), left out of the address.
    pub port: Option<u16>,
}

/// The scheme a redirect sends clients to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
        }
    }
}

impl Redirect {
    /// The address to send a request for `host` (as the client wrote it,
    /// with or without a port) and `path_and_query` to; `None` when `host`
    /// is not a host name or address (it would otherwise be copied into
    /// the answer as the client sent it).
    pub fn location(&self, host: &str, path_and_query: &str) -> Option<String> {
        let name = host_without_port(host)?;
        let port = match self.port {
            Some(port) if port != self.scheme.default_port() => format!(":{port}"),
            _ => String::new(),
        };
        let path = if path_and_query.starts_with('/') {
            path_and_query
        } else {
            "/"
        };
        Some(format!("{}://{name}{port}{path}", self.scheme.name()))
    }
}

/// `example.com` of `example.com:8080`, `[2001:db8::1]` of
/// `[2001:db8::1]:80`; `None` for anything that is not a host.
fn host_without_port(host: &str) -> Option<&str> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        let (inside, after) = rest.split_at(end);
        let after = &after[1..];
        if !(after.is_empty() || after.starts_with(':'))
            || inside.parse::<std::net::Ipv6Addr>().is_err()
        {
            return None;
        }
        &host[..end + 2]
    } else {
        host.split(':').next()?
    };
    let valid = !name.is_empty()
        && name.len() <= 255
        && (name.starts_with('[')
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
    valid.then_some(name)
}

impl std::fmt::Display for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirect {} to {}", self.status, self.scheme.name())?;
        if let Some(port) = self.port {
            write!(f, " port {port}")?;
        }
        Ok(())
    }
}

// As written: the raw serde types.

/// `redirect = { scheme = "https", status = 301, port = 443 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub scheme: Option<Spanned<String>>,
    pub status: Option<Spanned<i64>>,
    pub port: Option<Spanned<i64>>,
}

// From one to the other: validation.

impl Checker<'_> {
    pub(super) fn redirect(&mut self, key: &str, raw: &Spanned<RawRedirect>) -> Option<Redirect> {
        let given = raw.get_ref();
        let scheme = match given.scheme.as_ref().map(|s| (s.get_ref().as_str(), s)) {
            None | Some(("https", _)) => Some(Scheme::Https),
            Some(("http", _)) => Some(Scheme::Http),
            Some((other, spanned)) => {
                self.report(
                    &format!("{key}.scheme"),
                    Some(spanned.span()),
                    format!("\"{other}\" is not a scheme a redirect can send browsers to"),
                    Some("scheme = \"https\" (the default) or \"http\"".into()),
                );
                None
            }
        };
        let status = match &given.status {
            None => Some(301),
            Some(value) if [301, 302, 303, 307, 308].contains(value.get_ref()) => {
                Some(*value.get_ref() as u16)
            }
            Some(value) => {
                self.report(
                    &format!("{key}.status"),
                    Some(value.span()),
                    format!("{} is not a redirect status", value.get_ref()),
                    Some("301 (moved for good, the default), 302, 303, 307 or 308 (which keep the method and body)".into()),
                );
                None
            }
        };
        let port = match &given.port {
            None => Some(None),
            Some(value) => self
                .integer_in(&format!("{key}.port"), value, 1, 65535, "a port")
                .map(|port| Some(port as u16)),
        };
        Some(Redirect {
            scheme: scheme?,
            status: status?,
            port: port?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https(port: Option<u16>) -> Redirect {
        Redirect {
            scheme: Scheme::Https,
            status: 301,
            port,
        }
    }

    #[test]
    fn the_location_keeps_host_and_path_and_sets_the_port() {
        let redirect = https(None);
        assert_eq!(
            redirect.location("www.example.com", "/a/b?c=d").as_deref(),
            Some("https://www.example.com/a/b?c=d")
        );
        assert_eq!(
            redirect.location("www.example.com:80", "/").as_deref(),
            Some("https://www.example.com/")
        );
        assert_eq!(
            https(Some(443)).location("h", "/x").as_deref(),
            Some("https://h/x")
        );
        assert_eq!(
            https(Some(8443)).location("h:8080", "/x").as_deref(),
            Some("https://h:8443/x")
        );
        assert_eq!(
            redirect.location("[2001:db8::1]:80", "/").as_deref(),
            Some("https://[2001:db8::1]/")
        );
        assert_eq!(
            redirect.location("10.0.0.1", "*").as_deref(),
            Some("https://10.0.0.1/")
        );
    }

    #[test]
    fn a_host_that_is_not_one_gives_no_location() {
        let redirect = https(None);
        for host in [
            "",
            "evil.example/path",
            "a b",
            "[::1",
            "[nonsense]:80",
            "[::1]x",
            "user@host",
        ] {
            assert_eq!(redirect.location(host, "/"), None, "{host}");
        }
    }
}
