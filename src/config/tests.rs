//! Every class of configuration error, and the defaults of a valid file.

use std::time::Duration;

use super::*;

const VALID: &str = r#"
[pools.poolCSP01]
members = [ { address = "127.0.0.11:9070" }, { address = "127.0.0.12:9070", connection_limit = 5 } ]

[virtuals.vsCSP]
listen = "127.0.0.100:9070"
pool = "poolCSP01"
"#;

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, "test.toml") {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

fn only_problem(text: &str) -> Problem {
    let mut found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    found.remove(0)
}

#[test]
fn valid_file_gets_documented_defaults() {
    let plan = parse(VALID, "test.toml").unwrap();
    let vs = &plan.virtuals[0];
    assert_eq!(vs.idle_timeout, Duration::from_secs(300));
    assert_eq!(vs.connect_timeout, Duration::from_secs(5));
    assert_eq!(vs.connection_limit, ConnectionLimit::Unlimited);
    assert_eq!(vs.backlog, 4096);
    assert!(vs.zero_copy);
    assert_eq!(vs.tcp_keepalive, Keepalive::Off);
    assert_eq!(plan.settings.drain_timeout, Duration::from_secs(30));
    let pool = plan.pool_of(vs).expect("its pool");
    assert_eq!(pool.members[1].connection_limit, ConnectionLimit::At(5));
    assert!(plan.warnings.is_empty());
}

#[test]
fn durations_accept_text_and_bare_seconds() {
    let text = VALID.replace(
        "pool = \"poolCSP01\"",
        "pool = \"poolCSP01\"\nidle_timeout = 600\nconnect_timeout = \"1m 30s\"\ntcp_keepalive = { idle = \"2m\", probes = 3 }",
    );
    let plan = parse(&text, "t").unwrap();
    assert_eq!(plan.virtuals[0].idle_timeout, Duration::from_secs(600));
    assert_eq!(plan.virtuals[0].connect_timeout, Duration::from_secs(90));
    assert_eq!(
        plan.virtuals[0].tcp_keepalive,
        Keepalive::On {
            idle: Duration::from_secs(120),
            interval: Duration::from_secs(10),
            probes: 3
        }
    );
}

#[test]
fn unknown_pool_names_the_place_and_the_known_pools() {
    let problem = only_problem(&VALID.replace("pool = \"poolCSP01\"", "pool = \"poolCSP02\""));
    assert_eq!(problem.key, "virtuals.vsCSP.pool");
    assert_eq!(problem.message, "no pool named \"poolCSP02\"");
    assert_eq!(problem.hint.as_deref(), Some("defined pools: poolCSP01"));
    assert_eq!(problem.location, Some(Location { line: 7, column: 8 }));
    assert!(problem
        .to_string()
        .starts_with("virtuals.vsCSP.pool: no pool named \"poolCSP02\""));
}

#[test]
fn unknown_key_is_a_syntax_error_with_position() {
    let error = parse(&VALID.replace("listen =", "lisen ="), "test.toml").unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("test.toml:6:1: unknown field `lisen`"),
        "{text}"
    );
    assert!(text.contains("expected one of"), "{text}");
}

#[test]
fn unknown_algorithm_lists_the_known_ones() {
    let text = VALID.replace("members =", "algorithm = \"fastest\"\nmembers =");
    let error = parse(&text, "t").unwrap_err().to_string();
    assert!(error.contains("unknown variant `fastest`"), "{error}");
    assert!(error.contains("round-robin"), "{error}");
}

#[test]
fn bad_addresses_say_what_is_expected() {
    let text = VALID
        .replace("127.0.0.11:9070", "127.0.0.11")
        .replace("127.0.0.100:9070", "csp.example.com:9070");
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(found[0].key, "pools.poolCSP01.members[0].address");
    assert!(found[0].hint.as_deref().unwrap().contains("add the port"));
    assert_eq!(found[1].key, "virtuals.vsCSP.listen");
    assert!(found[1]
        .hint
        .as_deref()
        .unwrap()
        .contains("host names are not resolved"));
}

