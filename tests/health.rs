//! Health monitors and member states over real loopback sockets: members
//! whose ports close and reopen, rules `all` and `min N of`, member and
//! node monitors, actions on service down, and the algorithms that depend on
//! health (least-connections after recovery, slow ramp, priority groups).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vipgate::pool::Health;

/// A tcp monitor table probing `port` (or the member's own port), every
/// 100 ms, down after 300 ms without success.
fn tcp_monitor(name: &str, port: Option<u16>) -> String {
    let port = port.map_or_else(String::new, |p| format!("port = {p}\n"));
    format!("[monitors.{name}]\ntype = \"tcp\"\n{port}interval = \"100ms\"\ntimeout = \"300ms\"\n")
}

fn member_line(address: SocketAddr, extra: &str) -> String {
    format!("{{ address = \"{address}\"{extra} }}")
}

fn pool(name: &str, pool_extra: &str, members: &[String]) -> String {
    format!(
        "[pools.{name}]\n{pool_extra}\nmembers = [ {} ]\n",
        members.join(", ")
    )
}

fn virtual_for(pool: &str) -> String {
    format!("[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"{pool}\"\n")
}

async fn tags(vipgate: &Vipgate, clients: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..clients {
        if let Some(tag) = tag_of_answer(vipgate.addr("vs")).await {
            *counts.entry(tag).or_insert(0) += 1;
        }
    }
    counts
}

fn only(tags: &[&str], counts: &BTreeMap<String, usize>) -> bool {
    counts.keys().all(|tag| tags.contains(&tag.as_str())) && !counts.is_empty()
}

/// The F5 sample's shape: host .12 serves two ports, the pool rule needs
/// both; host .11 has a member-level monitor on its own port only.
async fn two_port_host(rule: &str) -> (Vipgate, SwitchablePort, SwitchablePort, SocketAddr) {
    let first = SwitchablePort::open("127.0.0.12", "a").await;
    let second = SwitchablePort::open("127.0.0.12", "b").await;
    let other = tagged_member("127.0.0.11", "c").await;
    let toml = format!(
        "{}{}{}{}{}",
        tcp_monitor("P1", Some(first.addr.port())),
        tcp_monitor("P2", Some(second.addr.port())),
        tcp_monitor("OWN", None),
        pool(
            "p",
            &format!("monitor = {rule}"),
            &[
                member_line(first.addr, ""),
                member_line(second.addr, ""),
                member_line(other, ", monitor = { all = [\"OWN\"] }"),
            ]
        ),
        virtual_for("p"),
    );
    let vipgate = start(&toml).await;
    (vipgate, first, second, other)
}

#[tokio::test]
async fn all_rule_takes_both_ports_of_a_host_down_and_back_up() {
    let (vipgate, first, mut second, other) = two_port_host("{ all = [\"P1\", \"P2\"] }").await;
    for member in [first.addr, second.addr, other] {
        wait_health(&vipgate, member, Health::Up).await;
    }
    let counts = tags(&vipgate, 30).await;
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );

    let closed_at = Instant::now();
    second.close().await;
    wait_health(&vipgate, first.addr, Health::Down).await;
    wait_health(&vipgate, second.addr, Health::Down).await;
    // Down within interval + timeout (100 + 300 ms), with room for a slow
    // machine.
    assert!(
        closed_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        closed_at.elapsed()
    );
    assert_eq!(
        vipgate.health(other),
        Health::Up,
        "its own monitor still passes"
    );
    assert!(
        only(&["c"], &tags(&vipgate, 10).await),
        "no new connection to a down member"
    );

    second.reopen().await;
    wait_health(&vipgate, first.addr, Health::Up).await;
    wait_health(&vipgate, second.addr, Health::Up).await;
    let counts = tags(&vipgate, 30).await;
    assert_eq!(
        counts.len(),
        3,
        "recovered members take connections again: {counts:?}"
    );
}

