//! One way to reach a member, and both kinds of virtual behave alike: the
//! connect time includes the member's TLS handshake, a member whose TLS
//! handshake fails is skipped for the next one, and neither an exhausted
//! SNAT pool nor a shortage of file descriptors here is blamed on a member.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::time::Duration;

use common::admin::{status, ADMIN};
use common::http_client::{get_once, web_member};
use common::process::{free_vip_port, line_member, Running};
use common::tls_ca::{temp_dir, tls_front, TestCa};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the slow member waits before answering a TLS handshake.
const SLOW_HANDSHAKE: Duration = Duration::from_millis(300);

/// A TCP virtual `lines` and an HTTP virtual `web`, each in front of its
/// own pool of TLS members (`lines_members`, `web_members`), re-encrypted
/// and verified against `ca`, with `extra` lines for both virtuals.
fn reencrypting(
    ca: &TestCa,
    test: &str,
    lines_members: &[SocketAddr],
    web_members: &[SocketAddr],
    extra: &str,
) -> String {
    let ca_file = ca.write_ca(&temp_dir(test));
    let list = |members: &[SocketAddr]| {
        members
            .iter()
            .map(|m| format!("{{ address = \"{m}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tls = format!("tls = {{ ca = \"{ca_file}\", server_name = \"csp.internal\" }}");
    format!(
        "{ADMIN}\
         [pools.lines]\nmembers = [ {} ]\n{tls}\n\
         [pools.web]\nmembers = [ {} ]\n{tls}\n\
         [virtuals.lines]\nlisten = \"127.0.0.100:0\"\npool = \"lines\"\n{extra}\n\
         [virtuals.web]\nlisten = \"127.0.0.100:0\"\npool = \"web\"\nmode = \"http\"\n{extra}\n",
        list(lines_members),
        list(web_members),
    )
}

#[tokio::test]
async fn connect_time_includes_the_member_tls_handshake_on_both_kinds() {
    let ca = TestCa::new();
    let echo = tagged_member("127.0.0.11", "slow").await;
    let web = web_member("127.0.0.11", "GWE_Slow").await;
    let lines_member = tls_front("127.0.0.12", &ca, "csp.internal", SLOW_HANDSHAKE, echo).await;
    let web_front = tls_front("127.0.0.13", &ca, "csp.internal", SLOW_HANDSHAKE, web).await;
    let vipgate = start(&reencrypting(
        &ca,
        "dial-slow",
        &[lines_member],
        &[web_front],
        "",
    ))
    .await;

    let mut client = LineClient::connect(vipgate.addr("lines")).await;
    assert_eq!(client.ask("hi").await.as_deref(), Some("slow hi"));
    let reply = get_once(vipgate.addr("web"), "/", &[]).await;
    assert_eq!(reply.status, 200);

    for member in [lines_member, web_front] {
        let histogram = vipgate.member(member).connect_histogram().clone();
        assert_eq!(histogram.get_sample_count(), 1, "{member}: one connect");
        assert!(
            histogram.get_sample_sum() >= SLOW_HANDSHAKE.as_secs_f64(),
            "{member}: the connect time ({} s) includes the TLS handshake",
            histogram.get_sample_sum()
        );
    }
}

#[tokio::test]
async fn a_member_whose_tls_handshake_fails_is_skipped_on_both_kinds() {
    let ca = TestCa::new();
    let echo = tagged_member("127.0.0.11", "good").await;
    let web = web_member("127.0.0.11", "GWE_Good").await;
    // The first of each pool presents a certificate for another name.
    let no = Duration::ZERO;
    let lines = [
        tls_front("127.0.0.12", &ca, "other.internal", no, echo).await,
        tls_front("127.0.0.13", &ca, "csp.internal", no, echo).await,
    ];
    let webs = [
        tls_front("127.0.0.12", &ca, "other.internal", no, web).await,
        tls_front("127.0.0.13", &ca, "csp.internal", no, web).await,
    ];
    let vipgate = start(&reencrypting(&ca, "dial-tls-fails", &lines, &webs, "")).await;

    for round in 0..4 {
        let mut client = LineClient::connect(vipgate.addr("lines")).await;
        assert_eq!(
            client.ask("hi").await.as_deref(),
            Some("good hi"),
            "TCP client {round} is served by the next member"
        );
        let reply = get_once(vipgate.addr("web"), "/", &[]).await;
        assert_eq!(reply.status, 200, "HTTP request {round}");
        assert_eq!(reply.served_by(), "GWE_Good");
    }
    let status = status(&vipgate).await;
    for (virtual_index, pool, bad) in [(0, 0, lines[0]), (1, 1, webs[0])] {
        let virtual_status = &status["virtuals"][virtual_index];
        assert_eq!(
            virtual_status["rejected"]["no_member"], 0,
            "{virtual_status}"
        );
        let members = &status["pools"][pool]["members"];
        let bad_member = members
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["address"] == bad.to_string())
            .unwrap();
        assert!(
            bad_member["connect_failures"].as_u64().unwrap() >= 1,
            "the failing handshake counts against {bad}: {bad_member}"
        );
    }
}

/// Sends a WebSocket upgrade for `/gwe/ws` on `socket`.
async fn ask_upgrade(socket: &mut TcpStream) {
    socket
        .write_all(
            b"GET /gwe/ws HTTP/1.1\r\nHost: gwe.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn snat_exhaustion_is_not_the_member_s_fault_on_both_kinds() {
    let echo = tagged_member("127.0.0.11", "m").await;
    let web = web_member("127.0.0.12", "GWE_Node1").await;
    // One source port toward each member.
    let toml = format!(
        "{ADMIN}[snat_pools.one]\naddresses = [\"127.0.0.21\"]\nports = \"61500-61500\"\n\
         [pools.lines]\nmembers = [ {{ address = \"{echo}\" }} ]\n\
         [pools.web]\nmembers = [ {{ address = \"{web}\" }} ]\n\
         [virtuals.lines]\nlisten = \"127.0.0.100:0\"\npool = \"lines\"\nsnat = \"one\"\n\
         [virtuals.web]\nlisten = \"127.0.0.100:0\"\npool = \"web\"\nmode = \"http\"\nsnat = \"one\"\n"
    );
    let vipgate = start(&toml).await;

    // TCP: the one port is held by the first client; the second is closed.
    let mut first = LineClient::connect(vipgate.addr("lines")).await;
    assert_eq!(first.ask("hi").await.as_deref(), Some("m hi"));
    assert!(
        LineClient::is_refused(vipgate.addr("lines"), "hi").await,
        "no port: closed"
    );

    // HTTP: a WebSocket tunnel holds the one port; a request that needs a
    // second member connection is answered 503.
    let mut tunnel = TcpStream::connect(vipgate.addr("web")).await.unwrap();
    ask_upgrade(&mut tunnel).await;
    let mut head = [0u8; 12];
    tunnel.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let reply = get_once(vipgate.addr("web"), "/", &[]).await;
    assert_eq!(reply.status, 503, "no port: 503");

    let status = status(&vipgate).await;
    for index in [0, 1] {
        let rejected = &status["virtuals"][index]["rejected"];
        assert_eq!(rejected["snat_exhausted"], 1, "{rejected}");
        assert_eq!(rejected["no_member"], 0, "{rejected}");
        let member = &status["pools"][index]["members"][0];
        assert_eq!(
            member["connect_failures"], 0,
            "not the member's fault: {member}"
        );
    }
    assert_eq!(status["virtuals"][1]["http"]["answered_503"], 1);
}

/// What a client saw within a short wait.
#[derive(Debug, PartialEq)]
enum Seen {
    Served,
    Refused,
    Nothing,
}

/// Reads what is there on `stream` within 300 ms: `served` as the start of
/// the answer, a close or `refused` as a refusal.
fn look(stream: &mut StdStream, served: &[u8], refused: &[u8]) -> Seen {
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut answer = [0u8; 64];
    match stream.read(&mut answer) {
        Ok(0) => Seen::Refused,
        Ok(n) if answer[..n].starts_with(served) => Seen::Served,
        Ok(n) if answer[..n].starts_with(refused) => Seen::Refused,
        Ok(n) => panic!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&answer[..n])
        ),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => Seen::Refused,
        Err(_) => Seen::Nothing,
    }
}

/// Opens clients to `target` (each sending `request`) until one is refused
/// for want of descriptors in vipgate. Each client served holds a client
/// and a member descriptor there. When vipgate is full (a client waits in
/// the backlog), a connection to `padding` that sends nothing (one
/// descriptor) and closing the oldest client served (two) shift the count
/// by one, so that the next client is accepted with no descriptor left to
/// reach its member.
fn exhaust(target: SocketAddr, padding: SocketAddr, request: &[u8], served: &[u8]) {
    let mut held: VecDeque<StdStream> = VecDeque::new();
    let mut waiting: Vec<StdStream> = Vec::new();
    let mut pads: Vec<StdStream> = Vec::new();
    for _ in 0..200 {
        for index in (0..waiting.len()).rev() {
            match look(&mut waiting[index], served, b"HTTP/1.1 503") {
                Seen::Refused => return,
                Seen::Served => held.push_back(waiting.swap_remove(index)),
                Seen::Nothing => {}
            }
        }
        let Ok(mut client) = StdStream::connect(target) else {
            continue;
        };
        if client.write_all(request).is_err() {
            // Accepted and closed at once: refused.
            return;
        }
        match look(&mut client, served, b"HTTP/1.1 503") {
            Seen::Refused => return,
            Seen::Served => held.push_back(client),
            Seen::Nothing => {
                waiting.push(client);
                if let Ok(pad) = StdStream::connect(padding) {
                    pads.push(pad);
                }
                held.pop_front();
            }
        }
    }
    panic!("no client was refused for want of descriptors");
}

/// GET `path` from the admin endpoint at `address`, as JSON, once vipgate
/// has descriptors again.
fn admin_json(address: SocketAddr, path: &str) -> serde_json::Value {
    eventually_blocking("admin answers again", PATIENCE, || {
        let mut stream = StdStream::connect(address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    })
}

#[test]
fn running_out_of_descriptors_is_local_and_blames_no_member_on_both_kinds() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let web = runtime.block_on(web_member("127.0.0.12", "GWE_Node1"));
    let echo = line_member("127.0.0.11");
    let (lines_port, web_port, admin_port) = (free_vip_port(), free_vip_port(), free_vip_port());
    let config = temp_dir("dial-emfile").join("vipgate.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.100:{admin_port}\"\n\
             [pools.lines]\nmembers = [ {{ address = \"{echo}\" }} ]\n\
             [pools.web]\nmembers = [ {{ address = \"{web}\" }} ]\n\
             [virtuals.lines]\nlisten = \"127.0.0.100:{lines_port}\"\npool = \"lines\"\nzero_copy = false\n\
             [virtuals.web]\nlisten = \"127.0.0.100:{web_port}\"\npool = \"web\"\nmode = \"http\"\n"
        ),
    )
    .unwrap();
    let vip = |port: u16| SocketAddr::from(([127, 0, 0, 100], port));
    let running = Running::start(&config, "ulimit -n 48 &&");

    exhaust(vip(lines_port), vip(web_port), b"hi\n", b"member hi");
    let status = admin_json(vip(admin_port), "/status");
    let lines = &status["virtuals"][0];
    assert_eq!(lines["name"], "lines");
    assert!(
        lines["rejected"]["local_resources"].as_u64().unwrap() >= 1,
        "{lines}"
    );
    assert_eq!(lines["rejected"]["no_member"], 0, "{lines}");

    exhaust(
        vip(web_port),
        vip(web_port),
        b"GET /gwe/ws HTTP/1.1\r\nHost: gwe.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        b"HTTP/1.1 101",
    );
    let status = admin_json(vip(admin_port), "/status");
    let web_status = &status["virtuals"][1];
    assert_eq!(web_status["name"], "web");
    assert!(
        web_status["rejected"]["local_resources"].as_u64().unwrap() >= 1,
        "{web_status}"
    );
    assert_eq!(web_status["rejected"]["no_member"], 0, "{web_status}");
    assert!(web_status["http"]["answered_503"].as_u64().unwrap() >= 1);
    for pool in [0, 1] {
        let member = &status["pools"][pool]["members"][0];
        assert_eq!(
            member["connect_failures"], 0,
            "a shortage here is no member's fault: {member}"
        );
    }
    assert!(
        running.wait_for("out of local resources").is_some(),
        "the shortage is logged with its remedy"
    );
}
