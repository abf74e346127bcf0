//! Two vipgates under keepalived replace an F5 pair, end to end, with the
//! recipe in `examples/keepalived/` as an operator would install it. The
//! test builds its own hosts in network namespaces: a switch (a bridge), a
//! client, lb1 and lb2, and three configuration-server proxies, all on
//! 198.18.50.0/24, which stays inside the namespaces (the host namespace
//! gets no address, route or interface, and nothing leaves the machine).
//! Everything is removed when the test ends, passed or failed.
//!
//! Scenarios, with the VIP sampled all along for split brain:
//! - lb1 holds the VIP; 500 agents hold connections and ping, an HTTP
//!   client holds a sticky cookie, a TLS client has a session;
//! - vipgate on lb1 is killed: the VIP moves to lb2, every agent is served
//!   again, the cookie lands on its member, the TLS session resumes;
//!   eight client addresses on the source-persistence virtual reach the
//!   same proxies through lb2 as through lb1 (rendezvous hashing: no
//!   records exchanged);
//! - vipgate on lb1 comes back: with nopreempt the VIP stays, nobody is
//!   disturbed;
//! - vipgate on lb2 hangs (SIGSTOP): the track script notices, the VIP
//!   moves back to lb1; once thawed, lb2 closes the connections its agents
//!   left (TCP keepalive).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http_client::HttpClient;
use common::netns::{self, Namespace};
use common::process::{Daemon, Running, BINARY};
use common::tls_ca::{temp_dir, TestCa};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const NET: &str = "198.18.50";
const AGENTS: usize = 500;
/// The admin token both nodes share (the recipe's `admin-token`).
const ADMIN_TOKEN: &str = "the admin token of the pair, 0123456789";
/// How long anything in the lab may take before the test gives up.
const LAB_PATIENCE: Duration = Duration::from_secs(30);

fn address(host: u8) -> String {
    format!("{NET}.{host}")
}

fn vip(port: u16) -> SocketAddr {
    format!("{NET}.100:{port}").parse().unwrap()
}

/// The hosts, joined by a bridge in the switch namespace.
struct Lab {
    // Dropped last: the namespaces go after everything that ran in them.
    lb1: Namespace,
    lb2: Namespace,
    client: Namespace,
    members: Vec<Namespace>,
    _switch: Namespace,
    dir: PathBuf,
}

impl Lab {
    fn build() -> Lab {
        let switch = Namespace::switch("sw");
        let host = |tag: &str, last: u8| switch.host(tag, &address(last));
        let client = host("client", 20);
        // More client addresses, for source-address persistence.
        for last in STICKY_CLIENTS {
            client.ip(&[
                "addr",
                "add",
                &format!("{}/24", address(last)),
                "dev",
                "eth0",
            ]);
        }
        let lab = Lab {
            lb1: host("lb1", 11),
            lb2: host("lb2", 12),
            client,
            members: vec![host("m1", 31), host("m2", 32), host("m3", 33)],
            _switch: switch,
            dir: temp_dir("ha-pair"),
        };
        lab.write_recipe();
        lab
    }

    /// The recipe's files, with the lab's addresses and this build's
    /// binary, and keepalive probes that notice a stale connection in a
    /// few seconds instead of a minute.
    fn write_recipe(&self) {
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/keepalived");
        let read = |name: &str| std::fs::read_to_string(recipe.join(name)).unwrap();
        let lab = |text: String| text.replace("192.0.2.", &format!("{NET}."));
        let config = lab(read("vipgate.toml")).replace(
            "tcp_keepalive = { idle = \"30s\", interval = \"10s\", probes = 3 }",
            "tcp_keepalive = { idle = \"1s\", interval = \"1s\", probes = 2 }",
        );
        assert!(
            config.contains("idle = \"1s\""),
            "the recipe still turns keepalive on"
        );
        // One state file per node (the recipe's path is the package's).
        assert!(config.contains("state_file = \"/var/lib/vipgate/state.json\""));
        for node in ["lb1", "lb2"] {
            let state = self.dir.join(format!("{node}-state.json"));
            let _ = std::fs::remove_file(&state);
            let own = config.replace("/var/lib/vipgate/state.json", &state.display().to_string());
            std::fs::write(self.dir.join(format!("vipgate-{node}.toml")), own).unwrap();
        }
        std::fs::write(self.dir.join("admin-token"), ADMIN_TOKEN).unwrap();
        for node in ["lb1", "lb2"] {
            let text =
                lab(read(&format!("keepalived-{node}.conf"))).replace("/usr/bin/vipgate", BINARY);
            std::fs::write(self.dir.join(format!("keepalived-{node}.conf")), text).unwrap();
        }
        std::fs::write(
            self.dir.join("shared-secret"),
            "the secret both nodes of the pair share",
        )
        .unwrap();
    }