#[tokio::test]
async fn min_rule_keeps_members_up_while_enough_monitors_pass() {
    let (vipgate, mut first, mut second, _) =
        two_port_host("{ min = 1, of = [\"P1\", \"P2\"] }").await;
    wait_health(&vipgate, first.addr, Health::Up).await;
    second.close().await;
    // Its probe down, and two more rounds for the verdict to have
    // changed if it were going to: still up, one of two passes.
    wait_probe_health(&vipgate, second.addr, Health::Down).await;
    probe_rounds(&vipgate, second.addr.ip(), 2).await;
    assert_eq!(vipgate.health(first.addr), Health::Up);
    assert_eq!(vipgate.health(second.addr), Health::Up);
    first.close().await;
    wait_health(&vipgate, first.addr, Health::Down).await;
    wait_health(&vipgate, second.addr, Health::Down).await;
}

#[tokio::test]
async fn node_monitor_takes_every_member_of_the_address_down() {
    let mut node_port = SwitchablePort::open("127.0.0.13", "node").await;
    let members = [
        tagged_member("127.0.0.13", "x").await,
        tagged_member("127.0.0.13", "y").await,
    ];
    let spare = tagged_member("127.0.0.11", "z").await;
    let toml = format!(
        "{}[nodes.\"127.0.0.13\"]\nmonitor = {{ all = [\"NODE\"] }}\n{}{}",
        tcp_monitor("NODE", Some(node_port.addr.port())),
        pool(
            "p",
            "",
            &[
                member_line(members[0], ""),
                member_line(members[1], ""),
                member_line(spare, "")
            ]
        ),
        virtual_for("p"),
    );
    let vipgate = start(&toml).await;
    wait_health(&vipgate, members[0], Health::Up).await;
    assert_eq!(vipgate.health(spare), Health::Up, "no monitor: up at once");
    node_port.close().await;
    wait_health(&vipgate, members[0], Health::Down).await;
    wait_health(&vipgate, members[1], Health::Down).await;
    assert!(only(&["z"], &tags(&vipgate, 6).await));
    node_port.reopen().await;
    wait_health(&vipgate, members[1], Health::Up).await;
}

async fn service_down(action: &str) -> Option<String> {
    let mut port = SwitchablePort::open("127.0.0.12", "m").await;
    let toml = format!(
        "{}{}{}",
        tcp_monitor("OWN", None),
        pool(
            "p",
            &format!("monitor = {{ all = [\"OWN\"] }}\naction_on_service_down = \"{action}\""),
            &[member_line(port.addr, "")]
        ),
        virtual_for("p"),
    );
    let vipgate = start(&toml).await;
    wait_health(&vipgate, port.addr, Health::Up).await;
    let mut client = LineClient::connect(vipgate.addr("vs")).await;
    assert!(client.ask("before").await.is_some());
    port.close().await;
    wait_health(&vipgate, port.addr, Health::Down).await;
    client.ask("after").await
}

#[tokio::test]
async fn reset_closes_open_connections_of_a_member_that_goes_down() {
    assert_eq!(service_down("reset").await, None);
}

#[tokio::test]
async fn none_keeps_open_connections_of_a_member_that_goes_down() {
    assert_eq!(service_down("none").await.as_deref(), Some("m after"));
}

#[tokio::test]
async fn least_connections_fills_a_recovered_member_until_the_pool_is_even() {
    let steady = tagged_member("127.0.0.11", "a").await;
    let mut recovering = SwitchablePort::open("127.0.0.12", "b").await;
    recovering.close().await;
    let toml = format!(
        "{}{}{}",
        tcp_monitor("OWN", None),
        pool(
            "p",
            "algorithm = \"least-connections\"\nmonitor = { all = [\"OWN\"] }",
            &[member_line(steady, ""), member_line(recovering.addr, "")]
        ),
        virtual_for("p"),
    );
    let vipgate = start(&toml).await;
    // A member whose first probe fails never takes traffic.
    wait_health(&vipgate, recovering.addr, Health::Down).await;
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut client = LineClient::connect(vipgate.addr("vs")).await;
        assert_eq!(client.ask("x").await.as_deref(), Some("a x"));
        held.push(client);
    }
    recovering.reopen().await;
    wait_health(&vipgate, recovering.addr, Health::Up).await;
    for _ in 0..6 {
        let mut client = LineClient::connect(vipgate.addr("vs")).await;
        assert_eq!(
            client.ask("x").await.as_deref(),
            Some("b x"),
            "the emptier member first"
        );
        held.push(client);
    }
    assert_eq!(vipgate.member(steady).active_connections(), 6);
    assert_eq!(vipgate.member(recovering.addr).active_connections(), 6);
}

