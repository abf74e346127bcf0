//! HTTP virtuals over real sockets: persistence by inserted cookie and by
//! URL parameter, keep-alive on both legs, WebSocket tunnelling, vipgate's
//! own answers (408, 431, 502, 503, 504) and an HTTPS frontend. The members
//! are the simulated web-engagement servers `examples/web_engagement.rs`
//! runs.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::http_client::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vipgate::http::persistence::CookieSeal;

#[tokio::test]
async fn cookie_is_set_on_the_first_answer_and_followed_after() {
    let nodes = two_nodes().await;
    let vipgate = start(&http_config(&nodes, COOKIE, &secret_file("cookie"))).await;
    let vip = vipgate.addr("web");

    let first = get_once(vip, "/gwe/start", &[]).await;
    assert_eq!(first.status, 200);
    let cookie = first.cookie("GWELB").expect("a persistence cookie");
    let set = first.header("set-cookie");
    assert!(
        set.ends_with("; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax"),
        "{set}"
    );
    assert!(
        !set.contains("7f00") && !set.contains("127.0.0"),
        "the cookie shows the member: {set}"
    );
    let member = first.served_by().to_string();

    for _ in 0..6 {
        let again = get_once(vip, "/gwe/again", &[("cookie", &format!("a=1; {cookie}"))]).await;
        assert_eq!(
            again.served_by(),
            member,
            "the cookie keeps the session on its member"
        );
        assert_eq!(
            again.cookie("GWELB"),
            None,
            "a valid cookie is not set again"
        );
        assert_eq!(
            again.header("x-seen-cookie"),
            "a=1",
            "the member gets the client's cookies but not vipgate's own"
        );
    }
    // Without the cookie, new sessions are balanced and each gets one.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let fresh = get_once(vip, "/gwe/start", &[]).await;
        assert!(fresh.cookie("GWELB").is_some());
        seen.insert(fresh.served_by().to_string());
    }
    assert_eq!(seen.len(), 2, "round robin over both members: {seen:?}");

    let counts = counts(&vipgate);
    assert_eq!(counts.requests, 11);
    assert_eq!(counts.persistence_hits, 6);
    assert_eq!(counts.persistence_misses, 5);
    assert_eq!(counts.cookies_set, 5);
    assert_eq!(
        counts.member_answers,
        vipgate::stats::MemberAnswers {
            success: 11,
            ..Default::default()
        },
        "every answer counted once, by class"
    );
}

#[tokio::test]
async fn forged_expired_and_unknown_cookies_are_replaced() {
    let nodes = two_nodes().await;
    let vipgate = start(&http_config(&nodes, COOKIE, &secret_file("forged"))).await;
    let vip = vipgate.addr("web");
    let genuine = get_once(vip, "/", &[]).await.cookie("GWELB").unwrap();

    // Flip the last digit of the tag.
    let mut forged = genuine.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let seal = CookieSeal::new(SECRET);
    let expired = format!("GWELB={}", seal.seal(nodes[1].0, 1_000));
    let unknown = format!("GWELB={}", seal.seal("127.0.0.13:1".parse().unwrap(), 0));
    let other_secret = format!(
        "GWELB={}",
        CookieSeal::new(b"another pair's secret, not ours").seal(nodes[1].0, 0)
    );
    for bad in [
        &forged,
        &expired,
        &unknown,
        &other_secret,
        &"GWELB=garbage".to_string(),
    ] {
        let reply = get_once(vip, "/", &[("cookie", bad)]).await;
        assert_eq!(reply.status, 200);
        let fresh = reply
            .cookie("GWELB")
            .unwrap_or_else(|| panic!("{bad} was not replaced"));
        assert_ne!(&fresh, bad);
        // The replacement is genuine: it is followed without being set again.
        let follow = get_once(vip, "/", &[("cookie", &fresh)]).await;
        assert_eq!(follow.served_by(), reply.served_by());
        assert_eq!(follow.cookie("GWELB"), None);
    }
    assert_eq!(counts(&vipgate).persistence_reroutes, 5);
}

