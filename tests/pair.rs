//! Two vipgates as a pair, in one process over loopback: with the same
//! configuration and shared secret, a TLS client resumes on the other node
//! the session the first gave it (TLS 1.2 and 1.3 tickets), and without a
//! secret it cannot. And the node that takes over absorbs a reconnect storm
//! paced to what its members accept, refusing nobody it could serve.
//! (The pair under keepalived, in network namespaces: `tests/ha_pair.rs`.)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls_ca::{temp_dir, TestCa};
use common::*;
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One node's configuration: TLS for `vip.example` in front of `member`,
/// with the shared secret when given.
fn node(cert: &str, key: &str, member: SocketAddr, secret: Option<&std::path::Path>) -> String {
    let secret = secret.map_or_else(String::new, |path| {
        format!("[persistence]\nsecret_file = \"{}\"\n", path.display())
    });
    format!(
        "{secret}[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\ntls = {{ mode = \"terminate\", certs = [ {{ cert = \"{cert}\", key = \"{key}\" }} ] }}\n"
    )
}

/// One line over TLS to `vip`; how the handshake went.
async fn session(vip: SocketAddr, connector: &TlsConnector) -> HandshakeKind {
    let stream = TcpStream::connect(vip).await.unwrap();
    let name = ServerName::try_from("vip.example").unwrap();
    let mut tls = connector.connect(name, stream).await.unwrap();
    tls.write_all(b"hello\n").await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    // Reading the answer also reads the tickets sent after the handshake.
    let mut reader = BufReader::new(tls);
    let mut answer = String::new();
    reader.read_line(&mut answer).await.unwrap();
    assert_eq!(answer, "csp hello\n");
    kind
}

fn client(ca: &TestCa, versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn a_tls_client_resumes_on_the_other_node_with_the_shared_secret() {
    let ca = TestCa::new();
    let dir = temp_dir("pair-tickets");
    let (cert, key) = ca.write_pem(&dir, "vip.example");
    let secret = dir.join("shared-secret");
    std::fs::write(&secret, "the secret both nodes of the pair share").unwrap();
    let member = tagged_member("127.0.0.11", "csp").await;
    let first = start(&node(&cert, &key, member, Some(&secret))).await;
    let second = start(&node(&cert, &key, member, Some(&secret))).await;

    for (version, versions) in [
        ("TLS 1.3", &[&rustls::version::TLS13][..]),
        ("TLS 1.2", &[&rustls::version::TLS12][..]),
    ] {
        let connector = client(&ca, versions);
        assert_eq!(
            session(first.addr("vs"), &connector).await,
            HandshakeKind::Full
        );
        // The failover: the same client, the other node.
        assert_eq!(
            session(second.addr("vs"), &connector).await,
            HandshakeKind::Resumed,
            "{version}: the ticket of the first node opens on the second"
        );
    }

    // Without the secret each node keeps its sessions to itself.
    let alone_first = start(&node(&cert, &key, member, None)).await;
    let alone_second = start(&node(&cert, &key, member, None)).await;
    let connector = client(&ca, &[&rustls::version::TLS13]);
    assert_eq!(
        session(alone_first.addr("vs"), &connector).await,
        HandshakeKind::Full
    );
    assert_eq!(
        session(alone_second.addr("vs"), &connector).await,
        HandshakeKind::Full
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_surviving_node_paces_a_reconnect_storm_and_refuses_nobody() {
    // Three proxies that each accept 150 new connections a second: 450/s
    // in all, 450 at once from the one-second burst.
    let members = [
        tagged_member("127.0.0.11", "a").await,
        tagged_member("127.0.0.12", "b").await,
        tagged_member("127.0.0.13", "c").await,
    ];
    let list: Vec<String> = members
        .iter()
        .map(|m| format!("{{ address = \"{m}\", connect_rate_limit = 150 }}"))
        .collect();
    let vipgate = start(&format!(
        "[pools.p]\nmembers = [ {} ]\n[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\nconnect_timeout = \"5s\"\n",
        list.join(", ")
    ))
    .await;
    // Every agent of the failed node reconnects at once.
    let agents = 1200;
    let vip = vipgate.addr("vs");
    let started = Instant::now();
    let mut reconnecting = tokio::task::JoinSet::new();
    for _ in 0..agents {
        reconnecting.spawn(async move {
            let mut client = LineClient::connect(vip).await;
            let answer = client.ask("hello").await;
            (answer.is_some(), client)
        });
    }
    let mut served = 0;
    let mut held = Vec::new();
    while let Some(result) = reconnecting.join_next().await {
        let (answered, client) = result.unwrap();
        served += usize::from(answered);
        held.push(client);
    }
    let took = started.elapsed();
    let stats = vipgate.virtual_stats("vs");
    assert_eq!(served, agents, "every agent is served");
    assert_eq!(stats.counts().rejected.no_member, 0, "nobody refused");
    // Paced: 450 in the first burst, then 450 a second.
    assert!(
        took >= Duration::from_millis(1000),
        "the members' rate was kept: {took:?}"
    );
    println!("{agents} agents reconnected in {took:?}, paced to 450 new connections/s");
    let per_member: Vec<u64> = members
        .iter()
        .map(|m| vipgate.member(*m).total_connections())
        .collect();
    assert!(per_member.iter().all(|n| *n >= 300), "{per_member:?}");
}
