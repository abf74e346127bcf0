//! HTTP/2 towards clients, with real hyper clients: over TLS by ALPN and
//! in clear text by prior knowledge, cookie persistence across requests
//! and across two instances sharing the secret, a reset stream that leaves
//! the others alive, the bound on concurrent streams, and member
//! connections kept for as many streams as were in flight.

mod common;

use std::sync::Arc;

use common::admin::{Scrape, ADMIN};
use common::http_client::*;
use common::tls_ca::{temp_dir, TestCa};
use common::*;
use tokio::net::TcpStream;

/// An HTTP/2 client over TLS to `vipgate`'s virtual `web`, offering
/// `alpn`; also returns what the handshake agreed.
async fn tls_client(ca: &TestCa, vipgate: &Vipgate, alpn: &[&[u8]]) -> (Option<Vec<u8>>, TcpTls) {
    let mut config = ca.client_builder().with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(vipgate.addr("web")).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("gwe.example").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (agreed, tls)
}

type TcpTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A cookie-persistence HTTP virtual terminating TLS with default ALPN.
async fn https_vipgate(test: &str, nodes: &[(std::net::SocketAddr, &str)]) -> (TestCa, Vipgate) {
    let ca = TestCa::new();
    let (cert, key) = ca.write_pem(&temp_dir(test), "gwe.example");
    let extra = format!(
        "{COOKIE}\ntls = {{ mode = \"terminate\", certs = [ {{ cert = \"{cert}\", key = \"{key}\" }} ] }}"
    );
    let config = http_config(nodes, &extra, &secret_file(test));
    let vipgate = start(&format!("{config}{ADMIN}")).await;
    (ca, vipgate)
}

#[tokio::test]
async fn h2_over_tls_by_alpn_keeps_persistence_for_twenty_requests() {
    let nodes = two_nodes().await;
    let (ca, vipgate) = https_vipgate("h2-tls", &nodes).await;
    let (agreed, tls) = tls_client(&ca, &vipgate, &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        agreed.as_deref(),
        Some(&b"h2"[..]),
        "h2 is offered by default"
    );
    let mut client = Http2Client::over(tls).await;

    let first = client.get("/gwe/start", &[]).await;
    assert_eq!(first.status, 200);
    let set = first.header("set-cookie");
    assert!(
        set.contains("; Secure") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let cookie = first.cookie("GWELB").unwrap();
    let member = first.served_by().to_string();
    // Twenty requests at once on the one connection, all to the member.
    let requests = (0..20).map(|_| {
        let mut client = client.clone();
        let cookie = cookie.clone();
        tokio::spawn(async move { client.get("/gwe/again", &[("cookie", &cookie)]).await })
    });
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.served_by(), member);
        assert_eq!(reply.header("x-seen-forwarded-proto"), "https");
    }
    // The member got HTTP/1.1 with a Host made from :authority.
    let seen = client.get("/gwe/headers", &[("cookie", &cookie)]).await;
    assert!(seen.body.contains("host: gwe.example\n"), "{}", seen.body);
    assert!(
        seen.body.contains("x-forwarded-host: gwe.example\n"),
        "{}",
        seen.body
    );

    let counts = counts(&vipgate);
    assert_eq!(counts.http2_requests, 22);
    assert_eq!(counts.persistence_hits, 21);
    let scrape = Scrape::of(&vipgate).await;
    assert_eq!(
        scrape.get("vipgate_http2_requests_total", &[("virtual", "web")]),
        22.0
    );
}

#[tokio::test]
async fn an_http_1_1_client_over_tls_still_gets_http_1_1() {
    let nodes = two_nodes().await;
    let (ca, vipgate) = https_vipgate("h1-tls", &nodes).await;
    let (agreed, tls) = tls_client(&ca, &vipgate, &[b"http/1.1"]).await;
    assert_eq!(agreed.as_deref(), Some(&b"http/1.1"[..]));
    let mut client = HttpClient::over(tls).await;
    assert_eq!(client.get("/", &[]).await.status, 200);
    // No ALPN at all: the first bytes tell.
    let (agreed, tls) = tls_client(&ca, &vipgate, &[]).await;
    assert_eq!(agreed, None);
    assert_eq!(HttpClient::over(tls).await.get("/", &[]).await.status, 200);
    assert_eq!(counts(&vipgate).http2_requests, 0);
}

#[tokio::test]
async fn h2c_by_prior_knowledge_persists_across_two_instances_with_one_secret() {
    let nodes = two_nodes().await;
    let secret = secret_file("h2c-pair");
    let node_a = start(&http_config(&nodes, COOKIE, &secret)).await;
    let node_b = start(&http_config(&nodes, COOKIE, &secret)).await;
    let mut a = Http2Client::connect(node_a.addr("web")).await;
    let first = a.get("/gwe/start", &[]).await;
    let cookie = first.cookie("GWELB").unwrap();
    let member = first.served_by().to_string();
    let mut b = Http2Client::connect(node_b.addr("web")).await;
    for round in 0..20 {
        let client = if round % 2 == 0 { &mut a } else { &mut b };
        let reply = client.get("/gwe/again", &[("cookie", &cookie)]).await;
        assert_eq!(reply.served_by(), member, "round {round}");
        assert_eq!(
            reply.header("set-cookie"),
            "",
            "round {round}: no new cookie"
        );
    }
    assert_eq!(counts(&node_a).http2_requests, 11);
    assert_eq!(counts(&node_b).http2_requests, 10);
}