#[tokio::test]
async fn two_instances_with_one_secret_route_a_cookie_alike() {
    let nodes = two_nodes().await;
    let config = http_config(&nodes, COOKIE, &secret_file("pair"));
    let (first, second) = (start(&config).await, start(&config).await);
    for _ in 0..4 {
        let reply = get_once(first.addr("web"), "/", &[]).await;
        let cookie = reply.cookie("GWELB").unwrap();
        let there = get_once(second.addr("web"), "/", &[("cookie", &cookie)]).await;
        assert_eq!(there.served_by(), reply.served_by());
        assert_eq!(
            there.cookie("GWELB"),
            None,
            "the other instance accepts it as its own"
        );
    }
    assert_eq!(counts(&second).persistence_hits, 4);
}

#[tokio::test]
async fn url_parameter_in_the_path_the_query_or_its_cookie_picks_the_member() {
    let nodes = two_nodes().await;
    let vipgate = start(&http_config(&nodes, URL_PARAM, &secret_file("url"))).await;
    let vip = vipgate.addr("web");
    for _ in 0..3 {
        let reply = get_once(vip, "/gwe/cometd;jsessionid=8F3A9C.GWE_Node2", &[]).await;
        assert_eq!(reply.served_by(), "GWE_Node2");
        let reply = get_once(vip, "/gwe/cometd?a=b&jsessionid=8F3A9C.GWE_Node1", &[]).await;
        assert_eq!(reply.served_by(), "GWE_Node1");
        let reply = get_once(vip, "/gwe/x", &[("cookie", "JSESSIONID=8F3A9C.GWE_Node2")]).await;
        assert_eq!(reply.served_by(), "GWE_Node2");
    }
    // The application's own session id names its node: follow it.
    let session = get_once(vip, "/gwe/session", &[]).await;
    let id = session.body.trim().to_string();
    assert!(id.ends_with(session.served_by()), "{id}");
    for _ in 0..4 {
        let reply = get_once(vip, &format!("/gwe/cometd;jsessionid={id}"), &[]).await;
        assert_eq!(reply.served_by(), session.served_by());
    }
    let counts = counts(&vipgate);
    assert_eq!(
        (counts.persistence_hits, counts.persistence_misses),
        (13, 1)
    );
    assert_eq!(counts.cookies_set, 0, "URL persistence sets no cookie");
}

#[tokio::test]
async fn an_unknown_route_is_balanced() {
    let nodes = two_nodes().await;
    let vipgate = start(&http_config(&nodes, URL_PARAM, &secret_file("unknown"))).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let reply = get_once(vipgate.addr("web"), "/gwe/x;jsessionid=AB.GWE_Node9", &[]).await;
        assert_eq!(reply.status, 200);
        seen.insert(reply.served_by().to_string());
    }
    assert_eq!(seen.len(), 2);
    assert_eq!(counts(&vipgate).persistence_reroutes, 4);
}

#[tokio::test]
async fn a_member_that_cannot_answer_is_replaced_and_the_client_cookied_again() {
    let alive = web_member("127.0.0.11", "GWE_Node1").await;
    let dead = refusing_address("127.0.0.13").await;
    let nodes = [(alive, "GWE_Node1"), (dead, "GWE_Node3")];
    let vipgate = start(&http_config(&nodes, COOKIE, &secret_file("down"))).await;
    let vip = vipgate.addr("web");
    let for_dead = format!("GWELB={}", CookieSeal::new(SECRET).seal(dead, 0));
    let reply = get_once(vip, "/", &[("cookie", &for_dead)]).await;
    assert_eq!(reply.served_by(), "GWE_Node1");
    let cookie = reply
        .cookie("GWELB")
        .expect("re-cookied for the member that answered");
    let follow = get_once(vip, "/", &[("cookie", &cookie)]).await;
    assert_eq!(
        (follow.served_by(), follow.cookie("GWELB")),
        ("GWE_Node1", None)
    );
    assert!(vipgate.member(dead).connect_failures() >= 1);
}

