//! What members may answer, over real sockets: vipgate speaks HTTP/1.1 to
//! members itself, so every way RFC 9112 lets a response be framed is
//! tried here against a scripted member that sends its answers in small
//! pieces: chunked bodies with extensions and trailers, interim `1xx`
//! answers, bodies delimited by the connection's end, HEAD and 204
//! answers without a body, and heads that are not HTTP. Whether a member
//! connection is used again after each is checked from the member's side.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::http_client::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A member answering each request by its path with fixed bytes, written
/// a few at a time; closing after answers that end with the connection.
/// Counts the connections it accepted.
async fn scripted_member(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(answer_requests(socket));
        }
    });
    (address, accepted)
}

async fn answer_requests(mut socket: TcpStream) {
    socket.set_nodelay(true).unwrap();
    for served in 0.. {
        let Some(head) = read_request_head(&mut socket).await else {
            return;
        };
        let path = head.split(' ').nth(1).unwrap_or("");
        if path == "/once" && served > 0 {
            // A connection it meant to close anyway: closed without a
            // word, as a server timing out its keep-alive does.
            return;
        }
        let (answer, then_close): (&[u8], bool) = match path {
            "/chunked" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n", false),
            "/interim" => (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
            "/until-close" => (b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end", true),
            "/head" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            "/no-content" => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
            "/garbage" => (b"NOT HTTP AT ALL\r\n\r\n", true),
            "/short" => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
            "/once" => (b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce", false),
            _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
        };
        for piece in answer.chunks(7) {
            if socket.write_all(piece).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        if then_close {
            return;
        }
    }
}

async fn behind_vipgate(test: &str) -> (Vipgate, SocketAddr, Arc<AtomicUsize>) {
    let (member, accepted) = scripted_member("127.0.0.13").await;
    let vipgate = start(&format!(
        "[settings]\nworker_threads = 1\n\n{}",
        http_config(&[(member, "GWE_Node3")], "", &secret_file(test))
    ))
    .await;
    (vipgate, member, accepted)
}

#[tokio::test]
async fn every_framing_a_member_may_use_reaches_the_client() {
    let (vipgate, _, accepted) = behind_vipgate("framings").await;
    let mut client = HttpClient::connect(vipgate.addr("web")).await;

    let chunked = client.get("/chunked", &[]).await;
    assert_eq!(
        (chunked.status.as_u16(), chunked.body.as_str()),
        (200, "hello world")
    );
    let interim = client.get("/interim", &[]).await;
    assert_eq!(
        (interim.status.as_u16(), interim.body.as_str()),
        (200, "ok"),
        "1xx passed over"
    );
    let head = client
        .send("HEAD", "/head", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!((head.status.as_u16(), head.body.as_str()), (200, ""));
    let none = client.get("/no-content", &[]).await;
    assert_eq!(none.status, 204);
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "each of those leaves the member connection fit for the next"
    );

    let until_close = client.get("/until-close", &[]).await;
    assert_eq!(until_close.body, "until the end");
    let after = client.get("/chunked", &[]).await;
    assert_eq!(after.body, "hello world");
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        2,
        "a body ended by the connection's end takes the connection with it"
    );
    assert_eq!(counts(&vipgate).requests, 6);
}

#[tokio::test]
async fn a_member_answering_garbage_or_cut_short_fails_that_request_only() {
    let (vipgate, _, accepted) = behind_vipgate("garbage").await;
    let vip = vipgate.addr("web");
    let mut client = HttpClient::connect(vip).await;
    assert_eq!(client.get("/garbage", &[]).await.status, 502);
    assert_eq!(counts(&vipgate).answered_502, 1);
    // The client connection goes on.
    assert_eq!(client.get("/chunked", &[]).await.body, "hello world");

    // A body cut short cannot be finished: the client sees the
    // response end early (its connection is closed), never a wrong body
    // passed as whole.
    let mut short = HttpClient::connect(vip).await;
    let cut = short.send("GET", "/short", &[], Bytes::new()).await;
    assert!(cut.is_err(), "{cut:?}");
    assert_eq!(get_once(vip, "/chunked", &[]).await.body, "hello world");
    // The garbage's connection, the one /chunked and /short shared (closed
    // after /short), and a fresh one for the last /chunked.
    assert_eq!(accepted.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_request_body_of_unknown_length_goes_chunked_and_an_early_answer_is_passed_on() {
    let (node, vipgate) = one_node("upload-chunked", "").await;
    let vip = vipgate.addr("web");
    // The client's body is chunked: the member gets it chunked and echoes
    // it while it still arrives.
    let mut stream = TcpStream::connect(vip).await.unwrap();
    stream
        .write_all(b"POST /gwe/echo HTTP/1.1\r\nHost: gwe.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("hello") {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .expect("the echo streams before the body ends")
            .unwrap();
        assert!(read > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..read]);
    }
    stream.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    while !String::from_utf8_lossy(&seen).ends_with("0\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .expect("the rest of the echo")
            .unwrap();
        assert!(read > 0);
        seen.extend_from_slice(&buffer[..read]);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
    assert!(seen.contains(" world"), "{seen}");
    assert_eq!(vipgate.member(node).total_connections(), 1);
}

#[tokio::test]
async fn only_a_request_the_member_cannot_have_acted_on_is_sent_again() {
    let (vipgate, _, accepted) = behind_vipgate("replay").await;
    let mut client = HttpClient::connect(vipgate.addr("web")).await;
    assert_eq!(client.get("/once", &[]).await.body, "once");
    // The kept connection takes the next request and closes without an
    // answer: a GET is sent again, on a new connection.
    let again = client.get("/once", &[]).await;
    assert_eq!((again.status.as_u16(), again.body.as_str()), (200, "once"));
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    // A POST that reached the member is never sent twice.
    let posted = client
        .send("POST", "/once", &[], Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(posted.status, 502);
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    assert_eq!(counts(&vipgate).answered_502, 1);
}