#[test]
fn member_port_zero_and_duplicate_members_are_refused() {
    let text = VALID.replace("127.0.0.12:9070", "127.0.0.11:9070");
    let problem = only_problem(&text);
    assert_eq!(problem.key, "pools.poolCSP01.members[1].address");
    assert!(problem.message.contains("listed twice"), "{problem}");

    let problem = only_problem(&VALID.replace("127.0.0.12:9070", "127.0.0.12:0"));
    assert!(problem.message.contains("port 0"), "{problem}");
}

#[test]
fn empty_and_missing_member_lists_are_refused() {
    let text = VALID.replace(
        r#"members = [ { address = "127.0.0.11:9070" }, { address = "127.0.0.12:9070", connection_limit = 5 } ]"#,
        "members = []",
    );
    let problem = only_problem(&text);
    assert_eq!(problem.key, "pools.poolCSP01.members");
    assert_eq!(problem.message, "the pool has no members");

    let text = "[pools.p]\n[virtuals.v]\nlisten = \"127.0.0.1:1\"\npool = \"p\"\n";
    assert_eq!(only_problem(text).key, "pools.p.members");
}

#[test]
fn zero_negative_and_malformed_durations_are_refused() {
    let text = VALID.replace(
        "pool = \"poolCSP01\"",
        "pool = \"poolCSP01\"\nidle_timeout = \"0s\"\nconnect_timeout = -5\n[settings]\ndrain_timeout = \"soon\"",
    );
    let found = problems(&text);
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "settings.drain_timeout",
            "virtuals.vsCSP.idle_timeout",
            "virtuals.vsCSP.connect_timeout"
        ]
    );
    assert_eq!(found[1].message, "must be longer than zero");
    assert!(found[0].message.contains("\"soon\" is not a duration"));
    assert!(found[2].message.contains("negative"));
}

#[test]
fn limits_out_of_range_are_refused_and_zero_means_unlimited() {
    let text = VALID.replace("connection_limit = 5", "connection_limit = -1");
    let problem = only_problem(&text);
    assert_eq!(problem.key, "pools.poolCSP01.members[1].connection_limit");
    assert!(problem.hint.unwrap().contains("from 0 to"));

    let text = VALID.replace("connection_limit = 5", "connection_limit = 0");
    let plan = parse(&text, "t").unwrap();
    assert_eq!(
        plan.pools["poolCSP01"].members[1].connection_limit,
        ConnectionLimit::Unlimited
    );
}

#[test]
fn duplicate_and_overlapping_listen_addresses_are_refused() {
    let second = "\n[virtuals.vsOther]\nlisten = \"LISTEN\"\npool = \"poolCSP01\"\n";
    let problem = only_problem(&format!(
        "{VALID}{}",
        second.replace("LISTEN", "127.0.0.100:9070")
    ));
    assert_eq!(problem.key, "virtuals.vsOther.listen");
    assert!(
        problem
            .message
            .contains("also the listen address of virtuals.vsCSP"),
        "{problem}"
    );

    let problem = only_problem(&format!(
        "{VALID}{}",
        second.replace("LISTEN", "0.0.0.0:9070")
    ));
    assert!(problem.message.contains("overlaps"), "{problem}");

    // Another port, or the other address family, is fine.
    parse(
        &format!("{VALID}{}", second.replace("LISTEN", "0.0.0.0:9075")),
        "t",
    )
    .unwrap();
    parse(
        &format!("{VALID}{}", second.replace("LISTEN", "[::]:9070")),
        "t",
    )
    .unwrap();
}

#[test]
fn missing_required_keys_and_no_virtuals() {
    let problem = only_problem(
        "[pools.p]\nmembers = [ { address = \"127.0.0.1:1\" } ]\n[virtuals.v]\npool = \"p\"\n",
    );
    assert_eq!(problem.key, "virtuals.v.listen");
    assert_eq!(problem.message, "`listen` is required");

    let found = problems("[pools.p]\nmembers = [ { address = \"127.0.0.1:1\" } ]\n");
    assert_eq!(found[0].key, "virtuals");
}

