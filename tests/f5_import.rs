//! `vipgate import-f5` on tmsh exports as F5 shops have them (vipgate's own
//! fixtures in `tests/data/f5/`, one per construct real files hold):
//! converted, checked against the report, then run over real sockets to
//! see the converted configuration serve as the F5 would.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::f5::*;
use common::http_client::HttpClient;
use common::*;
use vipgate::config::Algorithm;
use vipgate::config::{
    AdminState, CookieLifetime, Mode, MonitorRule, Persistence, Probe, ProbePort, Reencrypt,
    ServiceDownAction, Snat, StatusMatch, Tls,
};
use vipgate::pool::Health;

const TMSH_V15: &str = include_str!("data/f5/tmsh-v15.conf");
const ONE_LINE: &str = include_str!("data/f5/tmsh-one-line.conf");
const TEMPLATES: &str = include_str!("data/f5/templates.conf");
const TMSH_REFERENCE: &str = include_str!("data/bigip-tmsh.conf");
const BINARY: &str = env!("CARGO_BIN_EXE_vipgate");

/// Connections through `vipgate`'s virtual `name`, and the members that
/// answered them.
async fn served(vipgate: &Vipgate, name: &str, connections: usize) -> Vec<String> {
    let mut tags = Vec::new();
    for _ in 0..connections {
        tags.push(tag_of_answer(vipgate.addr(name)).await.unwrap_or_default());
    }
    tags
}

fn distinct(tags: &[String]) -> BTreeSet<&str> {
    tags.iter().map(String::as_str).collect()
}

