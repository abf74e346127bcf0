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