/// vipgate over unmonitored members tagged a, b, c... on 127.0.0.11...,
/// each with its extra member settings.
async fn tagged_pool(pool_extra: &str, member_extras: &[&str]) -> Vipgate {
    let mut members = Vec::new();
    for (index, extra) in member_extras.iter().enumerate() {
        let tag = ((b'a' + index as u8) as char).to_string();
        let address = tagged_member(&format!("127.0.0.{}", 11 + index), &tag).await;
        members.push(member_line(address, extra));
    }
    start(&format!(
        "{}{}",
        pool("p", pool_extra, &members),
        virtual_for("p")
    ))
    .await
}

#[tokio::test]
async fn ratio_spreads_by_member_ratio() {
    let vipgate = tagged_pool("algorithm = \"ratio\"", &[", ratio = 3", ""]).await;
    let counts = tags(&vipgate, 40).await;
    assert_eq!(counts, BTreeMap::from([("a".into(), 30), ("b".into(), 10)]));
}

async fn share_after_recovery(slow_ramp: &str) -> usize {
    let steady = tagged_member("127.0.0.11", "a").await;
    let mut recovering = SwitchablePort::open("127.0.0.12", "b").await;
    recovering.close().await;
    let toml = format!(
        "{}{}{}",
        tcp_monitor("OWN", None),
        pool(
            "p",
            &format!("monitor = {{ all = [\"OWN\"] }}\n{slow_ramp}"),
            &[member_line(steady, ""), member_line(recovering.addr, "")]
        ),
        virtual_for("p"),
    );
    let vipgate = start(&toml).await;
    wait_health(&vipgate, recovering.addr, Health::Down).await;
    recovering.reopen().await;
    wait_health(&vipgate, recovering.addr, Health::Up).await;
    tags(&vipgate, 40).await.get("b").copied().unwrap_or(0)
}

#[tokio::test]
async fn slow_ramp_holds_back_a_member_that_just_recovered() {
    assert_eq!(
        share_after_recovery("").await,
        20,
        "without slow ramp: its full share"
    );
    let ramped = share_after_recovery("slow_ramp = \"1h\"").await;
    assert!(ramped <= 2, "seconds into a one-hour ramp: {ramped} of 40");
}

#[tokio::test]
async fn priority_group_fails_over_to_the_standby_group_and_back() {
    let mut preferred = SwitchablePort::open("127.0.0.11", "main").await;
    let standby = tagged_member("127.0.0.12", "standby").await;
    let toml = format!(
        "{}{}{}",
        tcp_monitor("OWN", None),
        pool(
            "p",
            "monitor = { all = [\"OWN\"] }\nmin_active_members = 1",
            &[
                member_line(preferred.addr, ", priority = 10"),
                member_line(standby, "")
            ]
        ),
        virtual_for("p"),
    );
    let vipgate = start(&toml).await;
    wait_health(&vipgate, preferred.addr, Health::Up).await;
    wait_health(&vipgate, standby, Health::Up).await;
    assert!(only(&["main"], &tags(&vipgate, 6).await));
    preferred.close().await;
    wait_health(&vipgate, preferred.addr, Health::Down).await;
    assert!(only(&["standby"], &tags(&vipgate, 6).await));
    preferred.reopen().await;
    wait_health(&vipgate, preferred.addr, Health::Up).await;
    assert!(only(&["main"], &tags(&vipgate, 6).await));
}

