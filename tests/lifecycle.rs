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
