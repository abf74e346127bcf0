//! Validation of a virtual's `tls` table.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::raw::{RawConfig, RawDuration};
use super::validate::Checker;

/// Default `tls.handshake_timeout`: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// What it means: the plan.

/// What a virtual does with TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP (or TLS vipgate does not look at).
    Off,
    Passthrough {
        /// Most time a client may take to send its ClientHello when it
        /// must be read for routing.
        handshake_timeout: Duration,
        /// In order: exact names first, then `*.domain` suffixes (longest
        /// first). Empty: no routing, the virtual's pool for everyone.
        sni_routes: Vec<SniRoute>,
    },
    /// `terminate` or, with `plain_allowed`, `auto`.
    Terminate(Terminate),
}

/// `tls.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Bytes go through untouched; with `sni_routes`, the ClientHello's
    /// server name picks the pool.
    Passthrough,
    /// vipgate ends TLS and sends plain bytes to the members.
    Terminate,
    /// Per connection: TLS is terminated, anything else goes through as
    /// plain TCP (one port for both).
    Auto,
}

/// How vipgate ends TLS for a virtual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminate {
    /// `auto`: a connection that does not start with a TLS record is
    /// proxied as plain TCP.
    pub plain_allowed: bool,
    /// Most time a client may take to complete its handshake.
    pub handshake_timeout: std::time::Duration,
    /// Certificate chains and keys; the first is the default when no
    /// certificate matches the client's server name.
    pub certs: Vec<CertFiles>,
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, in order of preference. Empty: none.
    pub alpn: Vec<String>,
    /// Session tickets (TLS 1.2 and 1.3 resumption).
    pub tickets: SessionTickets,
}

/// How a terminating virtual issues session tickets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionTickets {
    /// None (`session_tickets = false`): every reconnecting client makes
    /// a full handshake (TLS 1.3 clients may still resume from the
    /// server's session cache).
    Off,
    /// Sealed with random keys kept in memory and rotated every 6 hours
    /// (tickets live 12): resumption on this instance only. The default
    /// without a shared secret.
    Local,
    /// Sealed with keys derived from the pair's shared secret (this file),
    /// rotated on a schedule every node computes alike, so a client
    /// resumes on either node of a pair.
    Shared(std::path::PathBuf),
}

/// PEM files of one certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate, optionally followed by its intermediates.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Intermediates kept in a file of their own (F5's `chain`), sent
    /// after the certificate's.
    pub chain: Option<std::path::PathBuf>,
}

/// Client certificates (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// Verified against this CA when presented; clients without one are
    /// let in.
    Optional(std::path::PathBuf),
    /// Required, and verified against this CA.
    Required(std::path::PathBuf),
}

/// One `sni_routes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// Lower-case: `csp-a.example`, `*.example` (any name below it).
    pub pattern: String,
    pub pool: String,
}

impl SniRoute {
    /// Whether `name` (lower-case) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.pattern.strip_prefix("*.") {
            Some(domain) => {
                name.len() > domain.len() + 1
                    && name.ends_with(domain)
                    && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
            }
            None => self.pattern == name,
        }
    }
}

/// Whether connections to a pool's members are wrapped in TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reencrypt {
    Off,
    On {
        /// The name checked against the member's certificate (and sent as
        /// SNI). Empty: the member's IP address.
        server_name: String,
        verify: MemberVerification,
    },
}

/// How a member's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberVerification {
    /// Against this CA (PEM file).
    Ca(std::path::PathBuf),
    /// Not at all (`verify = false`): warned about at start.
    Disabled,
}

// As written: the raw serde types.

/// `tls = { mode = "passthrough", sni_routes = { ... } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub mode: TlsMode,
    pub handshake_timeout: Option<Spanned<RawDuration>>,
    pub sni_routes: Option<BTreeMap<String, Spanned<String>>>,
    pub certs: Option<Spanned<Vec<RawCert>>>,
    pub client_ca: Option<Spanned<String>>,
    pub require_client_cert: Option<bool>,
    pub alpn: Option<Vec<String>>,
    pub session_tickets: Option<Spanned<bool>>,
}

/// `{ cert = "chain.pem", key = "key.pem" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub chain: Option<Spanned<String>>,
}

/// A pool's `tls = { ca = "...", server_name = "..." }`: re-encryption
/// toward its members.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTls {
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub verify: Option<bool>,
}

// From one to the other: validation.