#[tokio::test]
async fn connect_rate_limit_spreads_a_burst_to_the_other_members() {
    let vipgate = tagged_pool("", &[", connect_rate_limit = 5", ""]).await;
    let counts = tags(&vipgate, 30).await;
    let limited = counts.get("a").copied().unwrap_or(0);
    assert!((5..=8).contains(&limited), "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 30, "nobody refused");
}

#[tokio::test]
async fn disabled_and_forced_offline_members_take_no_new_connections() {
    let vipgate = tagged_pool(
        "",
        &[", state = \"disabled\"", ", state = \"forced-offline\"", ""],
    )
    .await;
    assert!(only(&["c"], &tags(&vipgate, 6).await));
}

/// A tiny HTTP server answering every request with the status in `status`.
async fn http_status_server(ip: &str, status: Arc<AtomicU16>) -> SocketAddr {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let status = status.load(Ordering::Relaxed);
            tokio::spawn(async move {
                let mut request = [0; 1024];
                let _ = stream.read(&mut request).await;
                let reply = format!("HTTP/1.0 {status} Something\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_monitor_follows_the_expected_status() {
    let status = Arc::new(AtomicU16::new(200));
    let health_endpoint = http_status_server("127.0.0.11", status.clone()).await;
    let member = tagged_member("127.0.0.11", "web").await;
    let toml = format!(
        "[monitors.HTTP]\ntype = \"http\"\nport = {}\npath = \"/health\"\nexpect_status = 200\ninterval = \"100ms\"\ntimeout = \"300ms\"\n{}{}",
        health_endpoint.port(),
        pool("p", "monitor = { all = [\"HTTP\"] }", &[member_line(member, "")]),
        virtual_for("p"),
    );
    let vipgate = start(&toml).await;
    wait_health(&vipgate, member, Health::Up).await;
    status.store(503, Ordering::Relaxed);
    wait_health(&vipgate, member, Health::Down).await;
    let snapshot = vipgate.snapshot();
    let (_, detail) = snapshot.health().probes().next().unwrap().1.verdict();
    assert_eq!(detail, "HTTP status 503, expected 200");
    status.store(200, Ordering::Relaxed);
    wait_health(&vipgate, member, Health::Up).await;
}

#[tokio::test]
async fn a_blackholed_monitor_times_out_without_delaying_other_probes() {
    let (_listener, _fillers, silent) = silent_address("127.0.0.11").await;
    let slow_member = tagged_member("127.0.0.11", "slow").await;
    let fast_member = tagged_member("127.0.0.12", "fast").await;
    let toml = format!(
        "[monitors.SLOW]\ntype = \"tcp\"\nport = {}\ninterval = \"2s\"\ntimeout = \"6s\"\n{}{}{}",
        silent.port(),
        tcp_monitor("FAST", None),
        pool(
            "p",
            "",
            &[
                member_line(slow_member, ", monitor = { all = [\"SLOW\"] }"),
                member_line(fast_member, ", monitor = { all = [\"FAST\"] }"),
            ]
        ),
        virtual_for("p"),
    );
    let started = Instant::now();
    let vipgate = start(&toml).await;
    wait_health(&vipgate, fast_member, Health::Up).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the fast probe waited"
    );
    assert_eq!(
        vipgate.health(slow_member),
        Health::Unchecked,
        "still probing"
    );
    assert!(
        only(&["fast"], &tags(&vipgate, 4).await),
        "unchecked takes no traffic"
    );
    wait_health(&vipgate, slow_member, Health::Down).await;
    let snapshot = vipgate.snapshot();
    let slow_probe = snapshot
        .health()
        .probes()
        .find(|(key, _)| key.monitor == "SLOW")
        .unwrap()
        .1
        .verdict();
    assert_eq!(
        slow_probe,
        (Health::Down, "no answer within 2s".to_string())
    );
}
