//! TLS with real TLS and certificates made here (rcgen, test-only keys):
//! passthrough with SNI routing (members terminate, clients verify them
//! through vipgate, so a passing handshake proves the bytes went through
//! untouched to the right pool), termination with SNI certificates and
//! client certificates, auto-detection, and bad clients.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::tls_ca::*;
use common::*;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// A member that terminates TLS for `name` and answers each line with
/// `"{tag} LINE"`.
async fn tls_member(ip: &str, ca: &TestCa, name: &str, tag: &'static str) -> SocketAddr {
    let acceptor = ca.acceptor(name);
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
    let (ok, rejected, timed_out) = outcomes(vipgate.virtual_stats("vs").counts().client_hellos);
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
        outcomes(stats.counts().client_hellos).1 == 1
            && outcomes(stats.counts().client_hellos).2 == 1
    })
    .await;
}

/// vipgate terminating TLS for "vip.example" (default) and
/// "other.example", in front of a plain tagged member.
async fn terminate_setup(ca: &TestCa, test: &str, mode: &str, extra: &str) -> Vipgate {
    let dir = temp_dir(test);
    let (vip_cert, vip_key) = ca.write_pem(&dir, "vip.example");
    let (other_cert, other_key) = ca.write_pem(&dir, "other.example");
    let member = tagged_member("127.0.0.13", "plain").await;
    let toml = format!(
        r#"
[pools.p]
members = [ {{ address = "{member}" }} ]
[virtuals.vs]
listen = "127.0.0.100:0"
pool = "p"
tls = {{ mode = "{mode}", handshake_timeout = "300ms", certs = [ {{ cert = "{vip_cert}", key = "{vip_key}" }}, {{ cert = "{other_cert}", key = "{other_key}" }} ]{extra} }}
"#
    );
    start(&toml).await
}

#[tokio::test]
async fn terminate_serves_the_certificate_the_client_names() {
    let ca = TestCa::new();
    let vipgate = terminate_setup(&ca, "sni", "terminate", "").await;
    let client = ca.client();
    assert_eq!(
        ask_tls(vipgate.addr("vs"), &client, "vip.example")
            .await
            .unwrap(),
        "plain hello"
    );
    // Verification of other.example only passes with the second certificate.
    assert_eq!(
        ask_tls(vipgate.addr("vs"), &client, "other.example")
            .await
            .unwrap(),
        "plain hello"
    );
    // Unknown names get the default certificate, which the client rejects
    // for that name.
    assert!(ask_tls(vipgate.addr("vs"), &client, "unknown.example")
        .await
        .is_err());
    let stats = vipgate.virtual_stats("vs");
    eventually("handshakes are counted", || {
        outcomes(stats.counts().handshakes) == (2, 1, 0)
    })
    .await;
}

#[tokio::test]
async fn mutual_tls_accepts_a_good_client_and_rejects_missing_or_wrong_certificates() {
    let ca = TestCa::new();
    let dir = temp_dir("mtls");
    let client_ca = ca.write_ca(&dir);
    let vipgate = terminate_setup(
        &ca,
        "mtls",
        "terminate",
        &format!(", client_ca = \"{client_ca}\", require_client_cert = true"),
    )
    .await;
    let vip = vipgate.addr("vs");
    assert_eq!(
        ask_tls(vip, &ca.client_with_cert(&ca), "vip.example")
            .await
            .unwrap(),
        "plain hello"
    );
    assert!(
        ask_tls(vip, &ca.client(), "vip.example").await.is_err(),
        "no client certificate"
    );
    let stranger = TestCa::new();
    assert!(
        ask_tls(vip, &ca.client_with_cert(&stranger), "vip.example")
            .await
            .is_err(),
        "wrong CA"
    );
    let stats = vipgate.virtual_stats("vs");
    eventually("one good, two refused", || {
        outcomes(stats.counts().handshakes) == (1, 2, 0)
    })
    .await;
}

