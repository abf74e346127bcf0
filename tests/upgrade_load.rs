//! A binary upgrade under a contact center's load, through the real
//! binary: 8,000 agents hold connections over two members, 100 of them
//! exchange numbered lines all through the upgrade, and a newcomer
//! connects every 10 ms. After the upgrade every agent is still connected,
//! to the same member, no line was lost, repeated or reordered, no
//! newcomer was refused, and the old process is gone. Prints what it
//! measured: the time the hand-over took, how long the old process
//! lingered, and each process's memory per connection.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{free_vip_port, KillOnDrop, Running, BINARY};
use common::{raise_file_limit, tagged_member, LineClient, PATIENCE};

/// Held agents; the test process holds each twice (agent and member side),
/// under this machine's 20,000 open files.
const AGENTS: usize = 8_000;
const STREAMING: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_thousand_agents_move_to_the_new_process_and_none_notices() {
    raise_file_limit();
    let first = tagged_member("127.0.0.11", "m11").await;
    let second = tagged_member("127.0.0.12", "m12").await;
    let port = free_vip_port();
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = common::tls_ca::temp_dir("upgrade-load");
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        format!(
            "[settings]\nupgrade_drain_timeout = \"30s\"\n[admin]\nlisten = \"{admin}\"\n\
             [pools.p]\nmembers = [ {{ address = \"{first}\" }}, {{ address = \"{second}\" }} ]\n\
             [virtuals.vs]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\n"
        ),
    )
    .unwrap();
    let mut old = Running::start(&config, "");
    let vip: SocketAddr = format!("127.0.0.100:{port}").parse().unwrap();
    let idle_memory = resident_kib(old.child.id());

    let mut agents = connect_agents(vip, AGENTS).await;
    let loaded_memory = resident_kib(old.child.id());
    let listing = list_connections(&admin, first).await;
    let streaming: Vec<Agent> = agents.drain(..STREAMING).collect();
    let talk = Talk::start(streaming);
    let newcomers = Newcomers::start(vip);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let asked = Instant::now();
    let upgraded = upgrade(&admin, &config).await;
    let answered = asked.elapsed();
    let moved = count_after(&upgraded, "took ");
    let took_ms = count_after(&upgraded, "over in ");
    let old_pid = old.child.id();
    let gone = tokio::task::spawn_blocking(move || {
        let exited = common::eventually_blocking("the old process exits", PATIENCE, || {
            old.child.try_wait().unwrap()
        });
        (exited, asked.elapsed())
    });
    let (exited, old_gone_after) = gone.await.unwrap();
    assert!(exited.success(), "{exited:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (served, refused) = newcomers.stop().await;
    let (lines, streaming) = talk.stop().await;
    agents.extend(streaming);

    // Every agent is still there, on the member it had.
    let mut same = 0;
    for (agent, tag) in &mut agents {
        let answer = agent.ask("after").await;
        if answer.as_deref() == Some(&format!("{tag} after")) {
            same += 1;
        }
    }
    let successor = count_after(&upgraded, "process ") as u32;
    let _reap = KillOnDrop(successor);
    let successor_memory = resident_kib(successor);
    println!(
        "upgrade under load: {moved} connections moved in {took_ms} ms (the command answered after {} ms); \
         the old process (pid {old_pid}) was gone {} ms after the command was sent; \
         {served} newcomers served, {refused} refused; {STREAMING} agents exchanged {lines} lines through it; \
         memory per connection: old {:.1} KiB, new {:.1} KiB; {listing}",
        answered.as_millis(),
        old_gone_after.as_millis(),
        per_connection(idle_memory, loaded_memory),
        per_connection(idle_memory, successor_memory),
    );
    assert_eq!(same, AGENTS, "every agent still connected, to its member");
    assert!(moved >= AGENTS, "{upgraded}");
    assert_eq!(refused, 0, "no newcomer refused");
    assert!(served > 20, "{served} newcomers served");

    drop(agents);
    // SAFETY: kill(2) on the process this test started (through vipgate).
    unsafe { libc::kill(successor as i32, libc::SIGTERM) };
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bulk stream both ways, moved in the middle: the bytes a pump had read
/// but not yet written (in a buffer or a splice pipe) reach their peer,
/// and nothing is lost, repeated or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_stream_moves_in_the_middle_without_losing_a_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOTAL: usize = 256 << 20;
    let member = common::echo_member("127.0.0.13").await;
    let port = free_vip_port();
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = common::tls_ca::temp_dir("upgrade-bulk");
    let config = dir.join("vipgate.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"{admin}\"\n[pools.p]\nmembers = [ {{ address = \"{member}\" }} ]\n\
             [virtuals.vs]\nlisten = \"127.0.0.100:{port}\"\npool = \"p\"\n"
        ),
    )
    .unwrap();
    let old = Running::start(&config, "");
    let stream = tokio::net::TcpStream::connect(("127.0.0.100", port))
        .await
        .unwrap();
    let (mut reading, mut writing) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        let mut chunk = vec![0u8; 64 << 10];
        while sent < TOTAL {
            for (offset, byte) in chunk.iter_mut().enumerate() {
                *byte = ((sent + offset) % 251) as u8;
            }
            writing.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        writing.shutdown().await.unwrap();
    });
    let (halfway, reached) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut halfway = Some(halfway);
        let mut received = 0usize;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let read = reading.read(&mut chunk).await.unwrap();
            if read == 0 {
                return received;
            }
            for (offset, byte) in chunk[..read].iter().enumerate() {
                assert_eq!(
                    *byte,
                    ((received + offset) % 251) as u8,
                    "byte {}",
                    received + offset
                );
            }
            received += read;
            if received > TOTAL / 8 {
                if let Some(halfway) = halfway.take() {
                    let _ = halfway.send(());
                }
            }
        }
    });
    reached.await.unwrap();
    let upgraded = upgrade(&admin, &config).await;
    let successor = count_after(&upgraded, "process ") as u32;
    let _reap = KillOnDrop(successor);
    assert_eq!(count_after(&upgraded, "took "), 1, "{upgraded}");
    // The reader ends (or fails) first: a writer whose bytes nobody reads
    // any more would wait forever.
    let received = tokio::time::timeout(PATIENCE, reader).await;
    writer.abort();
    let received = received.expect("the stream ends in time").unwrap();
    assert_eq!(received, TOTAL, "every byte came back, in order");
    println!("a bulk stream moved in the middle: {upgraded}");
    drop(old);
    // SAFETY: kill(2) on the process this test started (through vipgate).
    unsafe { libc::kill(successor as i32, libc::SIGTERM) };
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pages through `GET /connections` with every agent connected: each of
/// the 8,000 listed once, each page bounded, and a member's filter. What
/// it took, in words.
async fn list_connections(admin: &str, first: SocketAddr) -> String {
    let address: SocketAddr = admin.parse().unwrap();
    let get = |path: String| async move {
        let mut client = common::http_client::HttpClient::connect(address).await;
        let reply = client
            .send("GET", &path, &[], bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str::<serde_json::Value>(&reply.body).unwrap()
    };
    let started = Instant::now();
    let first_page = get("/connections?limit=1000".to_string()).await;
    let first_page_took = started.elapsed();
    let mut ids = std::collections::HashSet::new();
    let mut page = first_page;
    let mut pages = 1;
    loop {
        let listed = page["connections"].as_array().unwrap();
        assert!(listed.len() <= 1000);
        ids.extend(listed.iter().map(|c| c["id"].as_u64().unwrap()));
        match page["next"].as_u64() {
            Some(next) => {
                page = get(format!("/connections?limit=1000&after={next}")).await;
                pages += 1;
            }
            None => break,
        }
    }
    let all_took = started.elapsed();
    assert_eq!(ids.len(), AGENTS, "every agent listed once");
    let on_first = get(format!("/connections?member={first}&limit=1000")).await;
    assert!(on_first["connections"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["member"] == first.to_string()));
    format!(
        "GET /connections with {AGENTS} open: the first page of 1,000 in {} ms, all {pages} pages in {} ms",
        first_page_took.as_millis(),
        all_took.as_millis()
    )
}

/// Connects `count` agents, a few hundred at a time; each says hello and
/// remembers which member answered.
async fn connect_agents(vip: SocketAddr, count: usize) -> Vec<Agent> {
    let mut agents = Vec::with_capacity(count);
    while agents.len() < count {
        let wave = (count - agents.len()).min(250);
        let joined = (0..wave).map(|_| {
            tokio::spawn(async move {
                let mut agent = LineClient::connect(vip).await;
                let answer = agent.ask("hello").await.expect("an agent is served");
                let tag = answer.split(' ').next().unwrap_or_default().to_string();
                (agent, tag)
            })
        });
        for agent in futures_join(joined).await {
            agents.push(agent);
        }
    }
    agents
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut done = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        done.push(handle.await.unwrap());
    }
    done
}

