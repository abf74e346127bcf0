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
        /// The admin endpoints of the other nodes of a pair (or group):
        /// member decisions are sent to them and asked of them at start.
        /// Default: none.
        peers: Vec<SocketAddr>,
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
    pub peers: Option<Spanned<Vec<Spanned<String>>>>,
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
        let peers = self.peers(admin.peers.as_ref(), listen);
        match listen {
            Some(listen) => Admin::On {
                listen,
                auth,
                peers,
            },
            None => Admin::Off,
        }
    }

    /// `admin.peers`: `"http://IP:PORT"` (or `"IP:PORT"`) of each other
    /// node's admin endpoint, not this one's, each once.
    fn peers(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        listen: Option<SocketAddr>,
    ) -> Vec<SocketAddr> {
        let mut peers = Vec::new();
        for (index, peer) in raw
            .map(|r| r.get_ref().as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let key = format!("admin.peers[{index}]");
            let text = peer.get_ref().trim();
            let address = text
                .strip_prefix("http://")
                .unwrap_or(text)
                .trim_end_matches('/');
            let problem = if text.starts_with("https://") {
                Some("vipgate speaks plain HTTP to its peers' admin endpoints".to_string())
            } else {
                match address.parse::<SocketAddr>() {
                    Err(_) => Some(format!("{text:?} is not http://IP:PORT")),
                    Ok(address) if Some(address) == listen => {
                        Some("that is this node's own admin endpoint".into())
                    }
                    Ok(address) if peers.contains(&address) => Some("listed twice".into()),
                    Ok(address) => {
                        peers.push(address);
                        None
                    }
                }
            };
            if let Some(problem) = problem {
                self.report(
                    &key,
                    Some(peer.span()),
                    problem,
                    Some("the other node's [admin] listen, e.g. \"http://10.0.0.2:9100\"; every node lists the others and shares the token_file".into()),
                );
            }
        }
        peers
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
                auth: AdminAuth::Open,
                peers: Vec::new(),
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

    #[test]
    fn peers_are_other_admin_endpoints_each_once() {
        let plan = parse(
            &format!("{BASE}[admin]\nlisten = \"10.0.0.1:9100\"\ntoken_file = \"t\"\npeers = [\"http://10.0.0.2:9100\", \"10.0.0.3:9100/\"]\n"),
            "t",
        )
        .unwrap();
        let Admin::On { peers, .. } = plan.admin else {
            panic!("admin is on");
        };
        assert_eq!(
            peers,
            [
                "10.0.0.2:9100".parse().unwrap(),
                "10.0.0.3:9100".parse().unwrap()
            ]
        );
        let error = parse(
            &format!("{BASE}[admin]\nlisten = \"10.0.0.1:9100\"\npeers = [\"https://10.0.0.2:9100\", \"peer-b\", \"http://10.0.0.1:9100\", \"10.0.0.4:1\", \"10.0.0.4:1\"]\n"),
            "t",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "admin.peers[0]: vipgate speaks plain HTTP",
            "admin.peers[1]: \"peer-b\" is not http://IP:PORT",
            "admin.peers[2]: that is this node's own admin endpoint",
            "admin.peers[4]: listed twice",
        ] {
            assert!(error.contains(expected), "{expected} in {error}");
        }
    }
}