#[tokio::test]
async fn auto_serves_tls_and_plain_clients_on_one_port() {
    let ca = TestCa::new();
    let vipgate = terminate_setup(&ca, "auto", "auto", "").await;
    let vip = vipgate.addr("vs");
    assert_eq!(
        ask_tls(vip, &ca.client(), "vip.example").await.unwrap(),
        "plain hello"
    );
    assert_eq!(
        LineClient::connect(vip).await.ask("hi").await.as_deref(),
        Some("plain hi")
    );
}

#[tokio::test]
async fn stalled_and_garbage_handshakes_are_closed_within_the_timeout() {
    let ca = TestCa::new();
    let vipgate = terminate_setup(&ca, "stall", "terminate", "").await;
    let vip = vipgate.addr("vs");
    let mut stalled = TcpStream::connect(vip).await.unwrap();
    stalled.write_all(&[22, 3, 1, 1, 0]).await.unwrap();
    let mut garbage = TcpStream::connect(vip).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    // Others are served meanwhile.
    assert_eq!(
        ask_tls(vip, &ca.client(), "vip.example").await.unwrap(),
        "plain hello"
    );
    for stream in [&mut stalled, &mut garbage] {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(stream, &mut rest),
        )
        .await;
        assert!(closed.is_ok(), "closed within the handshake timeout");
    }
    let stats = vipgate.virtual_stats("vs");
    eventually("one timed out, one failed", || {
        let (ok, failed, timed_out) = outcomes(stats.counts().handshakes);
        ok == 1 && failed == 1 && timed_out == 1
    })
    .await;
}

