//! TLS passthrough with SNI routing, with real TLS: members terminate with
//! certificates made here (rcgen), clients verify them through vipgate, so
//! a passing handshake proves the bytes went through untouched to the
//! right pool.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A test CA and certificates it signs. Test-only keys, made per run.
struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa { key, cert }
    }

    fn issue(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
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

    fn client(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// A member that terminates TLS for `name` and answers each line with
/// `"{tag} LINE"`.
async fn tls_member(ip: &str, ca: &TestCa, name: &str, tag: &'static str) -> SocketAddr {
    let (chain, key) = ca.issue(name);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut lines = BufReader::new(tls);
                let mut line = String::new();
                while matches!(lines.read_line(&mut line).await, Ok(n) if n > 0) {
                    let reply = format!("{tag} {line}");
                    if lines.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

/// Connects through `vip` asking for `name`, verifies the certificate, and
/// returns the answer to one line.
async fn ask_tls(vip: SocketAddr, connector: &TlsConnector, name: &str) -> std::io::Result<String> {
    let stream = TcpStream::connect(vip).await?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = tokio::time::timeout(PATIENCE, connector.connect(server_name, stream)).await??;
    tls.write_all(b"hello\n").await?;
    let mut answer = String::new();
    BufReader::new(tls).read_line(&mut answer).await?;
    Ok(answer.trim_end().to_string())
}

async fn sni_setup(ca: &TestCa) -> Vipgate {
    let a = tls_member("127.0.0.11", ca, "csp-a.example", "A").await;
    let b = tls_member("127.0.0.12", ca, "csp-b.example", "B").await;
    let toml = format!(
        r#"
[pools.poolA]
members = [ {{ address = "{a}" }} ]
[pools.poolB]
members = [ {{ address = "{b}" }} ]
[virtuals.vs]
listen = "127.0.0.100:0"
tls = {{ mode = "passthrough", handshake_timeout = "300ms", sni_routes = {{ "csp-a.example" = "poolA", "*" = "poolB" }} }}
"#
    );
    start(&toml).await
}

#[tokio::test]
async fn passthrough_routes_by_server_name_and_leaves_tls_to_the_member() {
    let ca = TestCa::new();
    let vipgate = sni_setup(&ca).await;
    let client = ca.client();
    // Each client verifies the member's own certificate through vipgate.
    assert_eq!(
        ask_tls(vipgate.addr("vs"), &client, "csp-a.example")
            .await
            .unwrap(),
        "A hello"
    );
    assert_eq!(
        ask_tls(vipgate.addr("vs"), &client, "csp-b.example")
            .await
            .unwrap(),
        "B hello"
    );
    // A name routed to the wrong member fails verification: the member's
    // certificate is for csp-b.example.
    assert!(ask_tls(vipgate.addr("vs"), &client, "other.example")
        .await
        .is_err());
    let (ok, rejected, timed_out) = vipgate.virtual_stats("vs").client_hellos();
    assert_eq!((ok, rejected, timed_out), (3, 0, 0));
}

#[tokio::test]
async fn garbage_truncated_and_stalled_hellos_are_closed_and_others_are_served() {
    let ca = TestCa::new();
    let vipgate = sni_setup(&ca).await;
    let vip = vipgate.addr("vs");

    let mut garbage = LineClient::connect(vip).await;
    assert_eq!(garbage.ask("GET / HTTP/1.0").await, None);

    // A real hello cut short, then silence: closed after the handshake
    // timeout while another client is served meanwhile.
    let mut stalled = TcpStream::connect(vip).await.unwrap();
    stalled.write_all(&[22, 3, 1, 1, 0, 1, 0, 0]).await.unwrap();
    assert_eq!(
        ask_tls(vip, &ca.client(), "csp-a.example").await.unwrap(),
        "A hello"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut rest),
    )
    .await;
    assert!(closed.is_ok(), "the stalled client was closed");

    let stats = vipgate.virtual_stats("vs");
    eventually("both refusals are counted", || {
        stats.client_hellos().1 == 1 && stats.client_hellos().2 == 1
    })
    .await;
}
