//! `config/vipgate.toml` reproduces the F5 sample pool: four members on two
//! proxies, each monitored on its own port, with the pool rule `all`.
//! (Uses the sample's fixed ports 9070/9075 on 127.0.0.11-12.)

mod common;

use std::collections::BTreeSet;

use common::*;
use vipgate::pool::Health;

#[tokio::test]
async fn the_sample_pool_marks_exactly_the_member_whose_port_died() {
    let mut ports = Vec::new();
    for (ip, port) in [
        ("127.0.0.11", 9070),
        ("127.0.0.11", 9075),
        ("127.0.0.12", 9070),
        ("127.0.0.12", 9075),
    ] {
        ports.push(SwitchablePort::open_at(&format!("{ip}:{port}"), &format!("{ip}:{port}")).await);
    }
    let sample = include_str!("../config/vipgate.toml")
        .replace("127.0.0.100:9070", "127.0.0.100:0")
        .replace("interval = \"5s\"", "interval = \"100ms\"")
        .replace("timeout = \"16s\"", "timeout = \"300ms\"");
    let vipgate = start(&sample.replace("[virtuals.vsCSP]", "[virtuals.vs]")).await;
    for port in &ports {
        wait_health(&vipgate, port.addr, Health::Up).await;
    }
    let mut served = BTreeSet::new();
    for _ in 0..8 {
        served.insert(tag_of_answer(vipgate.addr("vs")).await.unwrap());
    }
    assert_eq!(served.len(), 4, "round-robin over all four: {served:?}");

    // The proxy on .12 loses its 9075 listener: only that member goes down.
    ports[3].close().await;
    wait_health(&vipgate, ports[3].addr, Health::Down).await;
    for port in &ports[..3] {
        assert_eq!(vipgate.health(port.addr), Health::Up, "{}", port.addr);
    }
    for _ in 0..6 {
        assert_ne!(
            tag_of_answer(vipgate.addr("vs")).await.unwrap(),
            "127.0.0.12:9075"
        );
    }
    ports[3].reopen().await;
    wait_health(&vipgate, ports[3].addr, Health::Up).await;
}
