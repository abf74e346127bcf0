//! Monitors as F5 shops use them, over real sockets: HTTPS monitors with a
//! Host header and text to find (F5's `https` monitor with `send` and
//! `recv`), any-status HTTP monitors, and health judged per pool member: the
//! same address up in one pool and down in another whose rule differs.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::admin::*;
use common::tls_ca::{temp_dir, TestCa};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vipgate::pool::Health;

/// What the health endpoint answers, and the Host headers it was asked
/// with.
#[derive(Default)]
struct Endpoint {
    answer: Mutex<(u16, String)>,
    hosts: Mutex<Vec<String>>,
}

impl Endpoint {
    fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_string());
    }
}

/// An HTTPS health endpoint on `ip` with a certificate for
/// `health.internal` that `ca` signed.
async fn https_endpoint(ip: &str, ca: &TestCa, endpoint: Arc<Endpoint>) -> SocketAddr {
    let acceptor = ca.acceptor("health.internal");
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, endpoint) = (acceptor.clone(), endpoint.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = vec![0; 2048];
                let read = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..read]).to_string();
                if let Some(host) = request.lines().find_map(|line| line.strip_prefix("Host: ")) {
                    endpoint.hosts.lock().unwrap().push(host.to_string());
                }
                let (status, body) = endpoint.answer.lock().unwrap().clone();
                let reply = format!(
                    "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    address
}

fn https_monitor(port: u16, lines: &str) -> String {
    format!("[monitors.HTTPS]\ntype = \"http\"\nport = {port}\ninterval = \"100ms\"\ntimeout = \"300ms\"\n{lines}\n")
}

fn single_pool(member: SocketAddr) -> String {
    format!("[pools.p]\nmonitor = {{ all = [\"HTTPS\"] }}\nmembers = [ {{ address = \"{member}\" }} ]\n[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\n")
}

fn probe_detail(vipgate: &Vipgate) -> String {
    let snapshot = vipgate.snapshot();
    let (_, detail) = snapshot.health().probes().next().unwrap().1.verdict();
    detail
}

#[tokio::test]
async fn an_https_monitor_sends_its_host_and_looks_for_its_text() {
    let ca = TestCa::new();
    let endpoint = Arc::new(Endpoint::default());
    endpoint.answer(302, "ALIVE");
    let health = https_endpoint("127.0.0.11", &ca, endpoint.clone()).await;
    let member = tagged_member("127.0.0.11", "web").await;
    // F5: `ltm monitor https { send "GET /health HTTP/1.1\r\nHost:
    // gwe.internal\r\n\r\n" recv "ALIVE" }`: any status, the text decides.
    let toml = format!(
        "{}{}",
        https_monitor(
            health.port(),
            "tls = true\npath = \"/health\"\nhost = \"gwe.internal\"\nexpect_status = \"any\"\nexpect = \"ALIVE\""
        ),
        single_pool(member)
    );
    let vipgate = start(&toml).await;
    wait_health(&vipgate, member, Health::Up).await;
    assert_eq!(
        endpoint.hosts.lock().unwrap().first().map(String::as_str),
        Some("gwe.internal")
    );
    assert_eq!(
        tag_of_answer(vipgate.addr("vs")).await.as_deref(),
        Some("web")
    );

    endpoint.answer(200, "maintenance");
    wait_health(&vipgate, member, Health::Down).await;
    assert_eq!(
        probe_detail(&vipgate),
        "HTTP status 200, but the response did not contain \"ALIVE\""
    );
    assert_eq!(tag_of_answer(vipgate.addr("vs")).await, None);
    endpoint.answer(200, "ALIVE and well");
    wait_health(&vipgate, member, Health::Up).await;
}

#[tokio::test]
async fn a_verified_https_monitor_checks_the_certificate_and_status_class() {
    let ca = TestCa::new();
    let dir = temp_dir("monitor-ca");
    let ca_file = ca.write_ca(&dir);
    let endpoint = Arc::new(Endpoint::default());
    endpoint.answer(204, "");
    let health = https_endpoint("127.0.0.12", &ca, endpoint.clone()).await;
    let member = tagged_member("127.0.0.12", "web").await;
    let monitor = |server_name: &str| {
        https_monitor(
            health.port(),
            &format!("tls = {{ ca = \"{ca_file}\", server_name = \"{server_name}\" }}\nexpect_status = \"2xx\""),
        )
    };
    let vipgate = start(&format!(
        "{}{}",
        monitor("health.internal"),
        single_pool(member)
    ))
    .await;
    wait_health(&vipgate, member, Health::Up).await;
    endpoint.answer(500, "");
    wait_health(&vipgate, member, Health::Down).await;
    assert_eq!(probe_detail(&vipgate), "HTTP status 500, expected 2xx");
    drop(vipgate);

    // The certificate does not name what the monitor expects: down, and
    // the status page says why.
    endpoint.answer(200, "");
    let vipgate = start(&format!(
        "{}{}",
        monitor("other.internal"),
        single_pool(member)
    ))
    .await;
    wait_health(&vipgate, member, Health::Down).await;
    let detail = probe_detail(&vipgate);
    assert!(detail.starts_with("TLS handshake failed"), "{detail}");
}