/// An agent and the tag of the member it is connected to.
type Agent = (LineClient, String);

/// Agents that send a numbered line every 10 ms and check each answer.
struct Talk {
    stop: Arc<AtomicBool>,
    /// Each agent's lines exchanged, and the agent back; or what went wrong.
    tasks: Vec<tokio::task::JoinHandle<Result<(usize, Agent), String>>>,
}

impl Talk {
    fn start(agents: Vec<Agent>) -> Talk {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = agents
            .into_iter()
            .map(|(mut agent, tag)| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut line = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let answer = agent.ask(&line.to_string()).await;
                        if answer != Some(format!("{tag} {line}")) {
                            return Err(format!("line {line} came back as {answer:?}"));
                        }
                        line += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Ok((line, (agent, tag)))
                })
            })
            .collect();
        Talk { stop, tasks }
    }

    /// Lines exchanged, and the agents back; fails on any line lost,
    /// repeated or out of order.
    async fn stop(self) -> (usize, Vec<Agent>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut lines = 0;
        let mut agents = Vec::new();
        for task in self.tasks {
            let (count, agent) = task.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
            lines += count;
            agents.push(agent);
        }
        (lines, agents)
    }
}

/// A newcomer every 10 ms, counting those not served.
struct Newcomers {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Newcomers {
    fn start(vip: SocketAddr) -> Newcomers {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, served, refused) = (stop.clone(), served.clone(), refused.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answered = match LineClient::try_connect(vip).await {
                        Some(mut client) => client.ask("hi").await.is_some(),
                        None => false,
                    };
                    let counter = if answered { &served } else { &refused };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        Newcomers {
            stop,
            served,
            refused,
            task,
        }
    }

    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.served.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// `vipgate upgrade --admin ADMIN`: its output; fails if it failed.
async fn upgrade(admin: &str, config: &Path) -> String {
    let (admin, config) = (admin.to_string(), config.to_path_buf());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(["upgrade", "--admin", &admin, "-c"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    said
}

/// The number after `marker` in `text`.
fn count_after(text: &str, marker: &str) -> usize {
    text.split(marker)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no number after {marker:?} in {text}"))
}

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn per_connection(idle: u64, loaded: u64) -> f64 {
    loaded.saturating_sub(idle) as f64 / AGENTS as f64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
