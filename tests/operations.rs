//! Operations over real sockets: the Prometheus metrics (read back with a
//! Prometheus text parser), the status JSON, the admin API with its errors
//! and token, and live reloads, including one under a few thousand held
//! connections.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::admin::*;
use common::*;
use serde_json::Value;

fn temp_file(test: &str, name: &str, text: &str) -> PathBuf {
    let path = common::tls_ca::temp_dir(&format!("ops-{test}")).join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A line-member pool `p` behind virtual `vs` on a port the OS picks.
fn line_config(members: &[SocketAddr], extra: &str) -> String {
    format!("{ADMIN}{}{extra}", config(members, ""))
}

#[tokio::test]
async fn metrics_move_with_traffic_failures_and_state_changes() {
    let first = tagged_member("127.0.0.11", "m1").await;
    let second = tagged_member("127.0.0.12", "m2").await;
    let dead = refusing_address("127.0.0.13").await;
    let vipgate = start(&line_config(&[first, second, dead], "")).await;
    let vip = vipgate.addr("vs");
    let before = Scrape::of(&vipgate).await;
    assert_eq!(
        before.get("vipgate_virtual_connections_total", &[("virtual", "vs")]),
        0.0
    );
    assert_eq!(
        before.get("vipgate_member_up", &[("member", &first.to_string())]),
        1.0
    );

    for _ in 0..6 {
        let mut client = LineClient::connect(vip).await;
        assert!(client.ask("hello").await.is_some());
    }
    let held = LineClient::connect(vip).await;
    // Two workers accept: the held client may be counted after the six
    // have closed, or before.
    eventually("connection counts settle", || {
        let stats = vipgate.virtual_stats("vs");
        stats.active_connections() == 1 && stats.counts().connections.total == 7
    })
    .await;
    let after = Scrape::of(&vipgate).await;
    assert_eq!(
        after.get("vipgate_virtual_connections_total", &[("virtual", "vs")]),
        7.0
    );
    assert_eq!(
        after.get("vipgate_virtual_connections_active", &[("virtual", "vs")]),
        1.0
    );
    let served: f64 = [first, second]
        .iter()
        .map(|m| {
            after.get(
                "vipgate_member_connections_total",
                &[("member", &m.to_string())],
            )
        })
        .sum();
    assert_eq!(served, 7.0);
    assert!(
        after.get(
            "vipgate_member_connect_failures_total",
            &[("member", &dead.to_string())]
        ) >= 1.0
    );
    assert!(
        after.get(
            "vipgate_member_bytes_total",
            &[("member", &first.to_string()), ("direction", "to_client")]
        ) > 0.0
    );
    assert!(
        after.get(
            "vipgate_member_connect_seconds_count",
            &[("member", &first.to_string())]
        ) >= 3.0
    );
    assert_eq!(
        after.get(
            "vipgate_connection_duration_seconds_count",
            &[("virtual", "vs")]
        ),
        6.0
    );
    assert_eq!(after.get("vipgate_pool_members_up", &[("pool", "p")]), 3.0);
    assert_eq!(
        after.get("vipgate_config_reloads_total", &[("result", "success")]),
        0.0
    );
    // No client address in any label.
    let client_side = held.local_addr().to_string();
    for sample in &after.0.samples {
        for (_, value) in sample.labels.iter() {
            assert!(
                !value.contains(&client_side),
                "{} carries the client address",
                sample.metric
            );
        }
    }

    let reply = admin(
        &vipgate,
        "POST",
        &format!("/pools/p/members/{first}/disable"),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let changed = Scrape::of(&vipgate).await;
    let member = first.to_string();
    assert_eq!(
        changed.get(
            "vipgate_member_admin_state",
            &[("member", &member), ("state", "disabled")]
        ),
        1.0
    );
    assert_eq!(
        changed.value(
            "vipgate_member_admin_state",
            &[("member", &member), ("state", "enabled")]
        ),
        None
    );
    assert_eq!(
        changed.get("vipgate_pool_members_up", &[("pool", "p")]),
        2.0
    );
    drop(held);
}

#[tokio::test]
async fn monitor_results_and_snat_usage_are_exported() {
    let mut watched = SwitchablePort::open("127.0.0.11", "m1").await;
    let toml = format!(
        "{ADMIN}[monitors.tcp]\ntype = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"200ms\"\n\
         [snat_pools.out]\naddresses = [\"127.0.0.21\"]\nports = \"41000-41009\"\n\
         [pools.p]\nmonitor = {{ all = [\"tcp\"] }}\nmembers = [ {{ address = \"{}\" }} ]\n\
         [virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\nsnat = \"out\"\n",
        watched.addr
    );
    let vipgate = start(&toml).await;
    wait_health(&vipgate, watched.addr, vipgate::pool::Health::Up).await;
    let mut client = LineClient::connect(vipgate.addr("vs")).await;
    assert!(client.ask("hello").await.is_some());
    let labels = [
        ("snat_pool", "out"),
        ("address", "127.0.0.21"),
        ("member", &watched.addr.to_string()),
    ];
    let scrape = Scrape::of(&vipgate).await;
    assert_eq!(scrape.get("vipgate_snat_ports_in_use", &labels), 1.0);
    assert_eq!(scrape.get("vipgate_snat_ports_free", &labels), 9.0);
    let target = watched.addr.to_string();
    assert_eq!(
        scrape.get(
            "vipgate_monitor_up",
            &[("monitor", "tcp"), ("target", &target)]
        ),
        1.0
    );

    watched.close().await;
    wait_health(&vipgate, watched.addr, vipgate::pool::Health::Down).await;
    let scrape = Scrape::of(&vipgate).await;
    assert_eq!(
        scrape.get(
            "vipgate_monitor_up",
            &[("monitor", "tcp"), ("target", &target)]
        ),
        0.0
    );
    assert_eq!(scrape.get("vipgate_member_up", &[("member", &target)]), 0.0);
    assert_eq!(
        scrape.get(
            "vipgate_member_health",
            &[("member", &target), ("health", "down")]
        ),
        1.0
    );

    let status = status(&vipgate).await;
    let member = &status["pools"][0]["members"][0];
    assert_eq!(member["health"], "down");
    assert_eq!(member["monitors"][0]["monitor"], "tcp");
    assert_eq!(member["monitors"][0]["result"], "down");
    assert!(member["monitors"][0]["detail"].as_str().unwrap() != "ok");
    assert_eq!(
        status["snat_pools"][0]["addresses"][0]["members"][0]["in_use"],
        1
    );
}

#[tokio::test]
async fn status_lists_virtuals_pools_and_members() {
    let first = tagged_member("127.0.0.11", "m1").await;
    let vipgate = start(&line_config(&[first], "")).await;
    assert!(LineClient::connect(vipgate.addr("vs"))
        .await
        .ask("hi")
        .await
        .is_some());
    let status = status(&vipgate).await;
    assert_eq!(status["virtuals"][0]["name"], "vs");
    assert_eq!(status["virtuals"][0]["mode"], "tcp");
    assert_eq!(status["virtuals"][0]["connections"]["total"], 1);
    assert_eq!(status["pools"][0]["name"], "p");
    assert_eq!(status["pools"][0]["algorithm"], "round-robin");
    let member = &status["pools"][0]["members"][0];
    assert_eq!(member["address"], first.to_string());
    assert_eq!(member["health"], "up");
    assert_eq!(member["state"], "enabled");
    assert_eq!(member["connections"]["total"], 1);
    assert_eq!(status["config"]["reloads"]["failed"], 0);
}

#[tokio::test]
async fn admin_actions_answer_with_clear_errors() {
    let first = tagged_member("127.0.0.11", "m1").await;
    let second = tagged_member("127.0.0.12", "m2").await;
    let vipgate = start(&line_config(&[first, second], "")).await;
    for (action, state) in [
        ("offline", "forced-offline"),
        ("disable", "disabled"),
        ("enable", "enabled"),
    ] {
        let reply = admin(
            &vipgate,
            "POST",
            &format!("/pools/p/members/{first}/{action}"),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["state"], state);
        assert_eq!(vipgate.member(first).admin_state().to_string(), state);
    }
    // Offline takes the member out of new connections.
    admin(
        &vipgate,
        "POST",
        &format!("/pools/p/members/{first}/offline"),
        None,
    )
    .await;
    for _ in 0..4 {
        assert_eq!(
            tag_of_answer(vipgate.addr("vs")).await.as_deref(),
            Some("m2")
        );
    }

    let cases = [
        (
            "POST",
            "/pools/p/members/127.0.0.99:1/enable".to_string(),
            404,
            "pool p has no member 127.0.0.99:1",
        ),
        (
            "POST",
            "/pools/p/members/not-an-address/enable".to_string(),
            404,
            "has no member",
        ),
        (
            "POST",
            format!("/pools/nope/members/{first}/enable"),
            404,
            "no pool named \"nope\"",
        ),
        (
            "POST",
            format!("/pools/p/members/{first}/purge"),
            400,
            "unknown action \"purge\"",
        ),
        (
            "POST",
            format!("/pools/p/members/{first}/drain"),
            400,
            "drain needs a deadline",
        ),
        (
            "POST",
            format!("/pools/p/members/{first}/drain?within=soon"),
            400,
            "within=soon: give a duration from 1s to 7d",
        ),
        (
            "GET",
            "/connections?sort=age".to_string(),
            400,
            "unknown parameter \"sort\"",
        ),
        (
            "GET",
            format!("/pools/p/members/{first}/enable"),
            405,
            "not allowed",
        ),
        ("POST", "/metrics".to_string(), 405, "not allowed"),
        ("GET", "/nothing-here".to_string(), 404, "no such endpoint"),
    ];
    for (method, path, code, message) in cases {
        let reply = admin(&vipgate, method, &path, None).await;
        assert_eq!(
            reply.status.as_u16(),
            code,
            "{method} {path}: {}",
            reply.body
        );
        let body: Value = serde_json::from_str(&reply.body).expect("errors are JSON");
        assert!(
            body["error"].as_str().unwrap().contains(message),
            "{}",
            reply.body
        );
    }
}

#[tokio::test]
async fn a_token_guards_changes_but_not_reading() {
    let first = tagged_member("127.0.0.11", "m1").await;
    let token = "0123456789abcdef-admin-token";
    let token_file = temp_file("token", "admin-token", &format!("{token}\n"));
    let toml = config(&[first], "")
        + &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token_file.display()
        );
    let vipgate = start(&toml).await;
    let path = format!("/pools/p/members/{first}/disable");
    let refused = admin(&vipgate, "POST", &path, None).await;
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("Authorization: Bearer"));
    assert_eq!(
        admin(&vipgate, "POST", &path, Some("wrong-token-wrong-token"))
            .await
            .status,
        401
    );
    assert_eq!(admin(&vipgate, "POST", "/reload", None).await.status, 401);
    assert_eq!(vipgate.member(first).admin_state().to_string(), "enabled");
    assert_eq!(
        admin(&vipgate, "POST", &path, Some(token)).await.status,
        200
    );
    assert_eq!(vipgate.member(first).admin_state().to_string(), "disabled");
    assert_eq!(admin(&vipgate, "GET", "/metrics", None).await.status, 200);
    assert_eq!(admin(&vipgate, "GET", "/status", None).await.status, 200);
}

