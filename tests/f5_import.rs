//! `vipgate import-f5`: the deployment guide's sample (bigpipe style) and
//! a tmsh-style bigip.conf covering every construct it carries over,
//! converted, checked and, for the loopback sample, run.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use vipgate::config::{
    AdminState, CookieLifetime, Mode, MonitorRule, Persistence, Probe, ProbePort, Reencrypt,
    ServiceDownAction, Snat, Tls,
};
use vipgate::pool::{Algorithm, Health};
use vipgate::snat::SourceNat;

const LOOPBACK: &str = include_str!("data/bigip-csp-loopback.conf");
const SAMPLE: &str = include_str!("data/bigip-csp-sample.conf");
const TMSH: &str = include_str!("data/bigip-tmsh.conf");
const BINARY: &str = env!("CARGO_BIN_EXE_vipgate");

#[tokio::test]
async fn the_loopback_sample_converts_and_runs_like_the_f5_pool() {
    let imported = vipgate::f5::import(LOOPBACK, "bigip-csp-loopback.conf").unwrap();
    assert!(imported
        .toml
        .starts_with("# Converted by `vipgate import-f5` from bigip-csp-loopback.conf."));
    let reported: Vec<String> = imported.notes.iter().map(ToString::to_string).collect();
    assert_eq!(reported.len(), 7, "{reported:#?}");
    assert!(reported[0].starts_with("1:1: `vlan` is network or system setup"));
    assert!(reported
        .iter()
        .any(|n| n.starts_with("26:5: node 127.0.0.11: monitor icmp")));
    assert!(reported
        .iter()
        .any(|n| n.starts_with("27:5: node 127.0.0.11: `screen`")));

    let plan = vipgate::config::parse(&imported.toml, "converted").unwrap();
    let pool = &plan.pools["poolCSP01"];
    assert_eq!(pool.members.len(), 4);
    assert_eq!(pool.members[1].address.to_string(), "127.0.0.11:9075");
    assert_eq!(
        pool.members[1].monitor,
        MonitorRule::All(vec!["TCP-9075".into()])
    );
    assert_eq!(plan.monitors["TCP-9070"].port, ProbePort::Fixed(9070));
    let vs = &plan.virtuals[0];
    assert_eq!(
        (vs.name.as_str(), vs.listen.to_string().as_str()),
        ("vsCSP", "127.0.0.100:9070")
    );
    assert_eq!(vs.snat, Snat::Automap);
    assert_eq!(vs.idle_timeout.as_secs(), 600);

    // Run it: the sample's proxies on their real ports, faster monitors,
    // the VIP on a port of the OS's choosing.
    let mut ports = Vec::new();
    for address in [
        "127.0.0.11:9070",
        "127.0.0.11:9075",
        "127.0.0.12:9070",
        "127.0.0.12:9075",
    ] {
        ports.push(SwitchablePort::open_at(address, address).await);
    }
    let running = imported
        .toml
        .replace("127.0.0.100:9070", "127.0.0.100:0")
        .replace(
            "interval = 5\ntimeout = 16",
            "interval = \"100ms\"\ntimeout = \"300ms\"",
        );
    let vipgate = start(&running).await;
    for port in &ports {
        wait_health(&vipgate, port.addr, Health::Up).await;
    }
    let mut served = BTreeSet::new();
    for _ in 0..8 {
        served.insert(tag_of_answer(vipgate.addr("vsCSP")).await.unwrap());
    }
    assert_eq!(
        served.len(),
        4,
        "round-robin over the four members: {served:?}"
    );
    // SNAT automap: connections leave from vipgate's own address.
    let mut held = LineClient::connect(vipgate.addr("vsCSP")).await;
    assert!(held.ask("hi").await.is_some());
    let snapshot = vipgate.snapshot();
    let Some(SourceNat::Automap(automap)) = snapshot.virtual_server("vsCSP").map(|v| &v.snat)
    else {
        panic!("automap expected");
    };
    assert_eq!(
        automap.usage().map(|(_, _, in_use)| in_use).sum::<usize>(),
        1
    );
    // As on the F5: the member whose own port dies goes down, alone.
    ports[3].close().await;
    wait_health(&vipgate, ports[3].addr, Health::Down).await;
    for port in &ports[..3] {
        assert_eq!(vipgate.health(port.addr), Health::Up);
    }
}

