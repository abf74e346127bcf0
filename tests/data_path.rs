//! The byte pump over real loopback sockets: bulk integrity on the splice
//! and buffered paths, half-close, resets, idle timeout.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BLOCK: usize = 64 * 1024;

/// Block `index` of a deterministic pseudo-random stream, so the receiver
/// can check every byte without keeping what was sent.
fn block(index: u64, buffer: &mut [u8]) {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buffer.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// Sends `total` bytes through `addr` to an echo member and checks that the
/// same `total` bytes come back, byte for byte, then a clean end.
async fn round_trip(addr: SocketAddr, total: usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let blocks = total / BLOCK;
    let writer = tokio::spawn(async move {
        let mut buffer = vec![0; BLOCK];
        for index in 0..blocks as u64 {
            block(index, &mut buffer);
            write.write_all(&buffer).await.unwrap();
        }
        write.shutdown().await.unwrap();
    });
    let mut expected = vec![0; BLOCK];
    let mut received = vec![0; BLOCK];
    for index in 0..blocks as u64 {
        read.read_exact(&mut received)
            .await
            .unwrap_or_else(|e| panic!("block {index}: {e}"));
        block(index, &mut expected);
        assert!(received == expected, "block {index} differs");
    }
    assert_eq!(
        read.read(&mut received).await.unwrap(),
        0,
        "nothing after the last byte"
    );
    writer.await.unwrap();
}

async fn bulk(zero_copy: bool) {
    let member = echo_member("127.0.0.11").await;
    let vipgate = start(&config(&[member], &format!("zero_copy = {zero_copy}"))).await;
    let total = 256 * 1024 * 1024;
    tokio::time::timeout(
        Duration::from_secs(120),
        round_trip(vipgate.addr("vs"), total),
    )
    .await
    .expect("256 MiB each way in two minutes");
    let (to_member, to_client) = {
        let state = vipgate.member(member);
        eventually("the connection is accounted", || {
            state.counts().bytes.to_member > 0
        })
        .await;
        let bytes = state.counts().bytes;
        (bytes.to_member, bytes.to_client)
    };
    assert_eq!((to_member, to_client), (total as u64, total as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_256_mib_each_way_arrives_intact_with_splice() {
    bulk(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_256_mib_each_way_arrives_intact_with_buffers() {
    bulk(false).await;
}

/// A member that reads the whole request (until the client's FIN), then
/// answers with a large reply and closes: the shape of a request/response
/// over a half-closed connection.
async fn read_all_then_reply_member(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                stream.read_to_end(&mut request).await.unwrap();
                let header = format!("got {} bytes\n", request.len());
                stream.write_all(header.as_bytes()).await.unwrap();
                stream
                    .write_all(&vec![b'x'; 4 * 1024 * 1024])
                    .await
                    .unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    addr
}

async fn half_close(zero_copy: bool) {
    let member = read_all_then_reply_member("127.0.0.12").await;
    let vipgate = start(&config(&[member], &format!("zero_copy = {zero_copy}"))).await;
    let mut client = TcpStream::connect(vipgate.addr("vs")).await.unwrap();
    client.write_all(&vec![b'r'; 300_000]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let header = b"got 300000 bytes\n";
    assert_eq!(&reply[..header.len()], header);
    assert_eq!(reply.len(), header.len() + 4 * 1024 * 1024);
    assert!(reply[header.len()..].iter().all(|&b| b == b'x'));
}

#[tokio::test]
async fn half_closed_client_still_gets_the_whole_reply_with_splice() {
    half_close(true).await;
}

#[tokio::test]
async fn half_closed_client_still_gets_the_whole_reply_with_buffers() {
    half_close(false).await;
}

#[tokio::test]
async fn member_reset_is_passed_on_to_the_client() {
    let listener = TcpListener::bind("127.0.0.11:0").await.unwrap();
    let member = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut first = [0; 5];
        let mut stream = stream;
        stream.read_exact(&mut first).await.unwrap();
        // Close with a reset instead of a FIN.
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    });
    let vipgate = start(&config(&[member], "")).await;
    let mut client = TcpStream::connect(vipgate.addr("vs")).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut buffer = [0; 16];
    let result = tokio::time::timeout(PATIENCE, client.read(&mut buffer))
        .await
        .unwrap();
    let error = result.expect_err("a reset, not a clean end");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn idle_connection_is_closed_after_idle_timeout_but_a_busy_one_is_not() {
    let member = tagged_member("127.0.0.11", "m11").await;
    let vipgate = start(&config(&[member], "idle_timeout = \"400ms\"")).await;
    let mut client = LineClient::connect(vipgate.addr("vs")).await;
    // Busy for three idle timeouts: traffic keeps it open.
    for round in 0..12 {
        assert!(
            client.ask(&format!("ping {round}")).await.is_some(),
            "round {round}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Silent: vipgate closes it.
    assert!(client.closed_by_server().await);
    let stats = vipgate.virtual_stats("vs");
    eventually("the connection is gone", || stats.active_connections() == 0).await;
}

#[tokio::test]
async fn member_sees_client_fin_and_connection_ends_cleanly() {
    let member = echo_member("127.0.0.13").await;
    let vipgate = start(&config(&[member], "")).await;
    round_trip(vipgate.addr("vs"), BLOCK * 4).await;
    let stats = vipgate.virtual_stats("vs");
    eventually("the connection is gone", || stats.active_connections() == 0).await;
    assert_eq!(vipgate.member(member).active_connections(), 0);
}