#[test]
fn check_refuses_unreadable_or_mismatched_certificates() {
    let ca = TestCa::new();
    let dir = temp_dir("check");
    let (cert, _) = ca.write_pem(&dir, "a.example");
    let (_, other_key) = ca.write_pem(&dir, "b.example");
    let config = |cert: &str, key: &str| {
        let path = dir.join("vipgate.toml");
        std::fs::write(
            &path,
            format!(
                "[pools.p]\nmembers = [ {{ address = \"127.0.0.11:1\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\ntls = {{ mode = \"terminate\", certs = [ {{ cert = \"{cert}\", key = \"{key}\" }} ] }}\n"
            ),
        )
        .unwrap();
        vipgate::commands::check(&path, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let error = config(&cert, &other_key).unwrap_err();
    assert!(
        error.contains("virtuals.v.tls:") && error.contains("does not belong to the certificate"),
        "{error}"
    );
    let error = config("/nonexistent/vip.pem", &other_key).unwrap_err();
    assert!(
        error.contains("cannot read certificates from /nonexistent/vip.pem"),
        "{error}"
    );
}

async fn reencrypt_setup(ca: &TestCa, test: &str, pool_tls: &str) -> (Vipgate, SocketAddr) {
    let dir = temp_dir(test);
    let ca_file = ca.write_ca(&dir);
    let member = tls_member("127.0.0.12", ca, "csp.internal", "R").await;
    let pool_tls = pool_tls.replace("CA", &ca_file);
    let toml = format!(
        "[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\ntls = {pool_tls}\n[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\n"
    );
    (start(&toml).await, member)
}

#[tokio::test]
async fn reencryption_verifies_the_member_against_the_pool_ca() {
    let ca = TestCa::new();
    let (vipgate, _) = reencrypt_setup(
        &ca,
        "reencrypt-ok",
        "{ ca = \"CA\", server_name = \"csp.internal\" }",
    )
    .await;
    let mut client = LineClient::connect(vipgate.addr("vs")).await;
    assert_eq!(client.ask("hello").await.as_deref(), Some("R hello"));
    assert_eq!(client.ask("again").await.as_deref(), Some("R again"));
}

#[tokio::test]
async fn reencryption_refuses_a_member_whose_certificate_does_not_match() {
    let ca = TestCa::new();
    let (vipgate, member) = reencrypt_setup(
        &ca,
        "reencrypt-bad",
        "{ ca = \"CA\", server_name = \"other.internal\" }",
    )
    .await;
    assert_eq!(
        LineClient::connect(vipgate.addr("vs"))
            .await
            .ask("hello")
            .await,
        None
    );
    assert_eq!(vipgate.member(member).connect_failures(), 1);

    // With verification explicitly off, the same member is accepted.
    let (vipgate, _) = reencrypt_setup(
        &ca,
        "reencrypt-off",
        "{ server_name = \"other.internal\", verify = false }",
    )
    .await;
    assert_eq!(
        LineClient::connect(vipgate.addr("vs"))
            .await
            .ask("hi")
            .await
            .as_deref(),
        Some("R hi")
    );
}

#[tokio::test]
async fn certificates_reload_for_new_connections_and_a_broken_file_keeps_the_old_ones() {
    let first_ca = TestCa::new();
    let vipgate = terminate_setup(&first_ca, "reload", "terminate", "").await;
    let vip = vipgate.addr("vs");
    // An open connection from before the reload.
    let stream = TcpStream::connect(vip).await.unwrap();
    let name = ServerName::try_from("vip.example").unwrap();
    let mut early = first_ca.client().connect(name, stream).await.unwrap();

    let second_ca = TestCa::new();
    let dir = temp_dir("reload");
    second_ca.write_pem(&dir, "vip.example");
    assert!(
        ask_tls(vip, &second_ca.client(), "vip.example")
            .await
            .is_err(),
        "not yet"
    );
    let results = vipgate.snapshot().reload_certificates();
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    assert_eq!(
        ask_tls(vip, &second_ca.client(), "vip.example")
            .await
            .unwrap(),
        "plain hello"
    );
    assert!(ask_tls(vip, &first_ca.client(), "vip.example")
        .await
        .is_err());

    // The connection from before still works.
    early.write_all(b"still\n").await.unwrap();
    let mut answer = String::new();
    BufReader::new(early).read_line(&mut answer).await.unwrap();
    assert_eq!(answer, "plain still\n");

    // A broken key: the reload fails and the current certificates stay.
    std::fs::write(dir.join("vip.example.key"), "not a key").unwrap();
    let results = vipgate.snapshot().reload_certificates();
    let error = results[0].1.as_ref().unwrap_err().to_string();
    assert!(error.contains("vip.example.key"), "{error}");
    assert_eq!(
        ask_tls(vip, &second_ca.client(), "vip.example")
            .await
            .unwrap(),
        "plain hello"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_through_a_terminated_connection_arrives_intact() {
    let ca = TestCa::new();
    let dir = temp_dir("bulk");
    let (cert, key) = ca.write_pem(&dir, "vip.example");
    let member = echo_member("127.0.0.12").await;
    let vipgate = start(&format!(
        "[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\ntls = {{ mode = \"terminate\", certs = [ {{ cert = \"{cert}\", key = \"{key}\" }} ] }}\n"
    ))
    .await;
    let stream = TcpStream::connect(vipgate.addr("vs")).await.unwrap();
    let tls = ca
        .client()
        .connect(ServerName::try_from("vip.example").unwrap(), stream)
        .await
        .unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    const TOTAL: usize = 16 * 1024 * 1024;
    let pattern = |i: usize| (i % 251) as u8;
    let writer = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..TOTAL).map(pattern).collect();
        for part in chunk.chunks(100_000) {
            write.write_all(part).await.unwrap();
        }
        write.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(TOTAL);
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::AsyncReadExt::read_to_end(&mut read, &mut received),
    )
    .await
    .unwrap()
    .unwrap();
    writer.await.unwrap();
    assert_eq!(received.len(), TOTAL);
    assert!(
        received.iter().enumerate().all(|(i, &b)| b == pattern(i)),
        "bytes differ"
    );
}

/// ok, failed (or rejected), timed out.
fn outcomes(counts: vipgate::stats::OutcomeCounts) -> (u64, u64, u64) {
    (counts.ok, counts.failed, counts.timed_out)
}

/// Whether a client of `connector` resumes its session on a second
/// connection after `others` other clients (each its own session) made a
/// full handshake in between: the server keeps 256 sessions by id, so past
/// that only a ticket (held by the client) resumes.
async fn resumes_after(
    vip: SocketAddr,
    version: &'static rustls::SupportedProtocolVersion,
    ca: &TestCa,
    others: usize,
) -> bool {
    let connector = |ca: &TestCa| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.ca_der()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    };
    let handshake = |connector: TlsConnector| async move {
        let stream = TcpStream::connect(vip).await.unwrap();
        let name = ServerName::try_from("vip.example").unwrap();
        let mut tls = connector.connect(name, stream).await.unwrap();
        // A round trip: TLS 1.3 tickets come after the handshake.
        tls.write_all(b"hello\n").await.unwrap();
        let mut answer = String::new();
        BufReader::new(&mut tls)
            .read_line(&mut answer)
            .await
            .unwrap();
        tls.get_ref().1.handshake_kind()
    };
    let client = connector(ca);
    assert_eq!(
        handshake(client.clone()).await,
        Some(rustls::HandshakeKind::Full)
    );
    for _ in 0..others {
        handshake(connector(ca)).await;
    }
    handshake(client).await == Some(rustls::HandshakeKind::Resumed)
}

#[tokio::test]
async fn session_tickets_resume_tls_1_2_and_1_3_without_a_shared_secret() {
    let ca = TestCa::new();
    let vipgate = terminate_setup(&ca, "tickets-local", "terminate", "").await;
    let vip = vipgate.addr("vs");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        assert!(
            resumes_after(vip, version, &ca, 300).await,
            "{version:?} did not resume"
        );
    }
    // Off: TLS 1.2 resumes only while the server still holds the session.
    let off = terminate_setup(&ca, "tickets-off", "terminate", ", session_tickets = false").await;
    let vip = off.addr("vs");
    assert!(resumes_after(vip, &rustls::version::TLS12, &ca, 0).await);
    assert!(!resumes_after(vip, &rustls::version::TLS12, &ca, 300).await);
}

