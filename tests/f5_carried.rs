//! `import-f5` carries what most real virtuals need beyond a pool:
//! `source_addr` persistence (timeout, mask; `match-across-*` reported),
//! and the port-80 virtuals that send browsers to HTTPS
//! (`_sys_https_redirect` and its one-line iRule). Each is converted,
//! then run over real sockets.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use common::f5::import;
use common::*;

const SOURCE_ADDR: &str = include_str!("data/f5/source-addr.conf");

/// The member tag answering a new connection from `client`.
async fn tag_from(client: IpAddr, vip: SocketAddr) -> String {
    let mut line = LineClient::try_connect_from(client, vip)
        .await
        .expect("connected");
    let answer = line.ask("hello").await.expect("an answer");
    answer.split(' ').next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn source_addr_persistence_is_carried_with_its_timeout_and_mask() {
    let imported = import(SOURCE_ADDR, "source-addr.conf");
    let report = imported.report.to_string();
    let plan = vipgate::config::parse(&imported.toml, "converted")
        .unwrap_or_else(|e| panic!("{e}\n{}", imported.toml));
    let rule = |name: &str| {
        plan.virtuals
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name} in {}", imported.toml))
            .source_persistence
            .map(|rule| (rule.timeout.as_secs(), rule.ipv4_prefix))
    };
    assert_eq!(rule("vs_agents"), Some((2, 24)));
    assert_eq!(rule("vs_builtin"), Some((180, 32)));
    assert_eq!(rule("vs_odd"), Some((86_400, 32)));
    assert_eq!(rule("vs_dest"), None);
    for said in [
        "source-addr.conf:45:9: virtual vs_agents: source-address persistence is carried over (timeout 2 s, /24)",
        "persistence agents_src sets match-across-virtuals",
        "persistence mask `255.0.255.0` is not a contiguous IPv4 mask",
        "an indefinite persistence timeout is written as a day",
        "virtual vs_dest: persistence dest_addr (persistence dest addr) is not carried over",
    ] {
        assert!(report.contains(said), "{said} in\n{report}");
    }

    // Served: the /24 virtual sends a whole /24 of clients to one member;
    // the built-in /32 one spreads clients and keeps each on its member.
    let members = [
        tagged_member("127.0.0.11", "m11").await,
        tagged_member("127.0.0.12", "m12").await,
        tagged_member("127.0.0.13", "m13").await,
    ];
    let mut toml = common::f5::runnable(&imported.toml, "source-addr");
    for (n, member) in members.iter().enumerate() {
        toml = toml.replace(&format!("127.0.0.{}:9170", 11 + n), &member.to_string());
    }
    let vipgate = start(&toml).await;
    let clients: Vec<IpAddr> = (31..43).map(|n| IpAddr::from([127, 0, 0, n])).collect();
    let mut agents = BTreeSet::new();
    for &client in &clients {
        agents.insert(tag_from(client, vipgate.addr("vs_agents")).await);
    }
    assert_eq!(agents.len(), 1, "one /24, one member: {agents:?}");
    let mut spread = BTreeSet::new();
    for &client in &clients {
        let first = tag_from(client, vipgate.addr("vs_builtin")).await;
        assert_eq!(tag_from(client, vipgate.addr("vs_builtin")).await, first);
        spread.insert(first);
    }
    assert!(spread.len() >= 2, "12 clients over 3 members: {spread:?}");
}

const HTTPS_REDIRECT: &str = include_str!("data/f5/https-redirect.conf");

#[tokio::test]
async fn https_redirect_virtuals_are_carried_and_answer_over_http1_and_http2() {
    let imported = import(HTTPS_REDIRECT, "https-redirect.conf");
    let report = imported.report.to_string();
    for said in [
        "virtual vs_www_80: iRule _sys_https_redirect redirects every request to HTTPS; written as `redirect = { scheme = \"https\", status = 302 }`",
        "virtual vs_app_80: its pool web_pool is not written: the iRule answers every request before a pool is chosen",
        "virtual vs_shop_80: iRule to_https_301 redirects every request to HTTPS",
        "virtual vs_paths_80: it has no pool; its iRules (by_path) decide where traffic goes; left out",
        "ltm rule (1)",
    ] {
        assert!(report.contains(said), "{said} in\n{report}");
    }
    let toml = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        common::f5::runnable(&imported.toml, "https-redirect")
    );
    let plan = vipgate::config::parse(&toml, "converted").unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(plan.virtuals.len(), 3, "{toml}");
    assert!(plan.virtuals.iter().all(|v| v.pool.is_none()));
    let vipgate = start(&toml).await;

    // HTTP/1.1: the same host (without its port) and path, over HTTPS.
    let reply = common::http_client::HttpClient::connect(vipgate.addr("vs_www_80"))
        .await
        .get("/agent/login?next=%2Fhome", &[])
        .await;
    assert_eq!(reply.status, 302);
    assert_eq!(
        reply.header("location"),
        "https://gwe.example/agent/login?next=%2Fhome"
    );
    // HTTP/2 names the host in :authority.
    let reply = common::http_client::Http2Client::connect(vipgate.addr("vs_shop_80"))
        .await
        .get("/cart", &[])
        .await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("location"), "https://gwe.example/cart");

    // Ready with no member anywhere: a redirect virtual needs none.
    let ready = common::admin::admin(&vipgate, "GET", "/ready", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let metrics = common::admin::admin(&vipgate, "GET", "/metrics", None)
        .await
        .body;
    assert!(
        metrics.contains("vipgate_http_redirects_total{virtual=\"vs_www_80\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_redirect_virtual_is_checked_with_its_paths() {
    let error = vipgate::config::parse(
        "[pools.p]\nmembers = [ { address = \"127.0.0.11:1\" } ]\n\
         [virtuals.web]\nlisten = \"127.0.0.100:80\"\nmode = \"http\"\npool = \"p\"\n\
         redirect = { scheme = \"ftp\", status = 200, port = 0 }\n\
         persistence = { url_param = \"jsessionid\" }\n\
         [virtuals.tcp]\nlisten = \"127.0.0.100:81\"\nredirect = {}\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "virtuals.web.pool: a redirect virtual answers every request itself and uses no pool",
        "virtuals.web.redirect.scheme",
        "virtuals.web.redirect.status",
        "virtuals.web.redirect.port",
        "virtuals.web.persistence: a redirect virtual sends every request away",
        "virtuals.tcp.redirect",
    ] {
        assert!(error.contains(expected), "{expected} in {error}");
    }
    let plan = vipgate::config::parse(
        "[virtuals.web]\nlisten = \"127.0.0.100:80\"\nmode = \"http\"\nredirect = { port = 8443 }\n",
        "t",
    )
    .unwrap();
    let vipgate::config::Mode::Http(http) = &plan.virtuals[0].mode else {
        panic!("{:?}", plan.virtuals[0].mode)
    };
    let redirect = http.redirect.unwrap();
    assert_eq!((redirect.status, redirect.port), (301, Some(8443)));
    assert_eq!(
        redirect.location("h:80", "/x").as_deref(),
        Some("https://h:8443/x")
    );
}
