//! TLS toward a pool's members (re-encryption), verified against the
//! pool's CA, or, when the operator says so, not verified at all.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::terminate::read_certificates;
use super::TlsError;
use crate::config::{MemberVerification, Reencrypt};

/// The TLS client side for one pool.
#[derive(Clone)]
pub struct MemberTls {
    connector: TlsConnector,
    /// `None`: each member's IP address.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for MemberTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl MemberTls {
    /// The client side for `plan`, or `None` when it is off.
    pub fn load(plan: &Reencrypt) -> Result<Option<MemberTls>, TlsError> {
        let Reencrypt::On {
            server_name,
            verify,
        } = plan
        else {
            return Ok(None);
        };
        // rustls' remarks about member connections: debug lines, not bare
        // warnings (`alerts`).
        super::alerts::claim_rustls_records();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let config = match verify {
            MemberVerification::Ca(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates(path)? {
                    roots.add(cert).map_err(|e| TlsError::Invalid {
                        path: path.clone(),
                        error: e.to_string(),
                    })?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            MemberVerification::Disabled => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth(),
        };
        let server_name = if server_name.is_empty() {
            None
        } else {
            Some(
                ServerName::try_from(server_name.clone())
                    .map_err(|e| TlsError::Settings(format!("server_name {server_name:?}: {e}")))?,
            )
        };
        Ok(Some(MemberTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        }))
    }

    /// Runs the TLS handshake with `member` over `stream`.
    pub async fn connect(
        &self,
        member: SocketAddr,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(member.ip().into()));
        self.connector.connect(name, stream).await
    }
}

/// Accepts any certificate: `verify = false`. Signatures are still
/// checked, so the handshake is sound; only the identity is not.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
