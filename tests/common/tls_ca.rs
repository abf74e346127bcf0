//! A certificate authority made per test run (rcgen, test-only keys), and
//! TLS clients that trust it.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsConnector;

/// A test CA and certificates it signs. Test-only keys, made per run.
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa { key, cert }
    }

    pub fn issue(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// A TLS acceptor presenting a certificate for `name` that this CA
    /// signed.
    pub fn acceptor(&self, name: &str) -> tokio_rustls::TlsAcceptor {
        let (chain, key) = self.issue(name);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// The CA's own certificate.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub fn client(&self) -> TlsConnector {
        TlsConnector::from(Arc::new(self.client_builder().with_no_client_auth()))
    }

    /// A client presenting a certificate `issuer` signed.
    pub fn client_with_cert(&self, issuer: &TestCa) -> TlsConnector {
        let (chain, key) = issuer.issue("agent-desktop-17");
        TlsConnector::from(Arc::new(
            self.client_builder()
                .with_client_auth_cert(chain, key)
                .unwrap(),
        ))
    }

    pub fn client_builder(
        &self,
    ) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
    }

    /// Writes a certificate and key for `name` as PEM files in `dir`.
    pub fn write_pem(&self, dir: &std::path::Path, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }

    /// The CA's own certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn write_ca(&self, dir: &std::path::Path) -> String {
        let path = dir.join("client-ca.pem");
        std::fs::write(&path, self.cert.pem()).unwrap();
        path.display().to_string()
    }
}

pub fn temp_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vipgate-tls-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A TLS member: terminates TLS with a certificate for `name` (signed by
/// `ca`) on `ip`, waiting `delay` before it answers each handshake, and
/// carries the bytes to the plain `backend` (a tagged echo or a web
/// member). Returns where it listens.
pub async fn tls_front(
    ip: &str,
    ca: &TestCa,
    name: &str,
    delay: std::time::Duration,
    backend: std::net::SocketAddr,
) -> std::net::SocketAddr {
    let acceptor = ca.acceptor(name);
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    address
}