/// Writes `text` as the configuration and asks for a reload.
async fn reload_with(vipgate: &Vipgate, path: &Path, text: &str) -> common::http_client::Reply {
    std::fs::write(path, text).unwrap();
    admin(vipgate, "POST", "/reload", None).await
}

#[tokio::test]
async fn a_reload_adds_a_member_and_keeps_open_connections() {
    let first = tagged_member("127.0.0.11", "m1").await;
    let second = tagged_member("127.0.0.12", "m2").await;
    let path = temp_file("add", "vipgate.toml", &line_config(&[first], ""));
    let vipgate = start_file(&path).await;
    let vip = vipgate.addr("vs");
    let mut open = LineClient::connect(vip).await;
    assert_eq!(open.ask("before").await.as_deref(), Some("m1 before"));
    let hash_before = status(&vipgate).await["config"]["hash"].clone();

    let reply = reload_with(&vipgate, &path, &line_config(&[first, second], "")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut tags = std::collections::BTreeSet::new();
    for _ in 0..4 {
        tags.insert(tag_of_answer(vip).await.unwrap());
    }
    assert_eq!(tags.len(), 2, "the new member takes connections: {tags:?}");
    assert_eq!(
        open.ask("after").await.as_deref(),
        Some("m1 after"),
        "the open connection stays"
    );
    let now = status(&vipgate).await;
    assert_ne!(now["config"]["hash"], hash_before);
    assert_eq!(now["config"]["reloads"]["succeeded"], 1);
    let scrape = Scrape::of(&vipgate).await;
    assert_eq!(
        scrape.get("vipgate_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        scrape.get(
            "vipgate_config_info",
            &[("hash", now["config"]["hash"].as_str().unwrap())]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_removed_member_keeps_its_connections_for_the_drain_time() {
    let first = tagged_member("127.0.0.11", "m1").await;
    let second = tagged_member("127.0.0.12", "m2").await;
    let settings = "[settings]\ndrain_timeout = \"700ms\"\n";
    let path = temp_file(
        "remove",
        "vipgate.toml",
        &line_config(&[first, second], settings),
    );
    let vipgate = start_file(&path).await;
    let vip = vipgate.addr("vs");
    let mut on_second = loop {
        let mut client = LineClient::connect(vip).await;
        if client.ask("who").await.unwrap().starts_with("m2") {
            break client;
        }
    };
    let reply = reload_with(&vipgate, &path, &line_config(&[first], settings)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["reloaded"]["members_removed"][0], second.to_string());
    for _ in 0..3 {
        assert_eq!(tag_of_answer(vip).await.as_deref(), Some("m1"));
    }
    assert_eq!(
        on_second.ask("still").await.as_deref(),
        Some("m2 still"),
        "kept during the drain time"
    );
    let started = std::time::Instant::now();
    assert!(
        on_second.closed_by_server().await,
        "closed after the drain time"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_monitor_change_keeps_member_health_and_a_broken_file_changes_nothing() {
    let first = tagged_member("127.0.0.11", "m1").await;
    let monitored = |interval: &str| {
        format!(
            "{ADMIN}[monitors.tcp]\ntype = \"tcp\"\ninterval = \"{interval}\"\ntimeout = \"31s\"\n\
             [pools.p]\nmonitor = {{ all = [\"tcp\"] }}\nmembers = [ {{ address = \"{first}\" }} ]\n\
             [virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\n"
        )
    };
    let path = temp_file("monitor", "vipgate.toml", &monitored("50ms"));
    let vipgate = start_file(&path).await;
    wait_health(&vipgate, first, vipgate::pool::Health::Up).await;
    // A much slower monitor: a fresh probe would leave the member
    // unchecked (no traffic) for 10 s; the carried-over result keeps it up.
    let reply = reload_with(&vipgate, &path, &monitored("10s")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(vipgate.health(first), vipgate::pool::Health::Up);
    assert_eq!(
        tag_of_answer(vipgate.addr("vs")).await.as_deref(),
        Some("m1")
    );

    let hash = status(&vipgate).await["config"]["hash"].clone();
    let broken = monitored("10s").replace("pool = \"p\"", "pool = \"missing\"") + "[bogus]\n";
    let reply = reload_with(&vipgate, &path, &broken).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("the running one stays"),
        "{}",
        reply.body
    );
    let reply = reload_with(
        &vipgate,
        &path,
        &monitored("10s").replace("pool = \"p\"", "pool = \"missing\""),
    )
    .await;
    assert_eq!(reply.status, 400);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .contains("no pool named \"missing\""),
        "{body}"
    );
    let now = status(&vipgate).await;
    assert_eq!(now["config"]["hash"], hash, "nothing changed");
    assert_eq!(now["config"]["reloads"]["failed"], 2);
    assert!(now["config"]["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("missing"));
    assert_eq!(
        tag_of_answer(vipgate.addr("vs")).await.as_deref(),
        Some("m1")
    );
    let scrape = Scrape::of(&vipgate).await;
    assert_eq!(
        scrape.get("vipgate_config_reloads_total", &[("result", "failure")]),
        2.0
    );
}

/// A port on 127.0.0.100 nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.100:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_reload_starts_and_stops_listeners() {
    let first = tagged_member("127.0.0.11", "m1").await;
    let port = free_port();
    let base = line_config(&[first], "");
    let path = temp_file("listeners", "vipgate.toml", &base);
    let vipgate = start_file(&path).await;
    let extra = format!("[virtuals.extra]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\n");
    let reply = reload_with(&vipgate, &path, &format!("{base}{extra}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("\"extra\""), "{}", reply.body);
    let added: SocketAddr = format!("127.0.0.100:{port}").parse().unwrap();
    assert_eq!(tag_of_answer(added).await.as_deref(), Some("m1"));
    assert_eq!(
        tag_of_answer(vipgate.addr("vs")).await.as_deref(),
        Some("m1"),
        "the kept virtual still serves"
    );

    let reply = reload_with(&vipgate, &path, &base).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    eventually_refused(added).await;
}

async fn eventually_refused(address: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(address).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{address} still accepts connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_reloads_under_load_lose_no_connection() {
    raise_file_limit();
    const HELD: usize = 3000;
    let first = tagged_member("127.0.0.11", "m1").await;
    let second = tagged_member("127.0.0.12", "m2").await;
    let third = tagged_member("127.0.0.13", "m3").await;
    let base = line_config(&[first, second], "");
    let path = temp_file("load", "vipgate.toml", &base);
    let vipgate = start_file(&path).await;
    let vip = vipgate.addr("vs");
    let mut clients = Vec::with_capacity(HELD);
    for _ in 0..HELD {
        clients.push(LineClient::connect(vip).await);
    }
    for client in clients.iter_mut().step_by(97) {
        assert!(client.ask("warm").await.is_some());
    }
    // Reload five times, adding and removing a third member and changing
    // timeouts, while new clients keep arriving.
    for round in 0..5 {
        let text = if round % 2 == 0 {
            line_config(&[first, second, third], "").replace(
                "pool = \"p\"",
                &format!("pool = \"p\"\nidle_timeout = \"{}s\"", 600 + round),
            )
        } else {
            base.clone()
        };
        let reply = reload_with(&vipgate, &path, &text).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(tag_of_answer(vip).await.is_some());
    }
    let mut answered = 0;
    for client in &mut clients {
        if client.ask("after").await.is_some() {
            answered += 1;
        }
    }
    assert_eq!(
        answered, HELD,
        "every held connection survived five reloads"
    );
    let reloads = &status(&vipgate).await["config"]["reloads"];
    assert_eq!(
        (&reloads["succeeded"], &reloads["failed"]),
        (&Value::from(5), &Value::from(0))
    );
}
