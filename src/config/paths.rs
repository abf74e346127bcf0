//! Files a configuration names (certificates, keys, CAs, the cookie secret,
//! the admin token) are found relative to the folder of the configuration
//! file, not the working directory: under systemd the working directory is
//! `/`, and a configuration converted next to its PEM files must work
//! wherever it is started from. Every path field of a [`Plan`] is listed
//! here once, so a new one cannot be forgotten by `check` or `run`.

use super::admin::{Admin, AdminAuth};
use super::monitors::Probe;
use super::persistence::Persistence;
use super::plan::{Mode, Plan};
use super::tls::{ClientAuth, MemberVerification, Reencrypt, SessionTickets, Tls};
use std::path::{Path, PathBuf};

impl Plan {
    /// Calls `visit` on every file path in the plan.
    pub fn for_each_path(&mut self, mut visit: impl FnMut(&mut PathBuf)) {
        let verification = |tls: &mut Reencrypt, visit: &mut dyn FnMut(&mut PathBuf)| {
            if let Reencrypt::On {
                verify: MemberVerification::Ca(path),
                ..
            } = tls
            {
                visit(path);
            }
        };
        for pool in self.pools.values_mut() {
            verification(&mut pool.tls, &mut visit);
        }
        for monitor in self.monitors.values_mut() {
            if let Probe::Http { tls, .. } = &mut monitor.probe {
                verification(tls, &mut visit);
            }
        }
        for virtual_server in &mut self.virtuals {
            if let Tls::Terminate(terminate) = &mut virtual_server.tls {
                for certificate in &mut terminate.certs {
                    visit(&mut certificate.cert);
                    visit(&mut certificate.key);
                    if let Some(chain) = &mut certificate.chain {
                        visit(chain);
                    }
                }
                if let ClientAuth::Optional(ca) | ClientAuth::Required(ca) =
                    &mut terminate.client_auth
                {
                    visit(ca);
                }
                if let SessionTickets::Shared(secret) = &mut terminate.tickets {
                    visit(secret);
                }
            }
            if let Mode::Http(http) = &mut virtual_server.mode {
                if let Persistence::Cookie { secret_file, .. } = &mut http.persistence {
                    visit(secret_file);
                }
            }
        }
        if let Admin::On {
            auth: AdminAuth::Token(path),
            ..
        } = &mut self.admin
        {
            visit(path);
        }
        if let Some(path) = &mut self.settings.state_file {
            visit(path);
        }
    }

    /// Makes every relative path relative to `folder` (the configuration
    /// file's); absolute paths stay as they are.
    pub fn resolve_paths(&mut self, folder: &Path) {
        self.for_each_path(|path| {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use std::path::PathBuf;

    /// A configuration naming every kind of file vipgate reads.
    const EVERY_FILE: &str = r#"
[admin]
listen = "127.0.0.1:9100"
token_file = "admin-token"

[persistence]
secret_file = "secrets/cookie"

[monitors.HTTPS]
type = "http"
tls = { ca = "monitor-ca.pem" }

[pools.p]
monitor = { all = ["HTTPS"] }
tls = { ca = "/etc/pki/members-ca.pem" }
members = [ { address = "127.0.0.11:443" } ]

[virtuals.web]
listen = "127.0.0.100:443"
pool = "p"
mode = "http"
persistence = { cookie = "LB" }
tls = { mode = "terminate", certs = [ { cert = "tls/web.pem", key = "tls/web.key" } ], client_ca = "tls/clients.pem" }
"#;

    #[test]
    fn relative_paths_follow_the_configuration_file_and_absolute_ones_stay() {
        let mut plan = parse(EVERY_FILE, "t").unwrap();
        plan.resolve_paths(std::path::Path::new("/etc/vipgate"));
        let mut paths = Vec::new();
        plan.for_each_path(|path| paths.push(path.clone()));
        paths.sort();
        let expected: Vec<PathBuf> = [
            "/etc/pki/members-ca.pem",
            "/etc/vipgate/admin-token",
            "/etc/vipgate/monitor-ca.pem",
            "/etc/vipgate/secrets/cookie",
            "/etc/vipgate/secrets/cookie",
            "/etc/vipgate/tls/clients.pem",
            "/etc/vipgate/tls/web.key",
            "/etc/vipgate/tls/web.pem",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(paths, expected);
    }
}