#[tokio::test]
async fn an_unreadable_monitor_ca_stops_the_start_with_its_name() {
    let member = tagged_member("127.0.0.12", "web").await;
    let toml = format!(
        "{}{}",
        https_monitor(member.port(), "tls = { ca = \"/nonexistent/ca.pem\" }"),
        single_pool(member)
    );
    let plan = vipgate::config::parse(&toml, "t").unwrap();
    let error = vipgate::server::Snapshot::build(plan, None)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("monitors.HTTPS.tls: ") && error.contains("/nonexistent/ca.pem"),
        "{error}"
    );
}

#[tokio::test]
async fn the_same_address_is_up_in_one_pool_and_down_in_another() {
    let mut member = SwitchablePort::open("127.0.0.13", "csp").await;
    let closed = refusing_address("127.0.0.13").await;
    // Pool `agents` checks the member's own port; pool `reports` checks a
    // port nobody listens on. On F5 each pool member has its own status.
    let toml = format!(
        "{ADMIN}
[monitors.OWN]
type = \"tcp\"
interval = \"100ms\"
timeout = \"300ms\"

[monitors.REPORTS]
type = \"tcp\"
port = {closed}
interval = \"100ms\"
timeout = \"300ms\"

[pools.agents]
monitor = {{ all = [\"OWN\"] }}
members = [ {{ address = \"{address}\" }} ]

[pools.reports]
monitor = {{ all = [\"OWN\", \"REPORTS\"] }}
members = [ {{ address = \"{address}\" }} ]

[virtuals.agents]
listen = \"127.0.0.100:0\"
pool = \"agents\"

[virtuals.reports]
listen = \"127.0.0.100:0\"
pool = \"reports\"
",
        address = member.addr,
        closed = closed.port()
    );
    let vipgate = start(&toml).await;
    let address = member.addr;
    wait_pool_health(&vipgate, Some("agents"), address, Health::Up).await;
    wait_pool_health(&vipgate, Some("reports"), address, Health::Down).await;
    assert_eq!(
        vipgate.snapshot().health().probes().count(),
        2,
        "OWN on the member is probed once for both pools"
    );
    assert_eq!(
        tag_of_answer(vipgate.addr("agents")).await.as_deref(),
        Some("csp")
    );
    assert_eq!(tag_of_answer(vipgate.addr("reports")).await, None);

    // What operators read: per pool, per member.
    let scrape = Scrape::of(&vipgate).await;
    let name = address.to_string();
    assert_eq!(
        scrape.get(
            "vipgate_member_up",
            &[("pool", "agents"), ("member", &name)]
        ),
        1.0
    );
    assert_eq!(
        scrape.get(
            "vipgate_member_up",
            &[("pool", "reports"), ("member", &name)]
        ),
        0.0
    );
    assert_eq!(
        scrape.get("vipgate_pool_members_up", &[("pool", "reports")]),
        0.0
    );
    let status = status(&vipgate).await;
    let pools = status["pools"].as_array().unwrap();
    let health_in = |pool: &str| {
        let entry = pools.iter().find(|p| p["name"] == pool).unwrap();
        entry["members"][0]["health"].as_str().unwrap().to_string()
    };
    assert_eq!(
        (health_in("agents"), health_in("reports")),
        ("up".into(), "down".into())
    );
    let reports = pools.iter().find(|p| p["name"] == "reports").unwrap();
    assert_eq!(
        reports["members"][0]["monitors"].as_array().unwrap().len(),
        2
    );

    // Counts stay per address: one connection through `agents` shows in
    // both pools' view of the member.
    let mut held = LineClient::connect(vipgate.addr("agents")).await;
    assert!(held.ask("hi").await.is_some());
    assert_eq!(vipgate.member(address).active_connections(), 1);

    // The member's own port dies: down in both.
    member.close().await;
    wait_pool_health(&vipgate, Some("agents"), address, Health::Down).await;
    member.reopen().await;
    wait_pool_health(&vipgate, Some("agents"), address, Health::Up).await;
    assert_eq!(vipgate.pool_health(Some("reports"), address), Health::Down);
}