#[test]
fn bad_names_are_refused() {
    let text = VALID.replace("[virtuals.vsCSP]", "[virtuals.\"vs CSP\"]");
    let problem = only_problem(&text);
    assert_eq!(problem.key, "virtuals.vs CSP");
    assert!(problem.hint.unwrap().contains("letters, digits"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[pools.empty]
members = []

[virtuals.a]
listen = "nowhere"
pool = "missing"
idle_timeout = "0s"
backlog = 0
"#;
    let error = parse(text, "many.toml").unwrap_err();
    assert_eq!(error.problems().len(), 5, "{error}");
    let shown = error.to_string();
    assert!(
        shown.starts_with("many.toml has 5 problems; nothing was applied:"),
        "{shown}"
    );
    assert!(
        shown.contains("many.toml:6:10: virtuals.a.listen"),
        "{shown}"
    );
}

#[test]
fn unused_pools_and_port_zero_listeners_are_warnings() {
    let text =
        format!("{VALID}\n[pools.spare]\nmembers = [ {{ address = \"127.0.0.13:9070\" }} ]\n")
            .replace("127.0.0.100:9070", "127.0.0.100:0");
    let plan = parse(&text, "t").unwrap();
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
}

#[test]
fn plan_display_lists_virtuals_pools_and_members() {
    let shown = parse(VALID, "t").unwrap().to_string();
    assert!(
        shown.contains("virtual vsCSP listen 127.0.0.100:9070"),
        "{shown}"
    );
    assert!(shown.contains("-> pool poolCSP01 (round-robin)"), "{shown}");
    assert!(
        shown.contains("-> member 127.0.0.12:9070 (connection_limit 5, ratio 1, priority 0, enabled, connect_rate_limit unlimited)"),
        "{shown}"
    );
    assert!(shown.contains("monitor: none (always up)"), "{shown}");
}

#[test]
fn shipped_configurations_are_valid() {
    parse(
        include_str!("../../config/vipgate.toml"),
        "config/vipgate.toml",
    )
    .unwrap();
    parse(include_str!("../../config/demo.toml"), "config/demo.toml").unwrap();
    parse(include_str!("../../config/tls.toml"), "config/tls.toml").unwrap();
    parse(include_str!("../../config/gwe.toml"), "config/gwe.toml").unwrap();
}

#[test]
fn location_counts_lines_and_characters() {
    assert_eq!(
        Location::of_offset("ab\ncd", 4),
        Location { line: 2, column: 2 }
    );
    assert_eq!(Location::of_offset("", 10), Location { line: 1, column: 1 });
}

const MONITORED: &str = r#"
[monitors.TCP-9070]
type = "tcp"
port = 9070

[monitors.WEB]
type = "http"
path = "/health"
interval = "2s"
timeout = "7s"

[pools.poolCSP01]
monitor = { all = ["TCP-9070", "WEB"] }
members = [ { address = "127.0.0.11:9070" }, { address = "127.0.0.12:9075", monitor = { min = 1, of = ["WEB", "TCP-9070"] } } ]

[virtuals.vsCSP]
listen = "127.0.0.100:9070"
pool = "poolCSP01"
"#;

#[test]
fn monitors_get_f5_defaults_and_members_inherit_or_override_the_pool_rule() {
    let plan = parse(MONITORED, "t").unwrap();
    let tcp = &plan.monitors["TCP-9070"];
    assert_eq!(
        (tcp.interval, tcp.timeout),
        (Duration::from_secs(5), Duration::from_secs(16))
    );
    assert_eq!(tcp.port, ProbePort::Fixed(9070));
    assert_eq!(
        plan.monitors["WEB"].probe,
        Probe::Http {
            path: "/health".into(),
            host: String::new(),
            expect_status: StatusMatch::Exactly(200),
            expect: String::new(),
            tls: Reencrypt::Off,
        }
    );
    assert_eq!(plan.monitors["WEB"].port, ProbePort::Member);
    let members = &plan.pools["poolCSP01"].members;
    assert_eq!(
        members[0].monitor,
        MonitorRule::All(vec!["TCP-9070".into(), "WEB".into()])
    );
    assert_eq!(
        members[1].monitor,
        MonitorRule::AtLeast {
            min: 1,
            of: vec!["WEB".into(), "TCP-9070".into()]
        }
    );
}

#[test]
fn monitor_rules_must_name_existing_monitors_in_one_shape() {
    let problem =
        only_problem(&MONITORED.replace("[\"TCP-9070\", \"WEB\"]", "[\"TCP-9075\", \"WEB\"]"));
    assert_eq!(problem.key, "pools.poolCSP01.monitor");
    assert_eq!(problem.message, "no monitor named \"TCP-9075\"");
    assert_eq!(
        problem.hint.as_deref(),
        Some("defined monitors: TCP-9070, WEB")
    );

    for bad in [
        "{ all = [\"WEB\"], min = 1 }",
        "{ min = 1 }",
        "{ all = [] }",
    ] {
        let problem = only_problem(&MONITORED.replace("{ all = [\"TCP-9070\", \"WEB\"] }", bad));
        assert_eq!(problem.key, "pools.poolCSP01.monitor", "{bad}");
    }
    let problem = only_problem(&MONITORED.replace("min = 1, of", "min = 3, of"));
    assert_eq!(problem.key, "pools.poolCSP01.members[1].monitor.min");
}

#[test]
fn monitor_settings_are_checked() {
    let problem = only_problem(&MONITORED.replace("timeout = \"7s\"", "timeout = \"1s\""));
    assert_eq!(problem.key, "monitors.WEB.timeout");
    assert!(
        problem.message.contains("shorter than interval"),
        "{problem}"
    );

    let problem = only_problem(&MONITORED.replace("port = 9070", "port = 9070\npath = \"/\""));
    assert_eq!(problem.message, "`path` has no meaning for a tcp monitor");
    let problem = only_problem(&MONITORED.replace("path = \"/health\"", "send = \"x\""));
    assert_eq!(problem.message, "`send` has no meaning for a http monitor");
    let problem = only_problem(&MONITORED.replace("path = \"/health\"", "path = \"health check\""));
    assert_eq!(problem.key, "monitors.WEB.path");
    let problem = only_problem(&MONITORED.replace("port = 9070", "port = 70000"));
    assert_eq!(problem.key, "monitors.TCP-9070.port");
    let problem = only_problem(&MONITORED.replace("type = \"tcp\"", "type = \"icmp\""));
    assert_eq!(problem.key, "monitors.TCP-9070.port");
    assert_eq!(problem.message, "`port` has no meaning for a icmp monitor");
}

#[test]
fn http_monitors_take_a_host_tls_a_status_class_and_text() {
    let text = MONITORED.replace(
        "path = \"/health\"",
        "path = \"/health\"\nhost = \"gwe.internal\"\nexpect_status = \"2xx\"\nexpect = \"ok\"\ntls = true",
    );
    let plan = parse(&text, "t").unwrap();
    let Probe::Http {
        host,
        expect_status,
        expect,
        tls,
        ..
    } = &plan.monitors["WEB"].probe
    else {
        panic!("http")
    };
    assert_eq!((host.as_str(), expect.as_str()), ("gwe.internal", "ok"));
    assert_eq!(*expect_status, StatusMatch::Class(2));
    assert!(expect_status.accepts(204) && !expect_status.accepts(301));
    assert!(
        matches!(
            tls,
            Reencrypt::On {
                verify: MemberVerification::Disabled,
                ..
            }
        ),
        "tls = true does not check the certificate, as F5's https monitor"
    );
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);

    let any = parse(
        &MONITORED.replace("path = \"/health\"", "expect_status = \"any\""),
        "t",
    )
    .unwrap();
    assert!(matches!(
        &any.monitors["WEB"].probe,
        Probe::Http {
            expect_status: StatusMatch::Any,
            ..
        }
    ));
    let verified = MONITORED.replace(
        "path = \"/health\"",
        "tls = { ca = \"ca.pem\", server_name = \"gwe.internal\" }",
    );
    let plan = parse(&verified, "t").unwrap();
    assert!(matches!(
        &plan.monitors["WEB"].probe,
        Probe::Http { tls: Reencrypt::On { verify: MemberVerification::Ca(_), server_name }, .. } if server_name == "gwe.internal"
    ));

    for (bad, key) in [
        ("expect_status = \"6xx\"", "monitors.WEB.expect_status"),
        ("expect_status = 99", "monitors.WEB.expect_status"),
        ("host = \"two words\"", "monitors.WEB.host"),
        ("tls = { server_name = \"x\" }", "monitors.WEB.tls"),
    ] {
        let problem = only_problem(&MONITORED.replace("path = \"/health\"", bad));
        assert_eq!(problem.key, key, "{bad}: {problem}");
    }
    let problem = only_problem(&MONITORED.replace("port = 9070", "port = 9070\ntls = true"));
    assert_eq!(problem.message, "`tls` has no meaning for a tcp monitor");
}

#[test]
fn icmp_monitors_have_no_port_and_serve_nodes() {
    let text = format!(
        "{MONITORED}\n[monitors.PING]\ntype = \"icmp\"\ninterval = 1\ntimeout = 3\n\n[nodes.\"127.0.0.11\"]\nmonitor = {{ all = [\"PING\"] }}\n"
    );
    let plan = parse(&text, "t").unwrap();
    assert_eq!(plan.monitors["PING"].probe, Probe::Icmp);
    assert!(plan
        .to_string()
        .contains("monitor PING: icmp echo on the address"));
    for field in ["send = \"x\"", "path = \"/\"", "expect_status = 200"] {
        let problem =
            only_problem(&text.replace("type = \"icmp\"", &format!("type = \"icmp\"\n{field}")));
        assert!(
            problem
                .message
                .ends_with("has no meaning for a icmp monitor"),
            "{problem}"
        );
    }
}

#[test]
fn nodes_need_an_address_and_monitors_with_a_port() {
    let node = "\n[nodes.\"127.0.0.11\"]\nmonitor = { all = [\"TCP-9070\"] }\n";
    let plan = parse(&format!("{MONITORED}{node}"), "t").unwrap();
    assert_eq!(plan.nodes.len(), 1);

    let problem = only_problem(&format!("{MONITORED}{}", node.replace("TCP-9070", "WEB")));
    assert!(problem.message.contains("has no `port`"), "{problem}");
    let problem = only_problem(&format!(
        "{MONITORED}{}",
        node.replace("127.0.0.11", "csp1")
    ));
    assert_eq!(problem.message, "\"csp1\" is not an IP address");
}

#[test]
fn a_member_in_two_pools_may_have_a_rule_in_each() {
    let text =
        format!("{MONITORED}\n[pools.other]\nmembers = [ {{ address = \"127.0.0.11:9070\" }} ]\n");
    let plan = parse(&text, "t").unwrap();
    assert_eq!(plan.pools["other"].members[0].monitor, MonitorRule::Always);
    assert_eq!(
        plan.pools["poolCSP01"].members[0].monitor,
        MonitorRule::All(vec!["TCP-9070".into(), "WEB".into()])
    );
}

#[test]
fn member_and_pool_balancing_settings() {
    let text = VALID
        .replace(
            "{ address = \"127.0.0.11:9070\" }",
            "{ address = \"127.0.0.11:9070\", ratio = 3, priority = 10, state = \"forced-offline\", connect_rate_limit = 50 }",
        )
        .replace(
            "members =",
            "algorithm = \"least-connections\"\naction_on_service_down = \"reset\"\nslow_ramp = \"60s\"\nmin_active_members = 1\nmembers =",
        );
    let plan = parse(&text, "t").unwrap();
    let pool = &plan.pools["poolCSP01"];
    assert_eq!(pool.algorithm, crate::config::Algorithm::LeastConnections);
    assert_eq!(pool.action_on_service_down, ServiceDownAction::Reset);
    assert_eq!(pool.slow_ramp, Duration::from_secs(60));
    assert_eq!(pool.min_active_members, 1);
    let member = &pool.members[0];
    assert_eq!((member.ratio, member.priority), (3, 10));
    assert_eq!(member.admin, AdminState::ForcedOffline);
    assert_eq!(member.connect_rate_limit, RateLimit::PerSecond(50));
    assert_eq!(pool.members[1].ratio, 1);

    let problem = only_problem(&text.replace("ratio = 3", "ratio = 0"));
    assert_eq!(problem.key, "pools.poolCSP01.members[0].ratio");
    assert!(parse(&text.replace("forced-offline", "maintenance"), "t").is_err());
    assert!(parse(&text.replace("\"reset\"", "\"drop\""), "t").is_err());
}

#[test]
fn per_client_guards_of_a_virtual() {
    let text = VALID.replace(
        "pool = \"poolCSP01\"",
        "pool = \"poolCSP01\"\nclient_connection_limit = 5\nclient_rate_limit = 20",
    );
    let plan = parse(&text, "t").unwrap();
    let virtual_plan = &plan.virtuals[0];
    assert_eq!(virtual_plan.client_connection_limit, ConnectionLimit::At(5));
    assert_eq!(virtual_plan.client_rate_limit, RateLimit::PerSecond(20));
    assert!(plan
        .to_string()
        .contains("per client: client_connection_limit 5, client_rate_limit 20/s"));
    let problem = only_problem(&text.replace("client_rate_limit = 20", "client_rate_limit = -1"));
    assert!(
        problem.key.ends_with(".client_rate_limit"),
        "{}",
        problem.key
    );
    let defaults = &parse(VALID, "t").unwrap().virtuals[0];
    assert_eq!(defaults.client_connection_limit, ConnectionLimit::Unlimited);
    assert_eq!(defaults.client_rate_limit, RateLimit::Unlimited);
}

#[test]
fn snat_pools_and_their_capacity() {
    let text = VALID.replace(
        "pool = \"poolCSP01\"",
        "pool = \"poolCSP01\"\nsnat = \"csp-snat\"\nexpected_clients = 200000\nproxy_protocol = \"v2\"",
    ) + "\n[snat_pools.csp-snat]\naddresses = [\"127.0.0.21\", \"127.0.0.22\"]\n";
    let plan = parse(&text, "t").unwrap();
    let vs = &plan.virtuals[0];
    assert_eq!(vs.snat, Snat::Pool("csp-snat".into()));
    assert_eq!(vs.proxy_protocol, ProxyProtocol::V2);
    let snat = &plan.snat_pools["csp-snat"];
    assert_eq!((snat.first_port, snat.last_port), (1024, 65535));
    // 2 addresses x 2 members x 64512 ports.
    assert_eq!(plan.snat_capacity(vs), Some(258_048));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    assert!(plan
        .to_string()
        .contains("2 addresses x 2 members x 64512 ports = 258048 connections"));

    let crowded = parse(&text.replace("200000", "210000"), "t").unwrap();
    assert_eq!(crowded.warnings.len(), 1);
    assert!(
        crowded.warnings[0].contains("over 80% of the SNAT capacity 258048"),
        "{:?}",
        crowded.warnings
    );
}

#[test]
fn snat_errors() {
    let base = VALID.replace("pool = \"poolCSP01\"", "pool = \"poolCSP01\"\nsnat = \"s\"");
    let with = |table: &str| format!("{base}\n[snat_pools.s]\n{table}\n");
    let problem = only_problem(&with("addresses = []"));
    assert_eq!(problem.key, "snat_pools.s.addresses");
    let problem = only_problem(&with("addresses = [\"127.0.0.21:80\"]"));
    assert_eq!(problem.key, "snat_pools.s.addresses[0]");
    let problem = only_problem(&with("addresses = [\"127.0.0.21\"]\nports = \"2000-1000\""));
    assert_eq!(problem.key, "snat_pools.s.ports");
    let problem = only_problem(&with("addresses = [\"::1\"]"));
    assert!(
        problem.message.contains("no address of the family"),
        "{problem}"
    );
    let problem = only_problem(&VALID.replace(
        "pool = \"poolCSP01\"",
        "pool = \"poolCSP01\"\nsnat = \"nope\"",
    ));
    assert_eq!(problem.key, "virtuals.vsCSP.snat");
    assert!(problem.hint.unwrap().contains("automap"));
    let plan = parse(
        &VALID.replace(
            "pool = \"poolCSP01\"",
            "pool = \"poolCSP01\"\nsnat = \"automap\"",
        ),
        "t",
    )
    .unwrap();
    assert_eq!(plan.virtuals[0].snat, Snat::Automap);
    assert_eq!(plan.snat_capacity(&plan.virtuals[0]), None);
}

#[test]
fn tls_passthrough_with_sni_routes() {
    let text = VALID.replace(
        "pool = \"poolCSP01\"",
        "tls = { mode = \"passthrough\", sni_routes = { \"*\" = \"poolCSP01\", \"*.Example\" = \"poolCSP01\", \"a.b.example\" = \"poolCSP01\" } }",
    );
    let plan = parse(&text, "t").unwrap();
    let vs = &plan.virtuals[0];
    assert_eq!(
        vs.pool.as_deref(),
        Some("poolCSP01"),
        "the \"*\" route stands for `pool`"
    );
    let Tls::Passthrough {
        sni_routes,
        handshake_timeout,
    } = &vs.tls
    else {
        panic!("{:?}", vs.tls)
    };
    assert_eq!(*handshake_timeout, Duration::from_secs(10));
    let patterns: Vec<&str> = sni_routes.iter().map(|r| r.pattern.as_str()).collect();
    assert_eq!(
        patterns,
        ["a.b.example", "*.example", "*"],
        "most specific first"
    );
    assert!(sni_routes[1].matches("csp.example"));
    assert!(!sni_routes[1].matches("example"));
    assert!(!sni_routes[1].matches("badexample"));
    assert!(sni_routes[0].matches("a.b.example"));
}

#[test]
fn tls_errors() {
    let with = |tls: &str| {
        VALID.replace(
            "pool = \"poolCSP01\"",
            &format!("pool = \"poolCSP01\"\ntls = {tls}"),
        )
    };
    let problem = only_problem(&with(
        "{ mode = \"passthrough\", sni_routes = { \"a.example\" = \"nope\" } }",
    ));
    assert_eq!(problem.key, "virtuals.vsCSP.tls.sni_routes.\"a.example\"");
    assert_eq!(problem.message, "no pool named \"nope\"");
    let problem = only_problem(&with(
        "{ mode = \"passthrough\", sni_routes = { \"a*.example\" = \"poolCSP01\" } }",
    ));
    assert!(
        problem.message.contains("is not a server name pattern"),
        "{problem}"
    );
    let problem = only_problem(&with("{ mode = \"terminate\" }"));
    assert_eq!(problem.key, "virtuals.vsCSP.tls.certs");
    let problem = only_problem(&with(
        "{ mode = \"auto\", certs = [ { cert = \"a\", key = \"b\" } ], require_client_cert = true }",
    ));
    assert_eq!(problem.key, "virtuals.vsCSP.tls.require_client_cert");
    let error = parse(&with("{ mode = \"reencrypt\" }"), "t")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("expected one of `passthrough`, `terminate`, `auto`"),
        "{error}"
    );
    let problem = only_problem(&VALID.replace(
        "pool = \"poolCSP01\"",
        "tls = { mode = \"passthrough\", sni_routes = { \"a.example\" = \"poolCSP01\" } }",
    ));
    assert_eq!(
        problem.key, "virtuals.vsCSP.pool",
        "no pool and no \"*\" route"
    );
}

