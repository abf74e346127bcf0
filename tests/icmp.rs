//! ICMP monitors against real addresses, IPv4 and IPv6, in a network
//! namespace the test creates: addresses on one end of a veth pair answer
//! ping; other addresses of their subnets are routed to the other end,
//! where nobody answers, so no echo request leaves the namespace. Both socket kinds are
//! used: raw sockets (root has CAP_NET_RAW, and a new namespace allows no
//! ping sockets), then unprivileged ping sockets once the namespace's
//! `net.ipv4.ping_group_range` allows them. Without either, `vipgate
//! check` says what to change.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::netns::{self, Namespace};
use common::*;
use vipgate::health::icmp::{socket_kind, SocketKind};
use vipgate::pool::Health;

/// The namespace's own IPv4 address, one that answers while it exists, and
/// one that never does.
const OWN: &str = "198.18.40.1";
const ANSWERING: &str = "198.18.40.2";
const SILENT: &str = "198.18.40.99";
const OWN_V6: &str = "fd5e:1a7e:40::1";
const SILENT_V6: &str = "fd5e:1a7e:40::99";

const BINARY: &str = env!("CARGO_BIN_EXE_vipgate");

fn namespace() -> Namespace {
    let namespace = Namespace::create("icmp");
    namespace.ip(&[
        "link", "add", "name", "vg0", "type", "veth", "peer", "name", "vg1",
    ]);
    namespace.ip(&["link", "set", "vg0", "up"]);
    namespace.ip(&["link", "set", "vg1", "up"]);
    namespace.ip(&["addr", "add", &format!("{OWN}/24"), "dev", "vg0"]);
    namespace.ip(&["addr", "add", &format!("{ANSWERING}/24"), "dev", "vg0"]);
    namespace.ip(&[
        "addr",
        "add",
        &format!("{OWN_V6}/64"),
        "dev",
        "vg0",
        "nodad",
    ]);
    namespace
}

#[test]
#[ignore = "needs root and iproute2 (network namespaces)"]
fn icmp_monitors_mark_answering_addresses_up_and_silent_ones_down() {
    if netns::inside().is_some() {
        return tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(in_namespace());
    }
    let namespace = namespace();
    namespace.run_test_inside("icmp_monitors_mark_answering_addresses_up_and_silent_ones_down");
}

fn set_ping_group_range(range: &str) {
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", range).unwrap();
}

fn config(members: &[SocketAddr]) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|m| format!("{{ address = \"{m}\" }}"))
        .collect();
    let nodes: String = members
        .iter()
        .zip([OWN, ANSWERING, SILENT, OWN_V6, SILENT_V6])
        .map(|(_, ip)| format!("[nodes.\"{ip}\"]\nmonitor = {{ all = [\"PING\"] }}\n"))
        .collect();
    format!(
        "[monitors.PING]\ntype = \"icmp\"\ninterval = \"100ms\"\ntimeout = \"400ms\"\n\n{nodes}\n[pools.p]\nmembers = [ {} ]\n\n[virtuals.vs]\nlisten = \"{OWN}:0\"\npool = \"p\"\n",
        members.join(", ")
    )
}

async fn in_namespace() {
    let own = tagged_member(OWN, "own").await;
    let answering = tagged_member(ANSWERING, "answering").await;
    let silent: SocketAddr = format!("{SILENT}:9070").parse().unwrap();
    let own_v6 = tagged_member(&format!("[{OWN_V6}]"), "own-v6").await;
    let silent_v6: SocketAddr = format!("[{SILENT_V6}]:9070").parse().unwrap();
    let members = [own, answering, silent, own_v6, silent_v6];

    for (range, kind) in [
        ("1 0", SocketKind::Raw),
        ("0 2147483647", SocketKind::Datagram),
    ] {
        set_ping_group_range(range);
        assert_eq!(socket_kind(OWN.parse().unwrap()).unwrap(), kind);
        assert_eq!(socket_kind(OWN_V6.parse().unwrap()).unwrap(), kind);
        let vipgate = start(&config(&members)).await;
        for up in [own, answering, own_v6] {
            wait_health(&vipgate, up, Health::Up).await;
        }
        for down in [silent, silent_v6] {
            wait_health(&vipgate, down, Health::Down).await;
        }
        let snapshot = vipgate.snapshot();
        let silent_probe = snapshot
            .health()
            .probes()
            .find(|(key, _)| key.target.ip().to_string() == SILENT)
            .unwrap();
        assert_eq!(silent_probe.0.target.port(), 0, "ICMP knows no port");
        // Down after the interval (100 ms) with no echo; each attempt
        // itself waits up to the timeout (400 ms) and may have said so by
        // now.
        let (health, detail) = silent_probe.1.verdict();
        assert_eq!(health, Health::Down);
        assert!(
            ["no answer within 100ms", "no answer within 400ms"].contains(&detail.as_str()),
            "{detail}"
        );
        assert!(tag_of_answer(vipgate.addr("vs")).await.is_some());

        // An address that answered stops answering: down once no echo
        // came back for the timeout.
        netns::run(
            "ip",
            &["addr", "del", &format!("{ANSWERING}/24"), "dev", "vg0"],
        );
        let gone = std::time::Instant::now();
        wait_health(&vipgate, answering, Health::Down).await;
        assert!(
            gone.elapsed() >= Duration::from_millis(300) - Duration::from_millis(100),
            "a probe that was up waits for the timeout: {:?}",
            gone.elapsed()
        );
        assert_eq!(vipgate.health(own), Health::Up);
        netns::run(
            "ip",
            &["addr", "add", &format!("{ANSWERING}/24"), "dev", "vg0"],
        );
        wait_health(&vipgate, answering, Health::Up).await;
    }
}

#[test]
#[ignore = "needs root, iproute2 and setpriv (network namespaces)"]
fn without_ping_sockets_or_cap_net_raw_check_says_what_to_change() {
    if netns::inside().is_some() {
        return;
    }
    let namespace = namespace();
    let dir = common::tls_ca::temp_dir("icmp-check");
    let path = dir.join("vipgate.toml");
    let silent: SocketAddr = format!("{SILENT}:9070").parse().unwrap();
    std::fs::write(&path, config(&[silent])).unwrap();
    let path = path.display().to_string();

    // Raw sockets only: fine for root.
    let allowed = namespace.exec(BINARY, &["check", "-c", &path]);
    assert!(allowed.status.success(), "{allowed:?}");
    // Without CAP_NET_RAW and with ping sockets off: refused, with the fix.
    let refused = namespace.exec(
        "setpriv",
        &[
            "--bounding-set",
            "-net_raw",
            "--inh-caps",
            "-net_raw",
            BINARY,
            "check",
            "-c",
            &path,
        ],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("monitors.PING: this process cannot send ICMP echo requests over IPv4")
            && stderr.contains("net.ipv4.ping_group_range")
            && stderr.contains("CAP_NET_RAW"),
        "{stderr}"
    );
    // With ping sockets allowed for its group, the same process may.
    let allow = namespace.exec(
        "sh",
        &["-c", "echo '0 0' > /proc/sys/net/ipv4/ping_group_range"],
    );
    assert!(allow.status.success(), "{allow:?}");
    let unprivileged = namespace.exec(
        "setpriv",
        &[
            "--bounding-set",
            "-net_raw",
            "--inh-caps",
            "-net_raw",
            BINARY,
            "check",
            "-c",
            &path,
        ],
    );
    assert!(unprivileged.status.success(), "{unprivileged:?}");
}