#[test]
fn the_tmsh_file_carries_every_construct_over() {
    let imported = vipgate::f5::import(TMSH, "bigip-tmsh.conf").unwrap();
    let plan = vipgate::config::parse(&imported.toml, "converted")
        .unwrap_or_else(|e| panic!("{e}\n{}", imported.toml));

    // Monitors: tcp with send/recv, http with path and status, a body
    // match turned into a tcp send/expect.
    assert_eq!(plan.monitors["TCP-9070"].port, ProbePort::Fixed(9070));
    assert_eq!(
        plan.monitors["TCP-9075"].probe,
        Probe::Tcp {
            send: "PING\r\n".into(),
            expect: "PONG".into()
        }
    );
    assert!(matches!(
        &plan.monitors["gwe-health"].probe,
        Probe::Http { path, expect_status: vipgate::config::StatusMatch::Exactly(200), .. } if path == "/gwe/health"
    ));
    assert_eq!(plan.monitors["gwe-health"].interval.as_secs(), 10);
    assert_eq!(plan.monitors["gwe-health"].port, ProbePort::Member);
    assert!(
        matches!(&plan.monitors["gwe-body"].probe, Probe::Tcp { expect, .. } if expect == "ALIVE")
    );
    // Nodes, SNAT pools.
    let node = &plan.nodes[&"10.0.0.11".parse().unwrap()];
    assert_eq!(node.monitor, MonitorRule::All(vec!["TCP-9070".into()]));
    assert_eq!(plan.snat_pools["csp-snat"].addresses.len(), 2);
    // Pools.
    let csp = &plan.pools["poolCSP01"];
    assert_eq!(csp.algorithm, Algorithm::LeastConnections);
    assert_eq!(csp.action_on_service_down, ServiceDownAction::Reset);
    assert_eq!(csp.slow_ramp.as_secs(), 60);
    assert_eq!(csp.min_active_members, 1);
    assert_eq!((csp.members[0].ratio, csp.members[0].priority), (2, 10));
    assert_eq!(csp.members[1].admin, AdminState::Disabled);
    assert_eq!(csp.members[1].connection_limit.to_string(), "5000");
    assert_eq!(csp.members[2].admin, AdminState::ForcedOffline);
    assert_eq!(
        csp.members[2].monitor,
        MonitorRule::All(vec!["TCP-9070".into(), "TCP-9075".into()]),
        "the pool rule"
    );
    let ratio = &plan.pools["poolRatio"];
    assert_eq!(ratio.algorithm, Algorithm::Ratio);
    assert_eq!(ratio.members[0].ratio, 3);
    assert_eq!(
        ratio.members[1].monitor,
        MonitorRule::AtLeast {
            min: 1,
            of: vec!["TCP-9075".into(), "TCP-9070".into()]
        }
    );
    assert!(
        matches!(&plan.pools["gwe"].tls, Reencrypt::On { server_name, .. } if server_name == "gwe.internal")
    );
    // Virtuals.
    let find = |name: &str| plan.virtuals.iter().find(|v| v.name == name).unwrap();
    let csp_vs = find("vsCSP");
    assert_eq!(csp_vs.listen.to_string(), "10.0.0.100:9070");
    assert_eq!(csp_vs.snat, Snat::Pool("csp-snat".into()));
    assert_eq!(csp_vs.idle_timeout.as_secs(), 600);
    assert_eq!(csp_vs.connection_limit.to_string(), "20000");
    assert!(
        matches!(&csp_vs.tls, Tls::Terminate(t) if t.certs[0].cert.to_str() == Some("vip.crt"))
    );
    assert_eq!(find("vsRatio").snat, Snat::Automap);
    let Mode::Http(http) = &find("vsGWE").mode else {
        panic!("vsGWE is an HTTP virtual")
    };
    assert!(
        matches!(&http.persistence, Persistence::Cookie { name, lifetime: CookieLifetime::MaxAge(age), .. } if name == "GWELB" && age.as_secs() == 8 * 3600)
    );
    assert!(
        plan.virtuals.iter().all(|v| v.name != "vsDNS"),
        "UDP is left out"
    );

    // Reported, with their lines.
    let reported: Vec<String> = imported.notes.iter().map(ToString::to_string).collect();
    for expected in [
        "5:1: `sys global-settings` is network or system setup",
        "46:1: monitor gw: type `gateway-icmp` is not supported",
        "132:1: iRules are not carried over",
        "83:1: profile src-persist of type `persist-source-addr` is not carried over",
        "179:5: virtual vsDNS: ip protocol udp: vipgate is TCP only, so this virtual is left out",
    ] {
        assert!(
            reported.iter().any(|n| n.starts_with(expected)),
            "{expected} missing from {reported:#?}"
        );
    }
}