#[tokio::test]
async fn a_disabled_member_keeps_its_sessions_and_a_forced_offline_one_loses_them() {
    let nodes = two_nodes().await;
    let vipgate = start(&http_config(&nodes, COOKIE, &secret_file("admin"))).await;
    let vip = vipgate.addr("web");
    let cookie = format!("GWELB={}", CookieSeal::new(SECRET).seal(nodes[0].0, 0));
    let member = vipgate.member(nodes[0].0);

    member.set_admin_state(vipgate::config::AdminState::Disabled);
    assert_eq!(
        get_once(vip, "/", &[("cookie", &cookie)]).await.served_by(),
        "GWE_Node1"
    );
    for _ in 0..3 {
        let new_session = get_once(vip, "/", &[]).await;
        assert_eq!(
            new_session.served_by(),
            "GWE_Node2",
            "no new sessions for a disabled member"
        );
    }
    member.set_admin_state(vipgate::config::AdminState::ForcedOffline);
    let moved = get_once(vip, "/", &[("cookie", &cookie)]).await;
    assert_eq!(moved.served_by(), "GWE_Node2");
    assert!(moved.cookie("GWELB").is_some());
}

/// A client's masked WebSocket text frame.
fn client_frame(text: &str) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn websocket_echoes_through_a_sticky_virtual() {
    let nodes = two_nodes().await;
    let vipgate = start(&http_config(&nodes, COOKIE, &secret_file("ws"))).await;
    let vip = vipgate.addr("web");
    let session = get_once(vip, "/", &[]).await;
    let cookie = session.cookie("GWELB").unwrap();

    let mut socket = TcpStream::connect(vip).await.unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let handshake = format!(
        "GET /gwe/ws HTTP/1.1\r\nHost: gwe.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nCookie: {cookie}\r\n\r\n"
    );
    socket.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            socket.read(&mut byte).await.unwrap(),
            1,
            "closed during the handshake"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&format!(
            "x-served-by: {}",
            session.served_by().to_ascii_lowercase()
        )),
        "{head}"
    );
    let accept = vipgate::demo::websocket_accept(key.as_bytes()).to_ascii_lowercase();
    assert!(
        head.contains(&format!("sec-websocket-accept: {accept}")),
        "{head}"
    );

    for message in ["hello agent", "second message"] {
        socket.write_all(&client_frame(message)).await.unwrap();
        let mut echoed = vec![0u8; 2 + message.len()];
        tokio::time::timeout(PATIENCE, socket.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed[0], 0x81);
        assert_eq!(&echoed[2..], message.as_bytes());
    }
    assert_eq!(counts(&vipgate).upgrades, 1);
}

#[tokio::test]
async fn keep_alive_is_used_on_both_legs() {
    let node = web_member("127.0.0.11", "GWE_Node1").await;
    // One worker: idle member connections are kept per worker, and which
    // worker accepts a client is the kernel's choice (SO_REUSEPORT).
    let vipgate = start(&format!(
        "[settings]\nworker_threads = 1\n\n{}",
        http_config(&[(node, "GWE_Node1")], "", &secret_file("keepalive"))
    ))
    .await;
    let vip = vipgate.addr("web");
    let mut client = HttpClient::connect(vip).await;
    let first = client.get("/1", &[]).await;
    let member_connection = first.header("x-connection").to_string();
    for path in ["/2", "/3", "/4"] {
        let reply = client.get(path, &[]).await;
        assert_eq!(
            reply.header("x-connection"),
            member_connection,
            "one member connection"
        );
    }
    assert!(!client.is_closed());
    // Another client: the member connection is shared.
    let other = get_once(vip, "/5", &[]).await;
    assert_eq!(other.header("x-connection"), member_connection);
    assert_eq!(
        vipgate.virtual_stats("web").counts().connections.total,
        2,
        "two client connections"
    );
    assert_eq!(counts(&vipgate).requests, 5);
    assert_eq!(vipgate.member(node).total_connections(), 1);
}