#[test]
fn a_tmsh_export_converts_what_matters_and_reports_the_rest() {
    let imported = import(TMSH_V15, "tmsh-v15.conf");
    let plan = vipgate::config::parse(&imported.toml, "converted").unwrap();

    // Monitors: F5's send and recv strings read as a path, a Host and a
    // status; a banner check keeps its escapes' meaning; ICMP carries over.
    let Probe::Http {
        path,
        host,
        expect_status,
        ..
    } = &plan.monitors["csp_http"].probe
    else {
        panic!("csp_http is an http monitor");
    };
    assert_eq!(
        (path.as_str(), host.as_str(), *expect_status),
        ("/health", "csp.internal", StatusMatch::Exactly(200))
    );
    assert_eq!(plan.monitors["csp_http"].port, ProbePort::Fixed(9072));
    assert_eq!(
        plan.monitors["csp_banner"].probe,
        Probe::Tcp {
            send: "HELLO\r\n".into(),
            expect: "CSP READY".into()
        }
    );
    assert_eq!(plan.monitors["icmp"].probe, Probe::Icmp);
    assert_eq!(plan.monitors["gateway_icmp"].probe, Probe::Icmp);
    assert!(matches!(
        plan.monitors["http"].probe,
        Probe::Http {
            expect_status: StatusMatch::Any,
            ..
        }
    ));
    let node = &plan.nodes[&"127.0.0.32".parse().unwrap()];
    assert_eq!(node.monitor, MonitorRule::All(vec!["gateway_icmp".into()]));

    // Members: `state down` was the monitor's verdict at export, not the
    // operator's; service names became ports; FQDN and port-any members
    // are left out.
    let csp = &plan.pools["csp_pool"];
    assert_eq!(csp.algorithm, Algorithm::LeastConnections);
    let states: Vec<(String, AdminState)> = csp
        .members
        .iter()
        .map(|m| (m.address.to_string(), m.admin))
        .collect();
    assert_eq!(
        states,
        [
            ("127.0.0.31:9070".to_string(), AdminState::Enabled),
            ("127.0.0.32:9070".to_string(), AdminState::ForcedOffline),
            ("127.0.0.33:9070".to_string(), AdminState::Disabled),
            ("127.0.0.33:8080".to_string(), AdminState::Enabled),
        ]
    );
    assert_eq!(
        csp.members[0].monitor,
        MonitorRule::AtLeast {
            min: 2,
            of: vec!["csp_9070".into(), "csp_banner".into(), "csp_http".into()]
        }
    );

    // Virtuals: the two that load-balance TCP over a usable pool, and the
    // port-80 one that sends browsers to HTTPS.
    let names: Vec<&str> = plan.virtuals.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["vs_csp", "vs_gwe", "vs_redirect"]);
    assert_eq!(plan.virtuals[2].pool, None);
    let vs_csp = &plan.virtuals[0];
    assert_eq!(vs_csp.snat, Snat::Pool("csp_snat".into()));
    assert_eq!(vs_csp.idle_timeout.as_secs(), 600);
    let addresses: Vec<String> = plan.snat_pools["csp_snat"]
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        addresses,
        ["127.0.0.21", "127.0.0.22"],
        "snat-translation resolved"
    );
    let Mode::Http(http) = &plan.virtuals[1].mode else {
        panic!("vs_gwe is an HTTP virtual");
    };
    assert!(matches!(
        &http.persistence,
        Persistence::Cookie { name, lifetime: CookieLifetime::MaxAge(age), .. }
            if name == "GWELB" && age.as_secs() == 8 * 3600
    ));

    // The report: what was left out, one by one, with its place.
    let report = &imported.report;
    let details: Vec<String> = report.details().map(ToString::to_string).collect();
    for expected in [
        "116:9: pool csp_pool: member api.example.net:9070 is an FQDN member",
        "122:9: pool csp_pool: member 127.0.0.34:any has no fixed port",
        "140:1: pool reports_pool has no members; left out",
        "228:1: virtual vs_reports: its pool reports_pool has no members; left out",
        "233:1: virtual vs_api: its pool api_pool has no member vipgate can connect to",
        "238:1: virtual vs_dns: its protocol is udp and vipgate is TCP only; left out",
        "254:9: virtual vs_redirect: iRule _sys_https_redirect redirects every request to HTTPS",
        "257:1: virtual forward_any: it is an `ip-forward` virtual",
        "222:9: virtual vs_gwe: iRule size-check is not carried over",
    ] {
        assert!(
            details.iter().any(|d| d.starts_with(expected)),
            "{expected}\nnot in\n{details:#?}"
        );
    }
    assert_eq!(details.len(), 12, "{details:#?}");
    // Everything else, by kind: the iRules' `<` and the profile's HTML
    // stopped nothing, and other modules keep their own names.
    let dropped: Vec<(String, usize)> = report
        .dropped()
        .into_iter()
        .map(|(group, _, places)| (group.to_string(), places.len()))
        .collect();
    for expected in [
        ("ltm rule", 2),
        ("security bot-defense", 1),
        ("security dos", 1),
        ("apm epsec", 1),
        ("net vlan", 1),
        ("virtual `vlans`", 2),
        ("pool not used by a converted virtual", 1),
    ] {
        assert!(
            dropped.contains(&(expected.0.to_string(), expected.1)),
            "{expected:?} not in {dropped:?}"
        );
    }
    assert_eq!(report.summary.virtuals, 3);
    assert_eq!(report.summary.members, 6);
}