#[test]
fn pool_reencryption_settings() {
    let with = |tls: &str| VALID.replace("members =", &format!("tls = {tls}\nmembers ="));
    let plan = parse(
        &with("{ ca = \"ca.pem\", server_name = \"csp.internal\" }"),
        "t",
    )
    .unwrap();
    assert_eq!(
        plan.pools["poolCSP01"].tls,
        Reencrypt::On {
            server_name: "csp.internal".into(),
            verify: MemberVerification::Ca("ca.pem".into())
        }
    );
    let plan = parse(&with("{ verify = false }"), "t").unwrap();
    assert!(
        plan.warnings[0].contains("verify = false"),
        "{:?}",
        plan.warnings
    );
    let problem = only_problem(&with("{ server_name = \"csp.internal\" }"));
    assert_eq!(problem.key, "pools.poolCSP01.tls");
    assert!(problem.hint.unwrap().contains("verify = false"));
    let problem = only_problem(&with("{ ca = \"ca.pem\", server_name = \"bad name!\" }"));
    assert_eq!(problem.key, "pools.poolCSP01.tls.server_name");
}

#[test]
fn algorithm_names_parse() {
    #[derive(serde::Deserialize)]
    struct Holder {
        algorithm: Algorithm,
    }
    for (name, algorithm) in [
        ("round-robin", Algorithm::RoundRobin),
        ("ratio", Algorithm::Ratio),
        ("least-connections", Algorithm::LeastConnections),
    ] {
        let holder: Holder = toml::from_str(&format!("algorithm = \"{name}\"")).unwrap();
        assert_eq!(holder.algorithm, algorithm);
        assert_eq!(algorithm.to_string(), name);
    }
    assert!(toml::from_str::<Holder>("algorithm = \"fastest\"").is_err());
}