/// A member that answers one request per connection with keep-alive, then
/// closes the connection shortly after (its keep-alive timeout).
async fn member_closing_idle_connections(ip: &str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request_head(&mut socket).await.is_none() {
                    return;
                }
                let answer =
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok";
                let _ = socket.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn a_member_connection_closed_while_idle_is_not_used_again() {
    let node = member_closing_idle_connections("127.0.0.12").await;
    let vipgate = start(&format!(
        "[settings]\nworker_threads = 1\n\n{}",
        http_config(&[(node, "GWE_Node1")], "", &secret_file("idle-closed"))
    ))
    .await;
    let vip = vipgate.addr("web");
    let mut client = HttpClient::connect(vip).await;
    for path in ["/1", "/2", "/3"] {
        let reply = client.get(path, &[]).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.body, "ok");
        // The member closes its side meanwhile, while no request drives
        // the idle connection: the next request must not be lost on it.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(vipgate.member(node).total_connections(), 3);
    assert_eq!(counts(&vipgate).requests, 3);
}

#[tokio::test]
async fn each_worker_reuses_its_own_member_connections() {
    let node = web_member("127.0.0.11", "GWE_Node1").await;
    let vipgate = start(&format!(
        "[settings]\nworker_threads = 2\n\n{}",
        http_config(&[(node, "GWE_Node1")], "", &secret_file("per-worker"))
    ))
    .await;
    let vip = vipgate.addr("web");
    let mut seen = std::collections::HashSet::new();
    for request in 0..40 {
        let reply = get_once(vip, &format!("/{request}"), &[]).await;
        seen.insert(reply.header("x-connection").to_string());
    }
    assert_eq!(counts(&vipgate).requests, 40);
    // Forty clients one after another: at most one member connection per
    // worker, never one per client.
    assert!(seen.len() <= 2, "member connections used: {seen:?}");
    assert!(vipgate.member(node).total_connections() <= 2);
}

#[tokio::test]
async fn no_usable_member_is_503_a_failing_one_502_and_a_silent_one_504() {
    let secret = secret_file("errors");
    let dead = refusing_address("127.0.0.13").await;
    let vipgate = start(&http_config(&[(dead, "GWE_Node3")], "", &secret)).await;
    let reply = get_once(vipgate.addr("web"), "/", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "no member is available\n");
    assert_eq!(counts(&vipgate).answered_503, 1);

    let node = web_member("127.0.0.11", "GWE_Node1").await;
    let vipgate = start(&http_config(
        &[(node, "GWE_Node1")],
        "idle_timeout = \"400ms\"",
        &secret,
    ))
    .await;
    let vip = vipgate.addr("web");
    let mut client = HttpClient::connect(vip).await;
    assert_eq!(client.get("/gwe/crash", &[]).await.status, 502);
    // A long poll within the idle timeout is answered; a longer one is not.
    let polled = client.get("/gwe/cometd?wait=150", &[]).await;
    assert_eq!(
        (polled.status.as_u16(), polled.served_by()),
        (200, "GWE_Node1")
    );
    assert_eq!(client.get("/gwe/cometd?wait=3000", &[]).await.status, 504);
    assert_eq!(
        client.get("/gwe/after", &[]).await.status,
        200,
        "the client connection lives on"
    );
    let counts = counts(&vipgate);
    assert_eq!((counts.answered_502, counts.answered_504), (1, 1));
}

/// Reads what vipgate sends until it closes the connection.
async fn read_until_closed(socket: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer))
        .await
        .expect("vipgate did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_or_oversized_request_heads_get_408_and_431_and_idle_clients_are_let_go() {
    let node = web_member("127.0.0.11", "GWE_Node1").await;
    let guards =
        "header_timeout = \"300ms\"\nkeepalive_timeout = \"600ms\"\nmax_header_size = 8192";
    let vipgate = start(&http_config(
        &[(node, "GWE_Node1")],
        guards,
        &secret_file("guards"),
    ))
    .await;
    let vip = vipgate.addr("web");

    let mut slow = TcpStream::connect(vip).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: gwe.example\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut slow).await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(counts(&vipgate).answered_408, 1);

    let mut large = TcpStream::connect(vip).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: gwe.example\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16_000)
    );
    let _ = large.write_all(head.as_bytes()).await;
    let answer = read_until_closed(&mut large).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A connection that never sends anything, or nothing more after its
    // answer, is closed quietly after keepalive_timeout.
    let mut quiet = TcpStream::connect(vip).await.unwrap();
    let started = Instant::now();
    assert_eq!(read_until_closed(&mut quiet).await, "");
    assert!(started.elapsed() >= Duration::from_millis(500));
    let mut client = HttpClient::connect(vip).await;
    assert_eq!(client.get("/", &[]).await.status, 200);
    eventually("the idle keep-alive connection is closed", || {
        client.is_closed()
    })
    .await;
    assert_eq!(counts(&vipgate).answered_408, 1, "no 408 for idle clients");
}