#[test]
fn the_converted_tmsh_file_passes_vipgate_check() {
    let dir = common::tls_ca::temp_dir("f5-check");
    let imported = vipgate::f5::import(TMSH, "bigip-tmsh.conf").unwrap();
    std::fs::write(dir.join("vipgate.toml"), &imported.toml).unwrap();
    // The files the conversion names, as the operator would export them.
    let ca = common::tls_ca::TestCa::new();
    let (cert, key) = ca.write_pem(&dir, "vip.example");
    std::fs::copy(cert, dir.join("vip.crt")).unwrap();
    std::fs::copy(key, dir.join("vip.key")).unwrap();
    std::fs::copy(ca.write_ca(&dir), dir.join("members-ca.crt")).unwrap();
    std::fs::write(
        dir.join("cookie-secret"),
        "a secret of more than sixteen bytes",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .args(["check", "-c", "vipgate.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_command_prints_toml_and_reports_on_stderr() {
    let dir = common::tls_ca::temp_dir("f5-cli");
    let path = dir.join("bigip-csp-loopback.conf");
    std::fs::write(&path, LOOPBACK).unwrap();
    let output = Command::new(BINARY)
        .arg("import-f5")
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    vipgate::config::parse(&stdout, "stdout").unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("bigip-csp-loopback.conf:26:5: node 127.0.0.11: monitor icmp"),
        "{stderr}"
    );
    assert!(
        stderr.contains("7 statement(s) not carried over"),
        "{stderr}"
    );

    std::fs::write(&path, SAMPLE).unwrap();
    let output = Command::new(BINARY)
        .arg("import-f5")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing guessed");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("has 7 placeholders to fill in"), "{stderr}");
    assert!(
        stderr.contains("bigip-csp-loopback.conf:36:3: `<node1 IP address>:9070` is a placeholder"),
        "{stderr}"
    );
}

#[test]
fn malformed_files_and_placeholders_are_refused_with_their_place() {
    let error = vipgate::f5::import("pool p {\n  members\n", "broken.conf").unwrap_err();
    assert_eq!(
        error.to_string(),
        "broken.conf:1:8: this `{` is never closed"
    );
    let error = vipgate::f5::import("ltm pool /Common/p { }\n}\n", "broken.conf").unwrap_err();
    assert_eq!(
        error.to_string(),
        "broken.conf:2:1: this `}` closes nothing"
    );
    let error = vipgate::f5::import("monitor m {\n  send \"GET /\n}\n", "broken.conf").unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("broken.conf:2:8: this quoted string is never closed"),
        "{error}"
    );
    let error = vipgate::f5::import(SAMPLE, "bigip-csp-sample.conf")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("25:6: `<node1 IP address>` is a placeholder"),
        "{error}"
    );
    assert!(
        !error.contains("<F5 IP address>"),
        "placeholders in statements not carried over do not matter"
    );
}
