//! Long-lived connections kept even, with agents that behave as the
//! contact center's desktops do: each from its own address, a line every
//! 3 to 5 s, and when vipgate closes its connection, back after a random
//! 0 to 2 s. Covered: rebalancing after a proxy returns (with and without
//! slow ramp), a timed drain, the lifetime limit, and `GET /connections`.
//! The tests print what they measured; bounds are the issue's, generous
//! enough not to be timing assertions.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::admin::{admin, Scrape, ADMIN};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

/// What an agent saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Connected and greeted by the member with this tag index.
    Connected(usize),
    /// vipgate closed the connection (FIN or reset) while it was idle.
    Closed(usize),
    /// Closed while the agent waited for an answer: the line went with it.
    ClosedAsking(usize),
    /// A connect or greeting that failed: refused.
    Refused,
    /// A line not answered, or answered wrongly, on a connection that
    /// stayed open.
    Lost,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    agent: usize,
    at: Instant,
    seen: Seen,
}

/// Agents running until stopped, and what they saw.
struct Fleet {
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The address agent `n` connects from: 127.1.x.y.
fn agent_address(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x7f01_0000 + n as u32 + 1))
}

impl Fleet {
    /// Starts `count` agents toward `vip`, `tags` naming the members, and
    /// waits until each is connected once.
    async fn start(vip: SocketAddr, count: usize, tags: &[&str]) -> Fleet {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tags: Arc<Vec<String>> = Arc::new(tags.iter().map(|t| t.to_string()).collect());
        let mut tasks = Vec::with_capacity(count);
        for agent in 0..count {
            let (events, stop, tags) = (events.clone(), stop.clone(), tags.clone());
            tasks.push(tokio::spawn(run_agent(agent, vip, tags, events, stop)));
            // A few hundred a second, as desktops logging in.
            if agent % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let fleet = Fleet {
            events,
            stop,
            tasks,
        };
        eventually_async("every agent connected", || async {
            fleet.connected_now().len() == count
        })
        .await;
        fleet
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Each agent's member (tag index) now, for agents connected now.
    fn connected_now(&self) -> HashMap<usize, usize> {
        let mut now = HashMap::new();
        for event in self.events.lock().unwrap().iter() {
            match event.seen {
                Seen::Connected(tag) => {
                    now.insert(event.agent, tag);
                }
                Seen::Closed(_) | Seen::ClosedAsking(_) => {
                    now.remove(&event.agent);
                }
                _ => {}
            }
        }
        now
    }

    /// Agents connected now to each member (tag index).
    fn per_member(&self, members: usize) -> Vec<usize> {
        let mut counts = vec![0; members];
        for tag in self.connected_now().values() {
            counts[*tag] += 1;
        }
        counts
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One agent: connect, greet, talk now and then, and come back after a
/// random pause when closed.
async fn run_agent(
    agent: usize,
    vip: SocketAddr,
    tags: Arc<Vec<String>>,
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
) {
    let mut random = (agent as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move |below: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % below
    };
    let record = |seen: Seen| {
        events.lock().unwrap().push(Event {
            agent,
            at: Instant::now(),
            seen,
        })
    };
    while !stop.load(Ordering::Relaxed) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(agent_address(agent), 0))
            .unwrap();
        let Ok(Ok(stream)) = tokio::time::timeout(PATIENCE, socket.connect(vip)).await else {
            record(Seen::Refused);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeted = match write.write_all(b"hello\n").await {
            Ok(()) => tokio::time::timeout(PATIENCE, lines.next_line()).await,
            Err(_) => Ok(Ok(None)),
        };
        let tag = match greeted {
            Ok(Ok(Some(answer))) => tags.iter().position(|tag| answer == format!("{tag} hello")),
            _ => None,
        };
        let Some(tag) = tag else {
            record(Seen::Refused);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        record(Seen::Connected(tag));
        let mut line = 0u64;
        loop {
            let pause = Duration::from_millis(3000 + next(2000));
            tokio::select! {
                // A close that came first is seen first.
                biased;
                read = lines.next_line() => {
                    match read {
                        Ok(Some(_)) => record(Seen::Lost),
                        Ok(None) | Err(_) => { record(Seen::Closed(tag)); break; }
                    }
                }
                () = tokio::time::sleep(pause) => {
                    line += 1;
                    let asked = match write.write_all(format!("{line}\n").as_bytes()).await {
                        Ok(()) => tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await,
                        Err(_) => Ok(Ok(None)),
                    };
                    match asked {
                        Ok(Ok(Some(answer))) if answer == format!("{} {line}", tags[tag]) => {}
                        Ok(Ok(None)) | Ok(Err(_)) => { record(Seen::ClosedAsking(tag)); break; }
                        _ => record(Seen::Lost),
                    }
                }
            }
        }
        // Closed at once, as a desktop does; back after its pause.
        drop((lines, write));
        tokio::time::sleep(Duration::from_millis(next(2000))).await;
    }
}

/// Most events in any one-second window.
fn most_in_a_second(times: &[Instant]) -> usize {
    let mut times = times.to_vec();
    times.sort();
    let mut most = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// A pool of `members` watched by a tcp monitor every 100 ms, resetting
/// the connections of a member that goes down, with `pool_extra` lines.
fn pool_config(members: &[SocketAddr], pool_extra: &str, virtual_extra: &str) -> String {
    let listed: Vec<String> = members
        .iter()
        .map(|m| format!("{{ address = \"{m}\" }}"))
        .collect();
    format!(
        "{ADMIN}[settings]\nworker_threads = 2\n\
         [monitors.TCP]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\n\
         [pools.p]\nalgorithm = \"least-connections\"\naction_on_service_down = \"reset\"\n\
         monitor = {{ all = [\"TCP\"] }}\n{pool_extra}\nmembers = [ {} ]\n\
         [virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\nidle_timeout = \"600s\"\n{virtual_extra}\n",
        listed.join(", ")
    )
}

/// 3,000 agents on three proxies; C dies, its agents go to A and B; C
/// comes back, and rebalancing gives it its share back at the rate asked,
/// moving no client twice, refusing none, cutting no line. Then the same
/// with a slow ramp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_returns_gets_its_share_back_at_the_pace_asked() {
    raise_file_limit();
    for ramp in [None, Some(60)] {
        rebalance_after_a_proxy_returns(ramp).await;
    }
}

async fn rebalance_after_a_proxy_returns(slow_ramp: Option<u64>) {
    const AGENTS: usize = 3_000;
    const RATE: usize = 20;
    let mut members = vec![
        SwitchablePort::open("127.0.0.11", "A").await,
        SwitchablePort::open("127.0.0.12", "B").await,
        SwitchablePort::open("127.0.0.13", "C").await,
    ];
    let addresses: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    let ramp_line = slow_ramp.map_or(String::new(), |s| format!("slow_ramp = \"{s}s\"\n"));
    let vipgate = start(&pool_config(
        &addresses,
        &format!("{ramp_line}rebalance = {{ tolerance = 0.1, rate = {RATE} }}"),
        "",
    ))
    .await;
    for address in &addresses {
        wait_health(&vipgate, *address, vipgate::pool::Health::Up).await;
    }
    let fleet = Fleet::start(vipgate.addr("vs"), AGENTS, &["A", "B", "C"]).await;
    println!("{AGENTS} agents over A, B, C: {:?}", fleet.per_member(3));

    members[2].close().await;
    eventually_async("C's agents moved to A and B", || async {
        fleet.per_member(3) == vec![AGENTS / 2, AGENTS / 2, 0]
    })
    .await;
    let returned = Instant::now();
    members[2].reopen().await;
    wait_health(&vipgate, addresses[2], vipgate::pool::Health::Up).await;
    let deadline = Duration::from_secs(slow_ramp.unwrap_or(0) + (AGENTS / 3 / RATE) as u64 + 30);
    let even = |counts: &[usize]| counts.iter().all(|&c| (900..=1100).contains(&c));
    loop {
        let counts = fleet.per_member(3);
        if even(&counts) && fleet.connected_now().len() == AGENTS {
            break;
        }
        assert!(
            returned.elapsed() < deadline,
            "not even after {deadline:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = returned.elapsed();
    // A few more seconds: the rebalance must have stopped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events: Vec<Event> = fleet
        .events()
        .into_iter()
        .filter(|e| e.at >= returned)
        .collect();
    let moves: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.seen, Seen::Closed(_) | Seen::ClosedAsking(_)))
        .collect();
    let mut moved_per_agent: HashMap<usize, usize> = HashMap::new();
    for event in &moves {
        *moved_per_agent.entry(event.agent).or_default() += 1;
    }
    let twice = moved_per_agent.values().filter(|&&n| n > 1).count();
    let refused = events.iter().filter(|e| e.seen == Seen::Refused).count();
    let lost = fleet
        .events()
        .iter()
        .filter(|e| e.seen == Seen::Lost)
        .count();
    let cut = moves
        .iter()
        .filter(|e| matches!(e.seen, Seen::ClosedAsking(_)))
        .count();
    let fastest = most_in_a_second(&moves.iter().map(|e| e.at).collect::<Vec<_>>());
    let from_c = moves
        .iter()
        .filter(|e| matches!(e.seen, Seen::Closed(2) | Seen::ClosedAsking(2)))
        .count();
    let scrape = Scrape::of(&vipgate).await;
    let rebalanced: f64 = addresses
        .iter()
        .map(|m| {
            scrape.get(
                "vipgate_rebalanced_total",
                &[("pool", "p"), ("member", &m.to_string())],
            )
        })
        .sum();
    println!(
        "rebalance (slow_ramp {slow_ramp:?}): even after {:.1} s ({} moved, {:.1} s at {RATE}/s): {:?}; \
         most moves in one second {fastest}; clients moved twice {twice}; reconnects refused {refused}; \
         lines lost {lost}; moves that met a line in flight {cut}",
        took.as_secs_f64(),
        moves.len(),
        moves.len() as f64 / RATE as f64,
        fleet.per_member(3),
    );
    assert!(fastest <= RATE + 1, "{fastest} moves in one second");
    assert_eq!(twice, 0, "no client moved twice");
    assert_eq!(refused, 0, "no reconnect refused");
    assert_eq!(lost, 0, "no line lost");
    assert_eq!(from_c, 0, "nobody moved off the member that came back");
    assert_eq!(rebalanced as usize, moves.len(), "every move counted");
    assert!(
        moves.len() >= 800 && moves.len() <= 1100,
        "{} moved",
        moves.len()
    );
    let status = common::admin::status(&vipgate).await;
    assert_eq!(
        status["pools"][0]["rebalance"]["active"], false,
        "{}",
        status["pools"][0]
    );
    fleet.stop().await;
    for member in &mut members {
        member.close().await;
    }
}

/// A drain of a member holding 600 agents over 20 s: the closes are
/// spread evenly (no second with more than twice the average), the last
/// is gone by the deadline, and every agent is back, on another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_drain_closes_at_an_even_pace_and_everyone_reconnects_elsewhere() {
    raise_file_limit();
    const AGENTS: usize = 1_800;
    const WITHIN: u64 = 20;
    let members = [
        SwitchablePort::open("127.0.0.11", "A").await,
        SwitchablePort::open("127.0.0.12", "B").await,
        SwitchablePort::open("127.0.0.13", "C").await,
    ];
    let addresses: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    let vipgate = start(&pool_config(&addresses, "", "")).await;
    for address in &addresses {
        wait_health(&vipgate, *address, vipgate::pool::Health::Up).await;
    }
    let fleet = Fleet::start(vipgate.addr("vs"), AGENTS, &["A", "B", "C"]).await;
    let on_c = fleet.per_member(3)[2];
    let asked = Instant::now();
    let path = format!("/pools/p/members/{}/drain?within={WITHIN}s", addresses[2]);
    let reply = admin(&vipgate, "POST", &path, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(answer["state"], "disabled");
    let deadline = asked + Duration::from_secs(WITHIN);
    eventually_async("C drained", || async {
        let status = common::admin::status(&vipgate).await;
        status["pools"][0]["members"][2]["drain"]["drained"] == true
    })
    .await;
    let drained_after = asked.elapsed();
    eventually_async("every agent back", || async {
        fleet.connected_now().len() == AGENTS
    })
    .await;
    let closes: Vec<Instant> = fleet
        .events()
        .iter()
        .filter(|e| e.at >= asked && matches!(e.seen, Seen::Closed(2) | Seen::ClosedAsking(2)))
        .map(|e| e.at)
        .collect();
    let mut per_second = vec![0usize; WITHIN as usize + 3];
    for at in &closes {
        let second = at.duration_since(asked).as_secs() as usize;
        let last = per_second.len() - 1;
        per_second[second.min(last)] += 1;
    }
    let average = on_c as f64 / WITHIN as f64;
    let last = closes.iter().max().map(|at| at.duration_since(asked));
    let refused = fleet
        .events()
        .iter()
        .filter(|e| e.seen == Seen::Refused)
        .count();
    let lost = fleet
        .events()
        .iter()
        .filter(|e| e.seen == Seen::Lost)
        .count();
    println!(
        "drain of {on_c} agents within {WITHIN} s: closes per second {per_second:?} (average {average:.0}); \
         last close after {:.1} s; drained (status) after {:.1} s; now {:?}; refused {refused}; lines lost {lost}",
        last.unwrap_or_default().as_secs_f64(),
        drained_after.as_secs_f64(),
        fleet.per_member(3),
    );
    assert!((550..=650).contains(&on_c), "{on_c} agents on C");
    assert_eq!(closes.len(), on_c, "each of C's agents closed once");
    assert!(
        per_second.iter().all(|&n| n as f64 <= 2.0 * average),
        "{per_second:?}"
    );
    assert!(
        last.is_some_and(|last| asked + last <= deadline + Duration::from_secs(1)),
        "{last:?}"
    );
    assert_eq!(fleet.per_member(3)[2], 0, "nobody went back to C");
    assert_eq!((refused, lost), (0, 0));
    let scrape = Scrape::of(&vipgate).await;
    let drained = scrape.get(
        "vipgate_drained_total",
        &[("pool", "p"), ("member", &addresses[2].to_string())],
    );
    assert_eq!(drained as usize, on_c, "each counted once");
    // Enabling it ends the drain and takes clients again.
    let enabled = admin(
        &vipgate,
        "POST",
        &format!("/pools/p/members/{}/enable", addresses[2]),
        None,
    )
    .await;
    assert_eq!(enabled.status, 200);
    let status = common::admin::status(&vipgate).await;
    assert!(
        status["pools"][0]["members"][2]["drain"].is_null(),
        "{status}"
    );
    fleet.stop().await;
}

/// Connections past `max_connection_lifetime` are closed while quiet, at
/// the pool's pace, and their clients come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_lifetime_come_back_through_the_balancer() {
    const AGENTS: usize = 40;
    let member = SwitchablePort::open("127.0.0.11", "A").await;
    let vipgate = start(&pool_config(
        &[member.addr],
        "rebalance = { rate = 10 }",
        "max_connection_lifetime = \"4s\"",
    ))
    .await;
    wait_health(&vipgate, member.addr, vipgate::pool::Health::Up).await;
    let started = Instant::now();
    let fleet = Fleet::start(vipgate.addr("vs"), AGENTS, &["A"]).await;
    eventually_async("every agent closed once at its lifetime", || async {
        let events = fleet.events();
        (0..AGENTS).all(|agent| {
            events
                .iter()
                .any(|e| e.agent == agent && matches!(e.seen, Seen::Closed(_)))
        })
    })
    .await;
    let closes: Vec<Instant> = fleet
        .events()
        .iter()
        .filter(|e| matches!(e.seen, Seen::Closed(_) | Seen::ClosedAsking(_)))
        .map(|e| e.at)
        .collect();
    let first = closes.iter().min().unwrap().duration_since(started);
    let fastest = most_in_a_second(&closes);
    println!(
        "lifetime 4 s: first close after {:.1} s, {} closes, most in one second {fastest}",
        first.as_secs_f64(),
        closes.len()
    );
    assert!(
        first >= Duration::from_millis(3600),
        "{first:?}: no connection closed before 90% of its lifetime"
    );
    assert!(fastest <= 11, "{fastest} in one second at a rate of 10");
    // Counted as each connection ends: once its client closed too.
    let member_label = member.addr.to_string();
    eventually_async("every close counted", || async {
        let scrape = Scrape::of(&vipgate).await;
        let labels = [("pool", "p"), ("member", member_label.as_str())];
        scrape.get("vipgate_lifetime_closed_total", &labels) as usize >= AGENTS
    })
    .await;
    fleet.stop().await;
}

/// `GET /connections` lists who is where, filtered and a page at a time,
/// and only for the token's holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_list_answers_which_agents_are_on_a_proxy() {
    let first = tagged_member("127.0.0.11", "m1").await;
    let second = tagged_member("127.0.0.12", "m2").await;
    let token = "0123456789abcdef-admin-token";
    let dir = common::tls_ca::temp_dir("connections-list");
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let toml = config(&[first, second], "snat = \"automap\"")
        + &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token_file.display()
        );
    let vipgate = start(&toml).await;
    let vip = vipgate.addr("vs");
    let mut agents = Vec::new();
    for n in 0..10 {
        let mut agent = LineClient::try_connect_from(agent_address(n), vip)
            .await
            .unwrap();
        assert!(agent.ask("hello").await.is_some());
        agents.push(agent);
    }
    let refused = admin(&vipgate, "GET", "/connections", None).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let list = |query: String| {
        let vipgate = &vipgate;
        async move {
            let reply = admin(vipgate, "GET", &format!("/connections{query}"), Some(token)).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            serde_json::from_str::<Value>(&reply.body).unwrap()
        }
    };
    let all = list(String::new()).await;
    let listed = all["connections"].as_array().unwrap();
    assert_eq!(listed.len(), 10, "{all}");
    assert_eq!(all["open"], 10);
    assert!(all["next"].is_null());
    let one = &listed[0];
    assert_eq!(one["virtual"], "vs");
    assert_eq!(one["pool"], "p");
    assert_eq!(
        one["client"].as_str().unwrap().split(':').next(),
        Some("127.1.0.1")
    );
    assert_eq!(one["bytes_to_member"], 6, "{one}");
    assert!(
        one["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.")),
        "{one}"
    );
    assert!(one["age_seconds"].as_f64().is_some() && one["idle_seconds"].as_f64().is_some());
    // By member: the two lists split the ten.
    let on_first = list(format!("?member={first}")).await["connections"]
        .as_array()
        .unwrap()
        .len();
    let on_second = list(format!(
        "?member={}",
        second.to_string().replace(':', "%3A")
    ))
    .await["connections"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(on_first + on_second, 10);
    assert!(on_first > 0 && on_second > 0);
    // By client address.
    let client = list("?client=127.1.0.3".to_string()).await;
    assert_eq!(client["connections"].as_array().unwrap().len(), 1);
    // A page at a time: three pages of four, each id once.
    let mut seen: Vec<u64> = Vec::new();
    let mut after = 0;
    loop {
        let page = list(format!("?limit=4&after={after}")).await;
        let ids: Vec<u64> = page["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect();
        assert!(ids.len() <= 4);
        seen.extend(&ids);
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), 10, "{seen:?}");
    let bad = admin(&vipgate, "GET", "/connections?limit=0", Some(token)).await;
    assert_eq!(bad.status, 400);
    drop(agents);
    eventually("the list empties", || {
        vipgate.snapshot().active_connections() == 0
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// With round-robin, a rebalancing pool sends new clients only to the
/// members below their share: the moved clients land on the member that
/// came back, not back where they were, and the pool evens out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_moves_land_on_the_emptier_member() {
    raise_file_limit();
    const AGENTS: usize = 600;
    let mut members = [
        SwitchablePort::open("127.0.0.11", "A").await,
        SwitchablePort::open("127.0.0.12", "B").await,
        SwitchablePort::open("127.0.0.13", "C").await,
    ];
    let addresses: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    let toml = pool_config(&addresses, "rebalance = { rate = 20 }", "").replace(
        "algorithm = \"least-connections\"",
        "algorithm = \"round-robin\"",
    );
    let vipgate = start(&toml).await;
    for address in &addresses {
        wait_health(&vipgate, *address, vipgate::pool::Health::Up).await;
    }
    let fleet = Fleet::start(vipgate.addr("vs"), AGENTS, &["A", "B", "C"]).await;
    members[2].close().await;
    eventually_async("C's agents moved to A and B", || async {
        let counts = fleet.per_member(3);
        counts[2] == 0 && counts[0] + counts[1] == AGENTS
    })
    .await;
    let returned = Instant::now();
    members[2].reopen().await;
    wait_health(&vipgate, addresses[2], vipgate::pool::Health::Up).await;
    eventually_async("the pool even again", || async {
        let counts = fleet.per_member(3);
        fleet.connected_now().len() == AGENTS && counts.iter().all(|&c| (180..=220).contains(&c))
    })
    .await;
    let took = returned.elapsed();
    let events: Vec<Event> = fleet
        .events()
        .into_iter()
        .filter(|e| e.at >= returned)
        .collect();
    let moved = events
        .iter()
        .filter(|e| matches!(e.seen, Seen::Closed(_) | Seen::ClosedAsking(_)))
        .count();
    let landed_on_c = events
        .iter()
        .filter(|e| e.seen == Seen::Connected(2))
        .count();
    println!(
        "round-robin rebalance: even after {:.1} s: {:?}; {moved} moved, {landed_on_c} reconnected to C",
        took.as_secs_f64(),
        fleet.per_member(3)
    );
    // Without the skip, round-robin would send two of three back to A
    // and B; clients still away when the rebalance stops go anywhere.
    assert!(
        landed_on_c as f64 >= 0.8 * moved as f64,
        "{landed_on_c} of {moved} moved clients landed on the member with room"
    );
    fleet.stop().await;
}
