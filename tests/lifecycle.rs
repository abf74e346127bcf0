//! Shutdown as SIGTERM starts it: stop accepting, let open connections
//! finish within the drain timeout, close the rest.

mod common;

use std::time::Duration;

use common::*;

fn drain_config(members: &[std::net::SocketAddr], drain: &str) -> String {
    format!(
        "[settings]\ndrain_timeout = \"{drain}\"\n{}",
        config(members, "")
    )
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_open_connections_work_until_drain_timeout() {
    let member = tagged_member("127.0.0.11", "m11").await;
    let mut vipgate = start(&drain_config(&[member], "1s")).await;
    let addr = vipgate.addr("vs");
    let mut open = LineClient::connect(addr).await;
    assert!(open.ask("before").await.is_some());

    let stopped = vipgate.begin_shutdown();
    // The listener closes: new clients are refused.
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, refused)
        .await
        .expect("listener closed");
    // The open connection still works while draining...
    assert!(open.ask("during drain").await.is_some());
    // ...and is closed when the drain timeout runs out; then vipgate stops.
    assert!(open.closed_by_server().await);
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("vipgate stopped")
        .unwrap();
}

#[tokio::test]
async fn shutdown_finishes_as_soon_as_the_last_connection_ends() {
    let member = tagged_member("127.0.0.11", "m11").await;
    // A drain timeout far longer than PATIENCE: finishing in time proves
    // vipgate did not wait for it.
    let mut vipgate = start(&drain_config(&[member], "1h")).await;
    let mut open = LineClient::connect(vipgate.addr("vs")).await;
    assert!(open.ask("hello").await.is_some());
    let addr = vipgate.addr("vs");
    let stopped = vipgate.begin_shutdown();
    // Draining has begun (the listener refuses), and the open connection
    // is still served.
    eventually("the listener closed", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(open.ask("still served").await.is_some());
    drop(open);
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("vipgate stopped")
        .unwrap();
}

/// `paced_drain` and `withdraw_delay` (a node of an active/active group):
/// on SIGTERM the node still says it is ready and accepts while it closes
/// its connections with a FIN at an even pace; then `/ready` says it is
/// leaving while it still accepts; then it stops.
#[tokio::test]
async fn a_leaving_node_sheds_its_connections_at_a_pace_then_withdraws() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let member = tagged_member("127.0.0.11", "m11").await;
    let mut vipgate = start(&format!(
        "[settings]\ndrain_timeout = \"2s\"\npaced_drain = true\nwithdraw_delay = \"1s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{}",
        config(&[member], "")
    ))
    .await;
    let addr = vipgate.addr("vs");
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"hello\n").await.unwrap();
        let mut answer = [0u8; 64];
        assert!(stream.read(&mut answer).await.unwrap() > 0);
        clients.push(stream);
    }
    let started = tokio::time::Instant::now();
    let _stopped = vipgate.begin_shutdown();
    // Each client learns how its connection ended, and when.
    let endings: Vec<_> = clients
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut rest = [0u8; 64];
                let ended = stream.read(&mut rest).await;
                (started.elapsed(), matches!(ended, Ok(0)))
            })
        })
        .collect();
    // Still ready and accepting while it sheds.
    assert_eq!(
        common::admin::admin(&vipgate, "GET", "/ready", None)
            .await
            .status,
        200
    );
    assert!(LineClient::connect(addr)
        .await
        .ask("during")
        .await
        .is_some());
    let mut ends = Vec::new();
    for ending in endings {
        ends.push(ending.await.unwrap());
    }
    assert!(
        ends.iter().all(|(_, fin)| *fin),
        "every client got a FIN: {ends:?}"
    );
    let first = ends.iter().map(|(at, _)| *at).min().unwrap();
    let last = ends.iter().map(|(at, _)| *at).max().unwrap();
    println!("20 connections closed between {first:?} and {last:?}");
    assert!(
        first < Duration::from_millis(800) && last >= Duration::from_millis(1000),
        "spread over the 1.6 s pace: {first:?} to {last:?}"
    );
    // Then: not ready, still accepting, for the withdraw delay.
    let leaving = async {
        while common::admin::admin(&vipgate, "GET", "/ready", None)
            .await
            .status
            != 503
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, leaving)
        .await
        .expect("/ready says leaving");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_ok(),
        "still accepting"
    );
}