#[tokio::test]
async fn forwarded_headers_are_added_and_bodies_streamed_both_ways() {
    let node = web_member("127.0.0.11", "GWE_Node1").await;
    let vipgate = start(&http_config(
        &[(node, "GWE_Node1")],
        "",
        &secret_file("forwarded"),
    ))
    .await;
    let mut client = HttpClient::connect(vipgate.addr("web")).await;
    let reply = client
        .get(
            "/",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("connection", "x-private"),
                ("x-private", "1"),
            ],
        )
        .await;
    assert_eq!(
        reply.header("x-seen-forwarded-for"),
        "203.0.113.9, 127.0.0.1"
    );
    assert_eq!(reply.header("x-seen-forwarded-proto"), "http");
    assert_eq!(reply.header("x-seen-forwarded-host"), "gwe.example");

    let body: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let body = Bytes::from(body);
    let echoed = client
        .send("POST", "/gwe/echo", &[], body.clone())
        .await
        .unwrap();
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.raw.len(), body.len());
    assert!(echoed.raw == body, "the body came back changed");
}

#[tokio::test]
async fn an_https_frontend_tells_members_and_marks_cookies_secure() {
    let ca = common::tls_ca::TestCa::new();
    let dir = common::tls_ca::temp_dir("http-https");
    let (cert, key) = ca.write_pem(&dir, "gwe.example");
    let nodes = two_nodes().await;
    let extra = format!(
        "{COOKIE}\ntls = {{ mode = \"terminate\", certs = [ {{ cert = \"{cert}\", key = \"{key}\" }} ] }}"
    );
    let vipgate = start(&http_config(&nodes, &extra, &secret_file("https"))).await;
    let stream = TcpStream::connect(vipgate.addr("web")).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("gwe.example").unwrap();
    let tls = ca.client().connect(name, stream).await.unwrap();
    let mut client = HttpClient::over(tls).await;
    let reply = client.get("/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-seen-forwarded-proto"), "https");
    assert!(
        reply.header("set-cookie").contains("; Secure"),
        "{}",
        reply.header("set-cookie")
    );
    let cookie = reply.cookie("GWELB").unwrap();
    let follow = client.get("/", &[("cookie", &cookie)]).await;
    assert_eq!(follow.served_by(), reply.served_by());
}

#[tokio::test]
async fn a_drain_lets_idle_keep_alive_clients_go_at_once() {
    let node = web_member("127.0.0.11", "GWE_Node1").await;
    let mut vipgate = start(&http_config(
        &[(node, "GWE_Node1")],
        "",
        &secret_file("drain"),
    ))
    .await;
    let mut client = HttpClient::connect(vipgate.addr("web")).await;
    assert_eq!(client.get("/", &[]).await.status, 200);
    let started = Instant::now();
    tokio::time::timeout(PATIENCE, vipgate.begin_shutdown())
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait for the drain timeout"
    );
    eventually("the idle client is closed", || client.is_closed()).await;
}

#[tokio::test]
async fn a_missing_or_short_cookie_secret_stops_the_start_with_a_hint() {
    let node = "127.0.0.11:9081".parse().unwrap();
    let missing = common::tls_ca::temp_dir("http-secret").join("no-such-secret");
    let plan = vipgate::config::parse(&http_config(&[(node, "GWE_Node1")], COOKIE, &missing), "t")
        .unwrap();
    let error = vipgate::server::Server::bind(plan, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.starts_with("virtuals.web.persistence: cannot read the shared secret"),
        "{error}"
    );

    let short = common::tls_ca::temp_dir("http-secret").join("short-secret");
    std::fs::write(&short, "too short\n").unwrap();
    let plan =
        vipgate::config::parse(&http_config(&[(node, "GWE_Node1")], COOKIE, &short), "t").unwrap();
    let error = vipgate::server::Server::bind(plan, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("holds 9 bytes; at least 16 are needed"),
        "{error}"
    );
    assert!(error.contains("head -c 32 /dev/urandom"), "{error}");
}
