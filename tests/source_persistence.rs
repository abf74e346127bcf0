//! Source-address persistence (`persistence = { source_address = ... }`)
//! over real sockets: each client address goes back to its member on
//! every worker thread, after a reload and, once its member failed and
//! came back, stays where it went until its record times out; HTTP
//! virtuals persist per request; the table is shown in `/status` and
//! `/metrics`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::admin::admin;
use common::http_client::{web_member, HttpClient};
use common::*;

/// Clients are 127.0.0.31 and up.
fn client_address(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 31 + n])
}

/// The member tag that answers `client` over a new connection, kept open
/// if `hold` is given.
async fn ask_from(client: IpAddr, vip: SocketAddr) -> (String, LineClient) {
    let mut line = LineClient::try_connect_from(client, vip)
        .await
        .expect("connected");
    let answer = line.ask("hello").await.expect("an answer");
    let tag = answer.split(' ').next().unwrap_or_default().to_string();
    (tag, line)
}

fn config(members: &[SocketAddr], timeout: &str, idle: &str) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|m| format!("{{ address = \"{m}\" }}"))
        .collect();
    format!(
        "[settings]\nworker_threads = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [pools.p]\nmembers = [ {} ]\n\n[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\n\
         idle_timeout = \"{idle}\"\npersistence = {{ source_address = {{ timeout = \"{timeout}\" }} }}\n",
        members.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_goes_back_to_its_member_until_its_record_times_out() {
    let mut ports = Vec::new();
    for (ip, tag) in [
        ("127.0.0.11", "m11"),
        ("127.0.0.12", "m12"),
        ("127.0.0.13", "m13"),
    ] {
        ports.push(SwitchablePort::open(ip, tag).await);
    }
    let members: Vec<SocketAddr> = ports.iter().map(|p| p.addr).collect();
    let dir = common::tls_ca::temp_dir("source-persistence");
    let path = dir.join("vipgate.toml");
    std::fs::write(&path, config(&members, "1s", "300s")).unwrap();
    let vipgate = start_file(&path).await;
    let vip = vipgate.addr("vs");

    // Each client's connections land on one member, whichever worker
    // thread accepts them (each has a new source port, so the kernel
    // spreads them over both workers' sockets).
    let mut chosen = BTreeMap::new();
    for n in 0..24 {
        let client = client_address(n);
        let mut tags = BTreeSet::new();
        for _ in 0..4 {
            tags.insert(ask_from(client, vip).await.0);
        }
        assert_eq!(tags.len(), 1, "client {client} went to {tags:?}");
        chosen.insert(client, tags.into_iter().next().unwrap());
    }
    let used: BTreeSet<&String> = chosen.values().collect();
    assert_eq!(
        used.len(),
        3,
        "24 clients spread over every member: {chosen:?}"
    );
    let status = vipgate.status();
    assert!(
        status.persistence_records.records >= 24,
        "{:?}",
        status.persistence_records
    );

    // Its member fails: the client goes elsewhere, and stays there when
    // the member is back, while it holds a connection.
    let client = client_address(0);
    let first = chosen[&client].clone();
    let failed = ports
        .iter_mut()
        .find(|p| p.addr.ip().to_string().ends_with(&first[1..]))
        .unwrap();
    failed.close().await;
    let (elsewhere, held) = ask_from(client, vip).await;
    assert_ne!(elsewhere, first);
    failed.reopen().await;
    assert_eq!(ask_from(client, vip).await.0, elsewhere);

    // A reload keeps the records.
    std::fs::write(&path, config(&members, "1s", "200s")).unwrap();
    assert_eq!(admin(&vipgate, "POST", "/reload", None).await.status, 200);
    assert_eq!(ask_from(client, vip).await.0, elsewhere);

    // Its last connection ends; within the timeout it still goes where
    // its record says, after it the hash sends it back to its first
    // member.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ask_from(client, vip).await.0, elsewhere);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ask_from(client, vip).await.0, first);

    let metrics = admin(&vipgate, "GET", "/metrics", None).await.body;
    assert!(
        metrics.contains("vipgate_persistence_records ")
            && metrics.contains("vipgate_persistence_records_dropped_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_http_virtual_persists_each_request_by_source_address() {
    let members = [
        web_member("127.0.0.11", "GWE_Node1").await,
        web_member("127.0.0.12", "GWE_Node2").await,
        web_member("127.0.0.13", "GWE_Node3").await,
    ];
    let listed: Vec<String> = members
        .iter()
        .map(|m| format!("{{ address = \"{m}\" }}"))
        .collect();
    let vipgate = start(&format!(
        "[virtuals.web]\nlisten = \"127.0.0.100:0\"\nmode = \"http\"\npool = \"gwe\"\n\
         persistence = {{ source_address = {{ timeout = \"10m\", mask = 24 }} }}\n\
         [pools.gwe]\nmembers = [ {} ]\n",
        listed.join(", ")
    ))
    .await;
    let vip = vipgate.addr("web");
    // Each request on its own connection, from two addresses of one /24:
    // one record, one member.
    let mut served = BTreeSet::new();
    for n in 0..6 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(client_address(n % 2), 0))
            .unwrap();
        let stream = socket.connect(vip).await.unwrap();
        let mut client = HttpClient::over(stream).await;
        let reply = client.get("/", &[]).await;
        served.insert(reply.served_by().to_string());
    }
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(vipgate.status().persistence_records.records, 1);
}

#[tokio::test]
async fn persistence_settings_are_checked_with_their_paths() {
    let members = "[pools.p]\nmembers = [ { address = \"127.0.0.11:1\" } ]\n";
    let error = vipgate::config::parse(
        &format!(
            "{members}[virtuals.v]\nlisten = \"127.0.0.100:1\"\npool = \"p\"\n\
             persistence = {{ source_address = {{ timeout = \"0s\", mask = 33, ipv6_mask = -1 }}, cookie = \"X\" }}\n"
        ),
        "t",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "virtuals.v.persistence.cookie",
        "virtuals.v.persistence.source_address.timeout",
        "virtuals.v.persistence.source_address.mask",
        "virtuals.v.persistence.source_address.ipv6_mask",
    ] {
        assert!(error.contains(expected), "{expected} in {error}");
    }
    let plan = vipgate::config::parse(
        &format!(
            "{members}[virtuals.v]\nlisten = \"127.0.0.100:1\"\npool = \"p\"\n\
             persistence = {{ source_address = {{}} }}\n"
        ),
        "t",
    )
    .unwrap();
    let rule = plan.virtuals[0].source_persistence.unwrap();
    assert_eq!(rule.timeout, vipgate::config::DEFAULT_SOURCE_TIMEOUT);
    assert_eq!((rule.ipv4_prefix, rule.ipv6_prefix), (32, 128));
    assert!(plan
        .to_string()
        .contains("persistence by source address (/32, IPv6 /128) for 3m"));
}
