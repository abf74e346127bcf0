//! HTTP virtuals meeting what scanners and odd clients send, over real
//! sockets: requests without `Host`, malformed chunked bodies, unparsable
//! heads, h2c upgrade requests; and what operators configure on top:
//! inserted header fields, cookie attributes, cookies of the previous
//! format, and the request and connection histograms.

mod common;

use std::net::SocketAddr;

use common::admin::admin;
use common::http_client::*;
use common::*;
use ring::hmac;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` as raw bytes on a new connection and reads the answer
/// until vipgate closes (or `PATIENCE` runs out).
async fn exchange(vip: SocketAddr, request: &[u8], close_after_sending: bool) -> String {
    let mut stream = TcpStream::connect(vip).await.unwrap();
    stream.write_all(request).await.unwrap();
    if close_after_sending {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_request_without_exactly_one_host_is_answered_400() {
    let (_, vipgate) = one_node("no-host", "").await;
    let vip = vipgate.addr("web");
    let answer = exchange(vip, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let answer = exchange(
        vip,
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // HTTP/1.0 may go without.
    let answer = exchange(vip, b"GET / HTTP/1.0\r\n\r\n", false).await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    let counts = counts(&vipgate);
    assert_eq!(counts.answered_400, 2);
    assert_eq!(counts.requests, 3);
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_fault() {
    let (node, vipgate) = one_node("chunked", "").await;
    let vip = vipgate.addr("web");
    for size in ["zz", "0x5", "fffffffffffffffffff"] {
        let request = format!(
            "POST /gwe/upload HTTP/1.1\r\nHost: gwe.example\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
        );
        let answer = exchange(vip, request.as_bytes(), false).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{size}: {answer}");
    }
    eventually("three refusals counted", || {
        counts(&vipgate).answered_400 == 3
    })
    .await;
    let counts = counts(&vipgate);
    assert_eq!(counts.answered_400, 3);
    assert_eq!(counts.answered_502, 0, "the member is not blamed");
    assert_eq!(vipgate.member(node).connect_failures(), 0);
    // A well-formed one goes through.
    let answer = exchange(
        vip,
        b"POST /gwe/echo HTTP/1.1\r\nHost: gwe.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("hello"), "{answer}");
}

#[tokio::test]
async fn unparsable_and_oversized_heads_are_counted_and_logged() {
    let (_, vipgate) = one_node("parse", "max_header_size = 8192").await;
    let vip = vipgate.addr("web");
    let answer = exchange(vip, b"GARBAGE\r\n\r\n", false).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let large = format!(
        "GET / HTTP/1.1\r\nHost: gwe.example\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16_000)
    );
    let answer = exchange(vip, large.as_bytes(), false).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    // The answer can reach the client before its connection (on another
    // worker) is counted.
    eventually("both refusals counted", || {
        let counts = counts(&vipgate);
        (counts.answered_400, counts.answered_431) == (1, 1)
    })
    .await;
    let metrics = admin(&vipgate, "GET", "/metrics", None).await.body;
    for status in ["400", "431"] {
        let line = format!(
            "vipgate_http_responses_generated_total{{status=\"{status}\",virtual=\"web\"}} 1"
        );
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
}

#[tokio::test]
async fn an_h2c_upgrade_is_served_over_http_1_1_and_not_passed_on() {
    let (_, vipgate) = one_node("h2c-upgrade", "").await;
    let answer = exchange(
        vipgate.addr("web"),
        b"GET /gwe/headers HTTP/1.1\r\nHost: gwe.example\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let body = answer.to_ascii_lowercase();
    assert!(!body.contains("upgrade:"), "{answer}");
    assert!(!body.contains("http2-settings"), "{answer}");
    assert_eq!(counts(&vipgate).upgrades, 0);
}

#[tokio::test]
async fn configured_header_fields_are_set_both_ways() {
    let node = web_member("127.0.0.11", "GWE_Node1").await;
    let extra = "request_headers = { \"X-Site\" = \"paris\" }\n\
                 response_headers = { \"Strict-Transport-Security\" = \"max-age=31536000\" }";
    let config = http_config(&[(node, "GWE_Node1")], extra, &secret_file("headers"));
    let vipgate = start(&config).await;
    let vip = vipgate.addr("web");
    let reply = get_once(vip, "/gwe/headers", &[("x-site", "client's own")]).await;
    assert!(reply.body.contains("x-site: paris\n"), "{}", reply.body);
    assert!(!reply.body.contains("client's own"), "{}", reply.body);
    assert_eq!(
        reply.header("strict-transport-security"),
        "max-age=31536000"
    );
    // vipgate's own answers carry them too.
    vipgate
        .member(node)
        .set_admin_state(vipgate::config::AdminState::ForcedOffline);
    let refused = get_once(vip, "/", &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.header("strict-transport-security"),
        "max-age=31536000"
    );
}

/// A cookie token in vipgate 0.1's readable format.
fn legacy_token(member: SocketAddr, expires: u64) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let body = format!("v1.{}.{expires}", hex(member.to_string().as_bytes()));
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, SECRET), body.as_bytes());
    format!("{body}.{}", hex(&tag.as_ref()[..16]))
}

#[tokio::test]
async fn cookies_of_the_previous_format_still_stick_and_are_replaced() {
    let nodes = two_nodes().await;
    let vipgate = start(&http_config(&nodes, COOKIE, &secret_file("legacy"))).await;
    let vip = vipgate.addr("web");
    for (address, route) in nodes {
        let old = format!("GWELB={}", legacy_token(address, 4_000_000_000));
        let reply = get_once(vip, "/", &[("cookie", &old)]).await;
        assert_eq!(reply.served_by(), route);
        let renewed = reply.cookie("GWELB").expect("a current cookie replaces it");
        assert!(renewed.starts_with("GWELB=v2."), "{renewed}");
        let again = get_once(vip, "/", &[("cookie", &renewed)]).await;
        assert_eq!(again.served_by(), route);
        assert_eq!(again.header("set-cookie"), "");
    }
}

#[tokio::test]
async fn cookie_attributes_are_configurable_and_any_genuine_cookie_counts() {
    let nodes = two_nodes().await;
    let persistence = "persistence = { cookie = \"GWELB\", same_site = \"strict\", http_only = false, secure = true, domain = \"gwe.example\", path = \"/gwe\" }";
    let vipgate = start(&http_config(
        &nodes,
        persistence,
        &secret_file("attributes"),
    ))
    .await;
    let vip = vipgate.addr("web");
    let first = get_once(vip, "/gwe/start", &[]).await;
    let set = first.header("set-cookie");
    assert!(
        set.ends_with("; Path=/gwe; Domain=gwe.example; Secure; SameSite=Strict"),
        "{set}"
    );
    let cookie = first.cookie("GWELB").unwrap();
    // A stale cookie of the same name (another path) comes first.
    let both = format!("GWELB=v2.00ff; {cookie}");
    let reply = get_once(vip, "/gwe/again", &[("cookie", &both)]).await;
    assert_eq!(reply.served_by(), first.served_by());
    assert_eq!(reply.header("set-cookie"), "");
}

#[tokio::test]
async fn requests_and_connections_of_http_virtuals_are_timed() {
    let (_, vipgate) = one_node("histograms", "").await;
    let mut client = HttpClient::connect(vipgate.addr("web")).await;
    for _ in 0..3 {
        assert_eq!(client.get("/gwe/cometd?wait=20", &[]).await.status, 200);
    }
    drop(client);
    let count_of = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(&format!("{name}_count{{virtual=\"web\"}}")))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    };
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = admin(&vipgate, "GET", "/metrics", None).await.body;
        if count_of(&metrics, "vipgate_connection_duration_seconds") >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        count_of(&metrics, "vipgate_connection_duration_seconds"),
        1.0
    );
    assert_eq!(count_of(&metrics, "vipgate_http_request_seconds"), 3.0);
    let under_10ms = metrics
        .lines()
        .find(|line| {
            line.starts_with("vipgate_http_request_seconds_bucket{virtual=\"web\",le=\"0.01\"}")
        })
        .unwrap_or_else(|| panic!("no 10 ms bucket in\n{metrics}"));
    assert!(
        under_10ms.ends_with(" 0"),
        "a 20 ms answer is not under 10 ms: {under_10ms}"
    );
}