#[tokio::test]
#[ignore = "needs root: the F5 file puts members on port 80 and its monitors ping"]
async fn the_converted_tmsh_export_serves_as_the_f5_did() {
    let imported = import(TMSH_V15, "tmsh-v15.conf");
    // The proxies on .31 and .33: service port 9070, banner 9075, HTTP
    // health 9072 that wants `Host: csp.internal`; .33 also on webcache.
    members(&["127.0.0.31:9070", "127.0.0.33:9070", "127.0.0.33:8080"]).await;
    let banner_31 = banner("127.0.0.31:9075").await;
    let http_31 = http_health("127.0.0.31:9072", "csp.internal").await;
    let _banner_33 = banner("127.0.0.33:9075").await;
    let _http_33 = http_health("127.0.0.33:9072", "csp.internal").await;
    for (address, route) in [("127.0.0.35:80", "gwe35"), ("127.0.0.36:80", "gwe36")] {
        vipgate::demo::spawn_web_engagement(address.parse().unwrap(), route.into())
            .await
            .unwrap();
    }
    let vipgate = start(&runnable(&imported.toml, "tmsh-v15")).await;
    let csp1 = "127.0.0.31:9070".parse().unwrap();
    let csp3 = "127.0.0.33:8080".parse().unwrap();
    wait_health(&vipgate, csp1, Health::Up).await;
    wait_health(&vipgate, csp3, Health::Up).await;

    // The member exported as `state down` serves; forced offline and
    // disabled ones do not.
    let tags = served(&vipgate, "vs_csp", 8).await;
    assert_eq!(
        distinct(&tags),
        BTreeSet::from(["127.0.0.31:9070", "127.0.0.33:8080"]),
        "{tags:?}"
    );
    // Through the SNAT pool: once the connections above have given their
    // ports back, a held one takes exactly one.
    let snat_ports_in_use = || -> usize {
        vipgate
            .status()
            .snat_pools
            .iter()
            .flat_map(|pool| &pool.addresses)
            .flat_map(|address| &address.members)
            .map(|ports| ports.in_use)
            .sum()
    };
    eventually("the served connections' SNAT ports are free", || {
        snat_ports_in_use() == 0
    })
    .await;
    let mut held = LineClient::connect(vipgate.addr("vs_csp")).await;
    assert!(held.ask("hi").await.is_some());
    assert_eq!(snat_ports_in_use(), 1, "one port of the SNAT pool is taken");

    // `min 2 of` three monitors: one failing leaves csp1 up, two take it
    // down; so the HTTP monitor really asks with the right Host.
    banner_31.abort();
    let banner: std::net::SocketAddr = "127.0.0.31:9075".parse().unwrap();
    wait_probe_health(&vipgate, banner, Health::Down).await;
    probe_rounds(&vipgate, banner.ip(), 2).await;
    assert_eq!(vipgate.health(csp1), Health::Up);
    http_31.abort();
    wait_health(&vipgate, csp1, Health::Down).await;
    assert_eq!(
        distinct(&served(&vipgate, "vs_csp", 3).await),
        BTreeSet::from(["127.0.0.33:8080"])
    );

    // The HTTP virtual: the GWELB cookie keeps a client on its member.
    wait_health(&vipgate, "127.0.0.35:80".parse().unwrap(), Health::Up).await;
    wait_health(&vipgate, "127.0.0.36:80".parse().unwrap(), Health::Up).await;
    let mut client = HttpClient::connect(vipgate.addr("vs_gwe")).await;
    let first = client.get("/gwe/page", &[]).await;
    let cookie = first.cookie("GWELB").expect("the persistence cookie");
    for _ in 0..4 {
        let mut again = HttpClient::connect(vipgate.addr("vs_gwe")).await;
        let reply = again.get("/gwe/page", &[("cookie", &cookie)]).await;
        assert_eq!(reply.served_by(), first.served_by());
    }
}

#[tokio::test]
#[ignore = "needs root: the converted F5 monitors ping (CAP_NET_RAW, or ping sockets in net.ipv4.ping_group_range)"]
async fn one_line_tmsh_converts_as_blocks_do() {
    let imported = import(ONE_LINE, "tmsh-one-line.conf");
    assert!(imported.report.notes.is_empty(), "{}", imported.report);
    let plan = vipgate::config::parse(&imported.toml, "converted").unwrap();
    let pool = &plan.pools["ol_pool"];
    assert_eq!(pool.algorithm, Algorithm::Ratio);
    assert_eq!(pool.slow_ramp.as_secs(), 30);
    assert_eq!((pool.members[0].ratio, pool.members[1].ratio), (3, 1));
    assert_eq!(
        pool.members[1].admin,
        AdminState::Enabled,
        "`state down` is no admin state"
    );
    let vs = &plan.virtuals[0];
    assert_eq!(vs.snat, Snat::Pool("ol_snat".into()));
    assert_eq!(vs.idle_timeout.as_secs(), 1200);
    assert_eq!(vs.connection_limit.to_string(), "5000");
    assert_eq!(
        plan.nodes[&"127.0.0.61".parse().unwrap()].monitor,
        MonitorRule::All(vec!["icmp".into()])
    );

    let started = members(&["127.0.0.61:9070", "127.0.0.62:9070"]).await;
    let vipgate = start(&runnable(&imported.toml, "one-line")).await;
    for member in &started {
        wait_health(&vipgate, *member, Health::Up).await;
    }
    let tags = served(&vipgate, "ol_vs", 8).await;
    let to_first = tags.iter().filter(|t| *t == "127.0.0.61:9070").count();
    assert_eq!(to_first, 6, "ratio 3:1 over 8 connections: {tags:?}");
}

