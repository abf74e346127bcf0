//! Ending TLS for a virtual: certificates loaded from PEM files, chosen by
//! the client's server name, optional client certificates, TLS 1.2 and 1.3
//! only, with the ring crypto provider (builds with a plain C compiler).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::tickets::SharedTickets;
use crate::config::{ClientAuth, SessionTickets, Terminate};

/// Why a virtual's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {error}")]
    Certificates { path: PathBuf, error: String },
    #[error("cannot read a private key from {path}: {error}")]
    Key { path: PathBuf, error: String },
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: String },
    #[error("TLS settings: {0}")]
    Settings(String),
    #[error("session tickets: {0}")]
    Tickets(#[from] crate::secret::SecretError),
}

/// The TLS server settings of one virtual, replaceable while it serves: a
/// certificate reload swaps in new ones for new connections, and
/// connections already open keep theirs.
pub struct Terminator {
    plan: Terminate,
    config: ArcSwap<rustls::ServerConfig>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Terminator")
    }
}

impl Terminator {
    /// Reads every certificate, key and CA file of `plan`.
    pub fn load(plan: &Terminate) -> Result<Terminator, TlsError> {
        // From the first terminating virtual on, rustls' remarks about
        // clients are counted and attributed (`alerts`), not logged bare.
        super::alerts::claim_rustls_records();
        Ok(Terminator {
            plan: plan.clone(),
            config: ArcSwap::from_pointee(server_config(plan)?),
        })
    }

    /// The settings for a new connection.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }

    /// Reads the files again. On any error the current certificates stay
    /// and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.config.store(Arc::new(server_config(&self.plan)?));
        Ok(())
    }
}

fn server_config(plan: &Terminate) -> Result<rustls::ServerConfig, TlsError> {
    {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = plan
            .certs
            .iter()
            .map(|files| certified_key(files, &provider))
            .collect::<Result<Vec<_>, _>>()?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let builder = match &plan.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates(ca)? {
                    roots.add(cert).map_err(|e| invalid(ca, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if matches!(plan.client_auth, ClientAuth::Optional(_)) {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| invalid(ca, e))?)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(BySni { certs }));
        config.alpn_protocols = plan.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        match &plan.tickets {
            SessionTickets::Shared(secret) => {
                config.ticketer = SharedTickets::new(&crate::secret::read(secret)?);
            }
            SessionTickets::Local => {
                config.ticketer = rustls::crypto::ring::Ticketer::new()
                    .map_err(|e| TlsError::Settings(e.to_string()))?;
            }
            SessionTickets::Off => {}
        }
        Ok(config)
    }
}

fn invalid(path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        error: error.to_string(),
    }
}

/// Every PEM certificate in `path`; at least one.
pub(super) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificates {
            path: path.to_path_buf(),
            error: "no PEM certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn certified_key(
    files: &crate::config::CertFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let (cert, key) = (&files.cert, &files.key);
    let mut chain = read_certificates(cert)?;
    if let Some(intermediates) = &files.chain {
        chain.extend(read_certificates(intermediates)?);
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        error: key_error(key, e.to_string()),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| invalid(key, e))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        invalid(
            key,
            format!(
                "does not belong to the certificate in {}: {e}",
                cert.display()
            ),
        )
    })?;
    Ok(Arc::new(certified))
}

/// Why a key file gave no key, in words an operator can act on: an
/// encrypted key (a passphrase protects it, as F5 profiles often have) is
/// named as such, with the command that decrypts it.
fn key_error(path: &Path, error: String) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return format!(
            "the key is encrypted (a passphrase protects it) and vipgate reads unencrypted keys only: decrypt it with `openssl pkey -in {0} -out {0}.plain` (it asks for the passphrase), keep the result readable by vipgate alone, and name it as `key`",
            path.display()
        );
    }
    error
}

/// Picks the first certificate valid for the client's server name, or the
/// first certificate when none is (or the client sent no name).
#[derive(Debug)]
struct BySni {
    certs: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let requested = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name).ok());
        if let Some(name) = requested {
            let valid_for = |key: &&Arc<CertifiedKey>| {
                key.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            };
            if let Some(key) = self.certs.iter().find(valid_for) {
                return Some(key.clone());
            }
        }
        self.certs.first().cloned()
    }
}
