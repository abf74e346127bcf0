//! `[admin]`: where the metrics, status and admin API listen, and the
//! token that guards changes.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Checker;

/// Default `admin.listen`: loopback only, port 9100.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9100";

// What it means: the plan.

/// The admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// No `[admin]` table: no endpoint.
    Off,
    On {
        /// Default 127.0.0.1:9100.
        listen: SocketAddr,
        auth: AdminAuth,
    },
}

/// Who may change things through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAuth {
    /// Anyone who reaches the listener (keep it on loopback).
    Open,
    /// Calls that change state need `Authorization: Bearer <token>`, the
    /// token being this file's content (a trailing newline ignored).
    /// Reading (`/metrics`, `/status`) stays open.
    Token(PathBuf),
}

// As written: the raw serde types.

/// `[admin]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
}

// From one to the other: validation.

impl Checker<'_> {
    pub(super) fn admin(&mut self, raw: Option<&Spanned<RawAdmin>>) -> Admin {
        let Some(raw) = raw else {
            return Admin::Off;
        };
        let admin = raw.get_ref();
        let listen = match &admin.listen {
            None => DEFAULT_ADMIN_LISTEN.parse().ok(),
            Some(listen) => self.address("admin.listen", listen),
        };
        if let Some(listen) = listen {
            if !listen.ip().is_loopback() && admin.token_file.is_none() {
                self.warnings.push(format!(
                    "admin.listen: {listen} is reachable from the network and no token_file is set, so anyone there can change members and reload"
                ));
            }
        }
        let auth = match &admin.token_file {
            None => AdminAuth::Open,
            Some(path) => AdminAuth::Token(path.get_ref().into()),
        };
        match listen {
            Some(listen) => Admin::On { listen, auth },
            None => Admin::Off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = "[pools.p]\nmembers = [ { address = \"127.0.0.11:1\" } ]\n[virtuals.v]\nlisten = \"127.0.0.100:1\"\npool = \"p\"\n";

    #[test]
    fn admin_is_off_unless_asked_for_and_defaults_to_loopback() {
        assert_eq!(parse(BASE, "t").unwrap().admin, Admin::Off);
        let plan = parse(&format!("{BASE}[admin]\n"), "t").unwrap();
        assert_eq!(
            plan.admin,
            Admin::On {
                listen: DEFAULT_ADMIN_LISTEN.parse().unwrap(),
                auth: AdminAuth::Open
            }
        );
        assert!(plan.to_string().contains("admin on 127.0.0.1:9100"));
    }

    #[test]
    fn an_open_admin_on_the_network_is_a_warning_and_a_bad_address_an_error() {
        let plan = parse(&format!("{BASE}[admin]\nlisten = \"0.0.0.0:9100\"\n"), "t").unwrap();
        assert!(
            plan.warnings[0].contains("no token_file is set"),
            "{:?}",
            plan.warnings
        );
        let guarded = parse(
            &format!("{BASE}[admin]\nlisten = \"0.0.0.0:9100\"\ntoken_file = \"/etc/vipgate/admin-token\"\n"),
            "t",
        )
        .unwrap();
        assert!(guarded.warnings.is_empty());
        let error = parse(&format!("{BASE}[admin]\nlisten = \"localhost\"\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(error.contains("admin.listen"), "{error}");
    }
}