#[test]
fn templates_are_refused_with_every_placeholder_where_a_value_goes() {
    let error = vipgate::f5::import(TEMPLATES, "templates.conf")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("templates.conf is a template: 4 placeholders to fill in"),
        "{error}"
    );
    for place in [
        "templates.conf:3:1: `__POOL_CFG__`",
        "templates.conf:5:17: `/Common/{{ vip_address }}:443`",
        "templates.conf:7:10: `/Common/${pool_name}`",
        "templates.conf:10:17: `/Common/__VS_ADDR__:80`",
    ] {
        assert!(error.contains(place), "{place} missing from\n{error}");
    }
    assert!(
        !error.contains("__BUILD__") && !error.contains("__DEBUG__"),
        "{error}"
    );
}

#[test]
fn a_latin1_file_is_read() {
    let bytes = b"ltm pool /Common/p {\n    description \"Rechenzentrum S\xfcd\"\n    members { /Common/127.0.0.71:9070 { address 127.0.0.71 } }\n}\nltm virtual /Common/v { destination /Common/127.0.0.100:9070 ip-protocol tcp pool /Common/p }\n";
    let imported = vipgate::f5::import_bytes(bytes, "latin1.conf").unwrap();
    let first = imported.report.details().next().unwrap().to_string();
    assert_eq!(first, "the file is not UTF-8; it was read as Latin-1");
    vipgate::config::parse(&imported.toml, "converted").unwrap();
}

fn import_f5(path: &std::path::Path) -> std::process::Output {
    Command::new(BINARY)
        .arg("import-f5")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn the_command_exits_0_with_a_configuration_and_1_when_nothing_is_usable() {
    let dir = common::tls_ca::temp_dir("f5-cli");
    let path = dir.join("tmsh-v15.conf");
    std::fs::write(&path, TMSH_V15).unwrap();
    let output = import_f5(&path);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    vipgate::config::parse(&stdout, "stdout").unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("tmsh-v15.conf: converted 3 virtuals, 2 pools with 6 members"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  ltm rule (2): iRules: vipgate has no scripting"),
        "{stderr}"
    );

    // Only a UDP virtual: nothing to run, and the reason.
    let udp = dir.join("dns.conf");
    std::fs::write(
        &udp,
        "ltm pool /Common/dns { members { /Common/127.0.0.31:domain { address 127.0.0.31 } } }\nltm virtual /Common/vs_dns { destination /Common/127.0.0.100:domain ip-protocol udp pool /Common/dns }\n",
    )
    .unwrap();
    let output = import_f5(&udp);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: no virtual server of dns.conf could be converted"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "dns.conf:2:1: virtual vs_dns: its protocol is udp and vipgate is TCP only; left out"
        ),
        "{stderr}"
    );

    // Not UTF-8: read all the same.
    let latin1 = dir.join("latin1.conf");
    let mut bytes = TMSH_V15.as_bytes().to_vec();
    bytes.extend_from_slice(b"ltm node /Common/x { description \"S\xfcd\" address 127.0.0.39 }\n");
    std::fs::write(&latin1, bytes).unwrap();
    let output = import_f5(&latin1);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("  latin1.conf: the file is not UTF-8; it was read as Latin-1\n"));
}