#[tokio::test]
async fn a_reset_stream_leaves_the_other_streams_and_frees_its_member() {
    let (node, vipgate) = one_node("h2-reset", "").await;
    let client = Http2Client::connect(vipgate.addr("web")).await;
    let (mut long, mut short) = (client.clone(), client.clone());
    let abandoned = tokio::spawn(async move { long.get("/gwe/cometd?wait=20000", &[]).await });
    let kept = tokio::spawn(async move { short.get("/gwe/cometd?wait=300", &[]).await });
    let member = vipgate.member(node);
    eventually("both requests reach the member", || {
        member.active_connections() == 2
    })
    .await;
    // Dropping the request sends RST_STREAM for it alone.
    abandoned.abort();
    let kept = kept.await.unwrap();
    assert_eq!(kept.status, 200);
    assert!(kept.body.contains("cometd after 300 ms"), "{}", kept.body);
    eventually("the reset request lets its member go", || {
        member.active_connections() == 0
    })
    .await;
    let mut client = client;
    assert_eq!(client.get("/", &[]).await.status, 200);
    assert!(!client.is_closed());
}

#[tokio::test]
async fn concurrent_streams_are_bounded_per_connection() {
    let (node, vipgate) = one_node("h2-streams", "max_concurrent_streams = 2").await;
    let client = Http2Client::connect(vipgate.addr("web")).await;
    // Let the client learn the server's SETTINGS first.
    assert_eq!(client.clone().get("/", &[]).await.status, 200);
    let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut requests = Vec::new();
    for (name, wait) in [("slow-1", 600), ("slow-2", 600), ("fast", 0)] {
        let mut client = client.clone();
        let finished = Arc::clone(&finished);
        requests.push(tokio::spawn(async move {
            let reply = client.get(&format!("/gwe/cometd?wait={wait}"), &[]).await;
            finished.lock().unwrap().push(name);
            reply.status
        }));
        if name == "slow-2" {
            let member = vipgate.member(node);
            eventually("two slow requests in flight", || {
                member.active_connections() == 2
            })
            .await;
        }
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    let order = finished.lock().unwrap().clone();
    assert_ne!(
        order.first(),
        Some(&"fast"),
        "a third stream ran while two were open: {order:?}"
    );
}

/// Sends `streams` requests at once on `client`, each held by the member
/// for a moment so that they overlap.
async fn burst(client: &Http2Client, streams: usize) {
    let requests: Vec<_> = (0..streams)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.get("/gwe/cometd?wait=300", &[]).await.status })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn member_connections_are_kept_for_every_stream_that_was_in_flight() {
    let (node, vipgate) = one_node("h2-keep", "max_concurrent_streams = 300").await;
    let client = Http2Client::connect(vipgate.addr("web")).await;
    assert_eq!(client.clone().get("/", &[]).await.status, 200);
    let member = vipgate.member(node);
    burst(&client, 200).await;
    let opened = member.total_connections();
    assert!(opened > 100, "the burst overlapped: {opened} connections");
    // The same burst again finds the connections the first one opened
    // waiting: a member behind an HTTP/2 client is not dialled per request.
    burst(&client, 200).await;
    burst(&client, 200).await;
    let reopened = member.total_connections() - opened;
    assert!(
        reopened <= 20,
        "{reopened} connections opened again after {opened}"
    );
    assert_eq!(counts(&vipgate).requests, 601);
}

#[tokio::test]
async fn answers_limits_and_timeouts_apply_to_each_stream() {
    let guards = "keepalive_timeout = \"400ms\"\nmax_header_size = 8192\nidle_timeout = \"1s\"";
    let (_, vipgate) = one_node("h2-limits", guards).await;
    let mut client = Http2Client::connect(vipgate.addr("web")).await;
    // A member slower than idle_timeout: 504 on that stream only.
    let slow = client.get("/gwe/cometd?wait=3000", &[]).await;
    assert_eq!(slow.status, 504);
    // A member failing mid-answer: 502.
    assert_eq!(client.get("/gwe/crash", &[]).await.status, 502);
    // A head over max_header_size is refused; the connection goes on.
    let big = "a".repeat(16_000);
    match client.try_get("/", &[("x-big", &big)]).await {
        Ok(reply) => assert_eq!(reply.status, 431),
        Err(error) => assert!(!client.is_closed(), "{error}"),
    }
    // Waiting longer than keepalive_timeout for a member is not idleness.
    let waited = client.get("/gwe/cometd?wait=700", &[]).await;
    assert_eq!(waited.status, 200);
    assert!(!client.is_closed());
    let counts = counts(&vipgate);
    assert_eq!((counts.answered_504, counts.answered_502), (1, 1));
    // No request in flight: closed after keepalive_timeout.
    eventually("the idle HTTP/2 connection is closed", || {
        client.is_closed()
    })
    .await;
}