    fn node(&self, node: &str) -> &Namespace {
        if node == "lb1" {
            &self.lb1
        } else {
            &self.lb2
        }
    }

    fn vipgate(&self, node: &str) -> Running {
        Running::in_namespace(
            &self.node(node).name,
            &self.dir.join(format!("vipgate-{node}.toml")),
        )
    }

    fn keepalived(&self, node: &str) -> Daemon {
        // Each instance in its own pid files: namespaces share /run, and a
        // second keepalived finding the first one's files exits silently.
        let file = |suffix: &str| self.dir.join(format!("keepalived-{node}{suffix}"));
        let log = std::fs::File::create(file(".log")).unwrap();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node(node).name,
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--vrrp",
            ])
            .arg("-f")
            .arg(file(".conf"))
            .arg("-p")
            .arg(file(".pid"))
            .arg("-r")
            .arg(file("-vrrp.pid"))
            .arg("-c")
            .arg(file("-checkers.pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map(Daemon)
            .expect("keepalived starts")
    }

    /// Whether `node` holds the VIP now.
    fn holds_vip(&self, node: &str) -> bool {
        holds_vip(&self.node(node).name)
    }

    /// An admin endpoint's `path` on `node`, read from inside its
    /// namespace.
    fn admin(&self, node: &str, path: &'static str) -> String {
        self.admin_call(node, "GET", path.to_string())
    }

    /// `method path` on the admin endpoint of `node` (with the token), from
    /// inside its namespace; the whole answer, or "" if it did not answer.
    fn admin_call(&self, node: &str, method: &'static str, path: String) -> String {
        self.node(node)
            .spawn_in(move || {
                use std::io::{Read, Write};
                let Ok(mut stream) = std::net::TcpStream::connect("127.0.0.1:9100") else {
                    return String::new();
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = write!(
                    stream,
                    "{method} {path} HTTP/1.0\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
                );
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                answer
            })
            .join()
            .unwrap()
    }

    /// Client connections open on `node`'s virtual vsCSP.
    /// The admin state of a member of pool `csp` on `node`, and the
    /// connections it has through that node.
    fn csp_member(&self, node: &str, member: &str) -> Option<(String, u64)> {
        let answer = self.admin(node, "/status");
        let body = answer.split_once("\r\n\r\n")?.1;
        let status: serde_json::Value = serde_json::from_str(body).ok()?;
        let found = status["pools"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "csp")?["members"]
            .as_array()?
            .iter()
            .find(|m| m["address"] == member)?
            .clone();
        Some((
            found["state"].as_str()?.to_string(),
            found["connections"]["active"].as_u64()?,
        ))
    }

    fn csp_connections(&self, node: &str) -> Option<u64> {
        let answer = self.admin(node, "/status");
        let body = answer.split_once("\r\n\r\n")?.1;
        let status: serde_json::Value = serde_json::from_str(body).ok()?;
        status["virtuals"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == "vsCSP")?["connections"]["active"]
            .as_u64()
    }
}

/// Waits for `condition`, up to [`LAB_PATIENCE`]; how long it took.
fn wait(what: &str, condition: impl FnMut() -> bool) -> Duration {
    common::waited(what, LAB_PATIENCE, condition)
}

/// Whether the host in namespace `name` holds the VIP now.
fn holds_vip(name: &str) -> bool {
    let output = Command::new("ip")
        .args(["-n", name, "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).contains(&format!("{}/", address(100)))
}

/// Samples which node holds the VIP; two at once is split brain.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicUsize>,
    both: Arc<Mutex<Vec<Duration>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(lab: &Lab) -> Sampler {
        let (stop, samples, both) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Mutex::new(Vec::new())),
        );
        let thread = {
            let (stop, samples, both) = (stop.clone(), samples.clone(), both.clone());
            let (lb1, lb2) = (lab.lb1.name.clone(), lab.lb2.name.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if holds_vip(&lb1) && holds_vip(&lb2) {
                        both.lock().unwrap().push(started.elapsed());
                    }
                    samples.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Sampler {
            stop,
            samples,
            both,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, Vec<Duration>) {
        self.stop_sampling();
        (
            self.samples.load(Ordering::Relaxed),
            self.both.lock().unwrap().clone(),
        )
    }

    fn stop_sampling(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop_sampling();
    }
}

/// The agents: each holds a connection to vsCSP and pings it every 300
/// ms, reconnecting at once when the connection breaks.
#[derive(Default)]
struct Fleet {
    /// Milliseconds (since `epoch`) of each agent's last answered ping.
    answered: Vec<AtomicU64>,
    /// Connections broken so far, over all agents.
    broken: AtomicU64,
}

impl Fleet {
    fn new() -> Arc<Fleet> {
        Arc::new(Fleet {
            answered: (0..AGENTS).map(|_| AtomicU64::new(0)).collect(),
            broken: AtomicU64::new(0),
        })
    }

    /// Whether every agent has been answered after `since` (ms).
    fn all_answered_after(&self, since: u64) -> bool {
        self.answered
            .iter()
            .all(|a| a.load(Ordering::Relaxed) > since)
    }

    async fn agent(self: Arc<Self>, index: usize, epoch: Instant) {
        loop {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(vip(9070))).await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = BufReader::new(stream);
            loop {
                let mut answer = String::new();
                let asked = async {
                    stream.get_mut().write_all(b"ping\n").await?;
                    stream.read_line(&mut answer).await
                };
                match tokio::time::timeout(Duration::from_secs(1), asked).await {
                    Ok(Ok(n)) if n > 0 && answer.ends_with(" ping\n") => {
                        self.answered[index]
                            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    _ => {
                        self.broken.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}

/// The last bytes of the client's extra addresses.
const STICKY_CLIENTS: std::ops::Range<u8> = 21..29;

/// The proxy each extra client address reaches through the
/// source-persistence virtual (port 9071), as "21:m1 22:m3 ...".
async fn sticky_sources() -> String {
    let mut answers = Vec::new();
    for last in STICKY_CLIENTS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{}:0", address(last)).parse().unwrap())
            .unwrap();
        let stream = socket.connect(vip(9071)).await.expect("connected");
        let mut stream = BufReader::new(stream);
        stream.get_mut().write_all(b"hello\n").await.unwrap();
        let mut answer = String::new();
        stream.read_line(&mut answer).await.unwrap();
        let tag = answer.split(' ').next().unwrap_or_default().to_string();
        answers.push(format!("{last}:{tag}"));
    }
    answers.join(" ")
}

fn tls_client(ca: &TestCa) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One TLS round trip to vsCSP-TLS; whether the session was resumed.
async fn tls_session(connector: &tokio_rustls::TlsConnector) -> rustls::HandshakeKind {
    let stream = TcpStream::connect(vip(9443)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("vip.example").unwrap();
    let mut tls = connector.connect(name, stream).await.unwrap();
    tls.write_all(b"hello\n").await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let mut answer = String::new();
    BufReader::new(tls).read_line(&mut answer).await.unwrap();
    assert!(answer.ends_with(" hello\n"), "{answer}");
    kind
}

#[test]
#[ignore = "needs root, iproute2 and keepalived: apt-get install keepalived"]
fn a_keepalived_pair_of_vipgates_replaces_an_f5_pair() {
    netns::require();
    assert!(
        Command::new("keepalived").arg("--version").output().is_ok(),
        "the HA pair test needs keepalived: apt-get install keepalived"
    );
    let lab = Lab::build();
    // Three proxies: both CSP ports and a web-engagement server each.
    for (index, member) in lab.members.iter().enumerate() {
        let ip = address(31 + index as u8);
        let tag = format!("m{}", index + 1);
        member.spawn_in(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                for port in [9070, 9075] {
                    vipgate::demo::spawn_tagged_echo(
                        format!("{ip}:{port}").parse().unwrap(),
                        tag.clone(),
                    )
                    .await
                    .unwrap();
                }
                vipgate::demo::spawn_web_engagement(format!("{ip}:8081").parse().unwrap(), tag)
                    .await
                    .unwrap();
                std::future::pending::<()>().await
            })
        });
    }
    let ca = TestCa::new();
    std::fs::create_dir_all(lab.dir.join("tls")).unwrap();
    let (cert, key) = ca.write_pem(&lab.dir.join("tls"), "vip.example");
    std::fs::rename(cert, lab.dir.join("tls/vip.pem")).unwrap();
    std::fs::rename(key, lab.dir.join("tls/vip.key")).unwrap();

    let mut lb1 = lab.vipgate("lb1");
    let lb2 = lab.vipgate("lb2");
    for node in ["lb1", "lb2"] {
        wait(&format!("vipgate on {node} ready"), || {
            lab.admin(node, "/ready").contains(" 200 ")
        });
    }
    let mut keepalived = vec![lab.keepalived("lb1")];
    wait("lb1 takes the VIP", || lab.holds_vip("lb1"));
    keepalived.push(lab.keepalived("lb2"));
    let sampler = Sampler::start(&lab);

    // The client side: 500 agents, a browser with a sticky cookie, a TLS
    // agent with a session; all driven from the client's namespace.
    let (to_client, mut commands) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (to_test, results) = std::sync::mpsc::channel::<String>();
    let fleet = Fleet::new();
    let epoch = Instant::now();
    let client = {
        let fleet = fleet.clone();
        let connector = tls_client(&ca);
        lab.client.spawn_in(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                for index in 0..AGENTS {
                    tokio::spawn(fleet.clone().agent(index, epoch));
                }
                let mut cookie = String::new();
                let mut member = String::new();
                while let Some(command) = commands.recv().await {
                    let answer = match command {
                        "sticky" => {
                            let reply = HttpClient::connect(vip(8080))
                                .await
                                .get("/gwe/session", &[])
                                .await;
                            cookie = reply.cookie("GWELB").expect("a persistence cookie");
                            member = reply.served_by().to_string();
                            member.clone()
                        }
                        "sticky again" => {
                            let reply = HttpClient::connect(vip(8080))
                                .await
                                .get("/gwe/session", &[("cookie", &cookie)])
                                .await;
                            format!("{} (first {member})", reply.served_by())
                        }
                        "tls" => format!("{:?}", tls_session(&connector).await),
                        "sticky sources" => sticky_sources().await,
                        _ => return,
                    };
                    let _ = to_test.send(answer);
                }
            })
        })
    };
    let ask = |command: &'static str| {
        to_client.send(command).unwrap();
        results
            .recv_timeout(LAB_PATIENCE)
            .expect("the client answers")
    };

    let now = || epoch.elapsed().as_millis() as u64;
    wait("500 agents served through lb1", || {
        fleet.all_answered_after(0)
    });
    assert_eq!(lab.csp_connections("lb1"), Some(AGENTS as u64));
    let member = ask("sticky");
    assert!(member.starts_with('m'), "{member}");
    assert_eq!(ask("tls"), "Full");

    // 0. The operator puts proxy m2 under maintenance on the active node;
    // the other node learns it at once.
    let maintained = format!("{}:9070", address(32));
    let answer = lab.admin_call(
        "lb1",
        "POST",
        format!("/pools/csp/members/{maintained}/disable"),
    );
    assert!(answer.contains("\"saved\": true"), "{answer}");
    wait("lb2 learns m2 is under maintenance", || {
        lab.csp_member("lb2", &maintained)
            .is_some_and(|(state, _)| state == "disabled")
    });

    // Clients of the source-persistence virtual, each at its proxy.
    let sticky = ask("sticky sources");
    let proxies: std::collections::BTreeSet<&str> = sticky
        .split(' ')
        .filter_map(|pair| pair.split(':').nth(1))
        .collect();
    assert!(
        proxies.len() == 2 && !proxies.contains("m2"),
        "eight clients over m1 and m3 (m2 is under maintenance): {sticky}"
    );

    // 1. vipgate on lb1 dies.
    let killed = now();
    let started = Instant::now();
    lb1.signal(libc::SIGKILL);
    let _ = lb1.child.wait();
    let failover = wait("the VIP moves to lb2", || {
        lab.holds_vip("lb2") && !lab.holds_vip("lb1")
    });
    let moved = now();
    wait("every agent served through lb2", || {
        fleet.all_answered_after(moved)
    });
    let reconnect = started.elapsed();
    assert!(killed < moved);
    wait("lb2 holds all agents", || {
        lab.csp_connections("lb2") == Some(AGENTS as u64)
    });
    assert_eq!(
        lab.csp_member("lb2", &maintained),
        Some(("disabled".to_string(), 0)),
        "the new active node keeps m2 out: no agent reconnected to it"
    );
    let again = ask("sticky again");
    assert_eq!(
        again,
        format!("{member} (first {member})"),
        "the cookie lands on its member through lb2"
    );
    assert_eq!(ask("tls"), "Resumed", "the TLS session resumes on lb2");
    assert_eq!(
        ask("sticky sources"),
        sticky,
        "lb2 sends each client address to the proxy lb1 did, without its records"
    );
    println!(
        "failover after SIGKILL: VIP on lb2 in {} ms, {AGENTS} agents served again in {} ms",
        failover.as_millis(),
        reconnect.as_millis()
    );

    // 2. lb1 comes back: the VIP stays on lb2, nobody is disturbed.
    lb1 = lab.vipgate("lb1");
    wait("vipgate on lb1 ready", || {
        lab.admin("lb1", "/ready").contains(" 200 ")
    });
    assert_eq!(
        lab.csp_member("lb1", &maintained).map(|(state, _)| state),
        Some("disabled".to_string()),
        "lb1 comes back with m2 under maintenance"
    );
    let broken = fleet.broken.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        lab.holds_vip("lb2") && !lab.holds_vip("lb1"),
        "nopreempt keeps the VIP on lb2"
    );
    assert_eq!(
        fleet.broken.load(Ordering::Relaxed),
        broken,
        "no agent disturbed"
    );

    // 3. vipgate on lb2 hangs: the track script times out, the VIP moves.
    let started = Instant::now();
    lb2.signal(libc::SIGSTOP);
    let failover = wait("the VIP moves to lb1", || {
        lab.holds_vip("lb1") && !lab.holds_vip("lb2")
    });
    let moved = now();
    wait("every agent served through lb1", || {
        fleet.all_answered_after(moved)
    });
    let reconnect = started.elapsed();
    wait("lb1 holds all agents", || {
        lab.csp_connections("lb1") == Some(AGENTS as u64)
    });
    println!(
        "failover after SIGSTOP: VIP on lb1 in {} ms, {AGENTS} agents served again in {} ms",
        failover.as_millis(),
        reconnect.as_millis()
    );

    // Thawed, lb2 finds the connections its agents left and closes them.
    lb2.signal(libc::SIGCONT);
    wait("lb2 lets go of the agents that moved", || {
        lab.csp_connections("lb2") == Some(0)
    });
    assert!(
        lab.holds_vip("lb1") && !lab.holds_vip("lb2"),
        "the VIP stays on lb1"
    );

    let (samples, both) = sampler.finish();
    assert!(samples > 100, "{samples} samples");
    assert!(
        both.is_empty(),
        "split brain at {both:?} of {samples} samples"
    );
    println!("no split brain in {samples} samples");

    to_client.send("stop").unwrap();
    let _ = client.join();
    drop((keepalived, lb1, lb2));
}
