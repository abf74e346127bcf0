//! Health monitors across a lossy WAN link: members at a remote site behind
//! a link that delays every frame 50 ms each way and loses some, made in
//! network namespaces with a user-space relay (`common::lossy_link`; this
//! kernel has no netem). The monitor is F5's shape with no spare second:
//! `timeout = 3 x interval`.
//!
//! ```text
//!  lb (vipgate)          wan (relay)            site (members)
//!  eth0 198.18.44.1 -- to-lb  to-site -- eth0 198.18.44.11, .12
//! ```
//!
//! 1. Every connection's first SYN lost: each probe is answered only after
//!    Linux sends the SYN again a second later, longer than the interval.
//!    Probes judged against the timeout still see both members up, and
//!    neither ever goes down.
//! 2. 3% of frames lost each way, at random, for 20 s: no member goes down.
//! 3. Member .12 blackholed: it goes down within `timeout` + one interval,
//!    while .11 stays up.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::lossy_link::LossyLink;
use common::netns::{self, Namespace};
use common::*;
use vipgate::pool::Health;

const LB: &str = "198.18.44.1";
const STEADY: &str = "198.18.44.11";
const BLACKHOLED: &str = "198.18.44.12";
const PORT: u16 = 9070;
const INTERVAL: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_millis(1500);

fn config() -> String {
    format!(
        "[monitors.TCP-9070]\ntype = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"1500ms\"\n\n\
         [pools.csp]\nmonitor = {{ all = [\"TCP-9070\"] }}\n\
         members = [ {{ address = \"{STEADY}:{PORT}\" }}, {{ address = \"{BLACKHOLED}:{PORT}\" }} ]\n\n\
         [virtuals.csp]\nlisten = \"{LB}:0\"\npool = \"csp\"\n"
    )
}

/// Members that accept and close connections, on a thread inside `site`,
/// until `stop` is set.
fn members(site: &Namespace, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    site.spawn_in(move || {
        let listeners: Vec<std::net::TcpListener> = [STEADY, BLACKHOLED]
            .iter()
            .map(|ip| {
                let listener = std::net::TcpListener::bind((*ip, PORT)).unwrap();
                listener.set_nonblocking(true).unwrap();
                listener
            })
            .collect();
        while !stop.load(Relaxed) {
            for listener in &listeners {
                while let Ok((connection, _)) = listener.accept() {
                    drop(connection);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// Times the member at `address` went down so far.
fn times_down(vipgate: &Vipgate, address: SocketAddr) -> u64 {
    vipgate
        .status()
        .pools
        .iter()
        .flat_map(|pool| &pool.members)
        .find(|member| member.address == address.to_string())
        .unwrap()
        .times_down
}

#[test]
#[ignore = "needs root and iproute2 (network namespaces)"]
fn probes_hold_across_a_lossy_link_and_a_blackholed_member_still_goes_down() {
    netns::require();
    let wan = Namespace::create("wan");
    let lb = Namespace::create("lb");
    let site = Namespace::create("site");
    wan.veth("to-lb", &lb, "eth0");
    wan.veth("to-site", &site, "eth0");
    for end in ["to-lb", "to-site"] {
        wan.ip(&["link", "set", end, "up"]);
    }
    lb.ip(&["addr", "add", &format!("{LB}/24"), "dev", "eth0"]);
    lb.ip(&["link", "set", "eth0", "up"]);
    for address in [STEADY, BLACKHOLED] {
        site.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]);
    }
    site.ip(&["link", "set", "eth0", "up"]);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("relay seed {seed}");
    let link = LossyLink::start(&wan, "to-lb", "to-site", Duration::from_millis(50), seed);
    let stop = Arc::new(AtomicBool::new(false));
    let serving = members(&site, Arc::clone(&stop));
    let control = Arc::clone(&link.control);

    let checked = lb.spawn_in(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let steady: SocketAddr = format!("{STEADY}:{PORT}").parse().unwrap();
            let blackholed: SocketAddr = format!("{BLACKHOLED}:{PORT}").parse().unwrap();

            // 1. Every first SYN lost: answers come a second late.
            control.lose_first_syns(true);
            let vipgate = start(&config()).await;
            for member in [steady, blackholed] {
                wait_health(&vipgate, member, Health::Up).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            for member in [steady, blackholed] {
                assert_eq!(
                    vipgate.health(member),
                    Health::Up,
                    "{member}: every first SYN lost"
                );
                assert_eq!(
                    times_down(&vipgate, member),
                    0,
                    "{member} flapped: every first SYN lost"
                );
            }
            control.lose_first_syns(false);

            // 2. 3% lost each way, at random.
            control.set_loss(3.0);
            let dropped = control.dropped.load(Relaxed);
            tokio::time::sleep(Duration::from_secs(20)).await;
            let lost = control.dropped.load(Relaxed) - dropped;
            println!("3% loss for 20 s: {lost} frames lost");
            assert!(lost > 0, "the link lost nothing");
            for member in [steady, blackholed] {
                assert_eq!(
                    times_down(&vipgate, member),
                    0,
                    "{member} flapped at 3% loss (seed {seed})"
                );
            }

            // 3. A blackholed member still goes down in time.
            let cut = Instant::now();
            control.blackhole(BLACKHOLED.parse::<Ipv4Addr>().unwrap());
            wait_health(&vipgate, blackholed, Health::Down).await;
            let took = cut.elapsed();
            println!("blackholed member down after {took:?}");
            // Its last success came at most an interval before the cut; it
            // turns down `timeout` after that. The margin is for scheduling.
            assert!(
                took <= TIMEOUT + INTERVAL + Duration::from_millis(300),
                "down only after {took:?}"
            );
            assert!(
                took >= TIMEOUT - INTERVAL,
                "down after {took:?}, before its timeout could pass"
            );
            assert_eq!(vipgate.health(steady), Health::Up);
            assert_eq!(times_down(&vipgate, steady), 0);
        })
    });
    let result = checked.join();
    stop.store(true, Relaxed);
    let _ = serving.join();
    drop(link);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
