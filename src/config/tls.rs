//! Validation of a virtual's `tls` table.

use std::collections::BTreeMap;

use toml::Spanned;

use super::plan::*;
use super::raw::*;
use super::validate::Checker;

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
        match tls.mode {
            TlsMode::Passthrough => {
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