#[test]
#[ignore = "needs openssl: apt-get install openssl"]
fn a_client_asking_to_renegotiate_is_counted_and_logged_at_debug_with_its_address() {
    use common::process::{free_vip_port, line_member, Running};
    use std::io::{Read, Write};
    let ca = TestCa::new();
    let dir = temp_dir("renegotiation");
    let (cert, key) = ca.write_pem(&dir, "vip.example");
    let member = line_member("127.0.0.11");
    let port = free_vip_port();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n\
             [virtuals.vs]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\n\
             tls = {{ mode = \"terminate\", certs = [ {{ cert = \"{cert}\", key = \"{key}\" }} ] }}\n"
        ),
    )
    .unwrap();
    let running = Running::start(&config, "VIPGATE_LOG=info,vipgate::tls=debug");
    // OpenSSL's client renegotiates when it reads a line "R".
    let client = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("(echo R; sleep 1) | timeout 3 openssl s_client -connect 127.0.0.100:{port} -tls1_2 -servername vip.example 2>&1"),
        ])
        .output()
        .expect("openssl runs");
    let said = String::from_utf8_lossy(&client.stdout);
    assert!(said.contains("RENEGOTIATING"), "{said}");
    let line = running
        .wait_for("TLS warning on a client connection")
        .expect("a debug line for the refused renegotiation");
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains("virtual_server=vs"), "{line}");
    assert!(line.contains("client=127.0.0.1:"), "{line}");
    assert!(line.contains("NoRenegotiation"), "{line}");
    let mut admin = std::net::TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    admin
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut metrics = String::new();
    admin.read_to_string(&mut metrics).unwrap();
    assert!(
        metrics.contains("vipgate_tls_warnings_total{virtual=\"vs\"} 1"),
        "{metrics}"
    );
    drop(running);
}