#[test]
#[ignore = "needs root: the converted F5 monitors ping (CAP_NET_RAW, or ping sockets in net.ipv4.ping_group_range)"]
fn the_converted_files_pass_vipgate_check() {
    let dir = common::tls_ca::temp_dir("f5-check");
    std::fs::write(
        dir.join("cookie-secret"),
        "a secret of more than sixteen bytes",
    )
    .unwrap();
    // The files the conversion names, as the operator would export them.
    let ca = common::tls_ca::TestCa::new();
    let (cert, key) = ca.write_pem(&dir, "vip.example");
    std::fs::copy(cert, dir.join("vip.crt")).unwrap();
    std::fs::copy(key, dir.join("vip.key")).unwrap();
    for (name, text) in [
        ("tmsh-v15.conf", TMSH_V15),
        ("tmsh-one-line.conf", ONE_LINE),
        ("bigip-tmsh.conf", TMSH_REFERENCE),
    ] {
        let imported = import(text, name);
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, &imported.toml).unwrap();
        let output = Command::new(BINARY)
            .args(["check", "-c"])
            .arg(&path)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_tmsh_reference_file_carries_every_construct_over() {
    let imported = import(TMSH_REFERENCE, "bigip-tmsh.conf");
    let plan = vipgate::config::parse(&imported.toml, "converted")
        .unwrap_or_else(|e| panic!("{e}\n{}", imported.toml));
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
        Probe::Http { path, host, expect_status: StatusMatch::Exactly(200), .. }
            if path == "/gwe/health" && host == "gwe"
    ));
    assert_eq!(plan.monitors["gwe-health"].interval.as_secs(), 10);
    let node = &plan.nodes[&"10.0.0.11".parse().unwrap()];
    assert_eq!(
        node.monitor,
        MonitorRule::All(vec!["TCP-9070".into(), "icmp".into()]),
        "the node's icmp monitor carries over"
    );
    assert_eq!(plan.snat_pools["csp-snat"].addresses.len(), 2);
    let csp = &plan.pools["poolCSP01"];
    assert_eq!(csp.algorithm, Algorithm::LeastConnections);
    assert_eq!(csp.action_on_service_down, ServiceDownAction::Reset);
    assert_eq!((csp.slow_ramp.as_secs(), csp.min_active_members), (60, 1));
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
    let find = |name: &str| plan.virtuals.iter().find(|v| v.name == name).unwrap();
    let vs = find("vsCSP");
    assert_eq!(vs.listen.to_string(), "10.0.0.100:9070");
    assert_eq!(vs.snat, Snat::Pool("csp-snat".into()));
    assert_eq!(vs.idle_timeout.as_secs(), 600);
    assert_eq!(vs.connection_limit.to_string(), "20000");
    assert!(matches!(&vs.tls, Tls::Terminate(t) if t.certs[0].cert.to_str() == Some("vip.crt")));
    assert_eq!(find("vsRatio").snat, Snat::Automap);
    assert!(
        matches!(&find("vsGWE").mode, Mode::Http(http) if http.request_headers == [("x-site".to_string(), "paris".to_string())]),
        "the http profile's header-insert carries over"
    );
    assert!(
        plan.virtuals.iter().all(|v| v.name != "vsDNS"),
        "UDP is left out"
    );
    let details: Vec<String> = imported.report.details().map(ToString::to_string).collect();
    for expected in [
        "159:13: virtual vsRatio: iRule redirect is not carried over",
        "172:9: virtual vsGWE: server-ssl profile gwe-serverssl does not verify the members",
        "178:1: virtual vsDNS: its protocol is udp and vipgate is TCP only; left out",
    ] {
        assert!(
            details.iter().any(|d| d.starts_with(expected)),
            "{expected}: {details:#?}"
        );
    }
}

#[test]
fn a_min_of_rule_with_icmp_carries_over_as_it_is() {
    let text = "ltm pool /Common/p {\n    members { /Common/127.0.0.72:80 { address 127.0.0.72 } }\n    monitor min 1 of { /Common/icmp /Common/http }\n}\nltm virtual /Common/v { destination /Common/127.0.0.100:80 ip-protocol tcp pool /Common/p }\n";
    let imported = import(text, "min.conf");
    let plan = vipgate::config::parse(&imported.toml, "converted").unwrap();
    assert_eq!(
        plan.pools["p"].members[0].monitor,
        MonitorRule::AtLeast {
            min: 1,
            of: vec!["icmp".into(), "http".into()]
        }
    );
    assert_eq!(imported.report.details().count(), 0, "{}", imported.report);
}