impl Checker<'_> {
    pub(super) fn tls(
        &mut self,
        key: &str,
        raw: &Spanned<RawTls>,
        file: &RawConfig,
    ) -> Option<Tls> {
        let tls = raw.get_ref();
        let handshake_timeout = self.duration(
            &format!("{key}.handshake_timeout"),
            tls.handshake_timeout.as_ref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        if tls.mode != TlsMode::Passthrough && tls.sni_routes.is_some() {
            self.report(
                &format!("{key}.sni_routes"),
                Some(raw.span()),
                "sni_routes only apply to mode = \"passthrough\"".into(),
                Some("remove them, or choose passthrough".into()),
            );
        }
        match tls.mode {
            TlsMode::Terminate | TlsMode::Auto => {
                let certs = match &tls.certs {
                    Some(certs) if !certs.get_ref().is_empty() => certs
                        .get_ref()
                        .iter()
                        .map(|c| CertFiles {
                            cert: c.cert.get_ref().into(),
                            key: c.key.get_ref().into(),
                            chain: c.chain.as_ref().map(|chain| chain.get_ref().into()),
                        })
                        .collect(),
                    other => {
                        self.report(
                            &format!("{key}.certs"),
                            Some(other.as_ref().map_or(raw.span(), |c| c.span())),
                            "terminating TLS needs at least one certificate".into(),
                            Some("certs = [ { cert = \"vip.pem\", key = \"vip.key\" } ]".into()),
                        );
                        return None;
                    }
                };
                let client_auth = match (&tls.client_ca, tls.require_client_cert.unwrap_or(false)) {
                    (None, false) => ClientAuth::None,
                    (None, true) => {
                        self.report(
                            &format!("{key}.require_client_cert"),
                            Some(raw.span()),
                            "client certificates cannot be checked without client_ca".into(),
                            Some("set client_ca to the PEM file of the CA that signs them".into()),
                        );
                        return None;
                    }
                    (Some(ca), false) => ClientAuth::Optional(ca.get_ref().into()),
                    (Some(ca), true) => ClientAuth::Required(ca.get_ref().into()),
                };
                let secret = file
                    .persistence
                    .as_ref()
                    .and_then(|p| p.get_ref().secret_file.as_ref());
                let tickets = match (tls.session_tickets.as_ref(), secret) {
                    (Some(on), _) if !*on.get_ref() => SessionTickets::Off,
                    (_, Some(secret)) => SessionTickets::Shared(secret.get_ref().into()),
                    (_, None) => SessionTickets::Local,
                };
                Some(Tls::Terminate(Terminate {
                    plain_allowed: tls.mode == TlsMode::Auto,
                    handshake_timeout,
                    certs,
                    client_auth,
                    alpn: tls.alpn.clone().unwrap_or_default(),
                    tickets,
                }))
            }
            TlsMode::Passthrough => {
                if let Some(on) = &tls.session_tickets {
                    self.report(
                        &format!("{key}.session_tickets"),
                        Some(on.span()),
                        "session tickets are vipgate's only where it ends TLS".into(),
                        Some("remove it: with passthrough the members issue their own".into()),
                    );
                }
                let sni_routes =
                    self.sni_routes(&format!("{key}.sni_routes"), tls.sni_routes.as_ref(), file)?;
                Some(Tls::Passthrough {
                    handshake_timeout,
                    sni_routes,
                })
            }
        }
    }

    fn sni_routes(
        &mut self,
        key: &str,
        raw: Option<&BTreeMap<String, Spanned<String>>>,
        file: &RawConfig,
    ) -> Option<Vec<SniRoute>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let mut routes = Vec::with_capacity(raw.len());
        let mut valid = true;
        for (pattern, pool) in raw {
            let entry_key = format!("{key}.\"{pattern}\"");
            let lower = pattern.to_ascii_lowercase();
            let name_part = lower.strip_prefix("*.").unwrap_or(&lower);
            let well_formed = lower == "*"
                || (!name_part.is_empty()
                    && !name_part.contains('*')
                    && name_part.split('.').all(|label| {
                        !label.is_empty()
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    }));
            if !well_formed {
                self.report(
                    &entry_key,
                    Some(pool.span()),
                    format!("\"{pattern}\" is not a server name pattern"),
                    Some("use a name (\"csp-a.example\"), a wildcard (\"*.example\") or \"*\" for every other client".into()),
                );
                valid = false;
                continue;
            }
            match self.pool_reference(&entry_key, pool, file) {
                Some(pool) => routes.push(SniRoute {
                    pattern: lower,
                    pool,
                }),
                None => valid = false,
            }
        }
        // Most specific first: exact names, then longer wildcards, "*" last.
        routes.sort_by_key(|route| match route.pattern.as_str() {
            "*" => (2, 0),
            pattern if pattern.starts_with("*.") => (1, usize::MAX - pattern.len()),
            _ => (0, 0),
        });
        valid.then_some(routes)
    }
}

impl Checker<'_> {
    pub(super) fn reencrypt(&mut self, key: &str, raw: &Spanned<RawPoolTls>) -> Reencrypt {
        self.reencrypt_table(key, raw.get_ref(), raw.span(), true)
    }

    /// A `{ ca, server_name, verify }` table; `warn_unverified` warns when
    /// `verify = false` (a monitor's unchecked certificate matters less than
    /// a data path's).
    pub(super) fn reencrypt_table(
        &mut self,
        key: &str,
        tls: &RawPoolTls,
        span: std::ops::Range<usize>,
        warn_unverified: bool,
    ) -> Reencrypt {
        let server_name = tls
            .server_name
            .as_ref()
            .map_or_else(String::new, |n| n.get_ref().clone());
        if let Some(name) = &tls.server_name {
            if rustls_pki_types::ServerName::try_from(name.get_ref().as_str()).is_err() {
                self.report(
                    &format!("{key}.server_name"),
                    Some(name.span()),
                    format!("\"{}\" is not a DNS name or IP address", name.get_ref()),
                    None,
                );
            }
        }
        let verify = match (tls.verify.unwrap_or(true), &tls.ca) {
            (true, Some(ca)) => MemberVerification::Ca(ca.get_ref().into()),
            (true, None) => {
                self.report(
                    key,
                    Some(span),
                    "TLS toward members needs a CA to verify the members' certificates".into(),
                    Some("set ca = \"members-ca.pem\", or verify = false to skip verification (not recommended)".into()),
                );
                MemberVerification::Disabled
            }
            (false, _) => {
                if warn_unverified {
                    self.warnings.push(format!(
                        "{key}: verify = false, member certificates are not checked"
                    ));
                }
                MemberVerification::Disabled
            }
        };
        Reencrypt::On {
            server_name,
            verify,
        }
    }
}
