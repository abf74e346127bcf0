//! Agent desktops as a contact center's worst minute sees them, for
//! `benches/compare.sh`: a reconnect storm, and held agents with a few
//! talking. Agents come from many 127.0.1.x source addresses.
//!
//! ```text
//! agents storm TARGET COUNT [CA.pem [resume|full]]
//!     COUNT agents connect and exchange a line; then every one is closed at
//!     once and reconnects after a random delay in [0, 2 s), sends a line and
//!     waits for its answer, retrying (after 100 ms) on a refusal, a reset or
//!     5 s without an answer. Prints
//!     `storm agents=N back_ms=T failures=F p50_ms=A p99_ms=B`: the time
//!     from the close until every agent was served, the attempts that failed,
//!     and the reconnect latency (connect to answer) of the successful ones.
//!     Over TLS each agent resumes the session it had (`resume`, the
//!     default) or makes a full handshake (`full`).
//! agents held TARGET COUNT ACTIVE IDLE_S TALK_S
//!     COUNT agents connect, exchange a line and print `ready`; they stay
//!     quiet IDLE_S seconds (print `talking`), then ACTIVE of them send a line
//!     every 100 ms for TALK_S seconds; prints `held p50_us=A p99_us=B`, then
//!     holds every connection until killed.
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Connections opened at once while agents first log in.
const CONCURRENT_CONNECTS: usize = 200;
/// Source addresses agents come from: 127.0.1.1 and up.
const SOURCES: u32 = 60;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |index: usize| -> u64 {
        args.get(index)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage())
    };
    match args.get(1).map(String::as_str) {
        Some("storm") if (4..=6).contains(&args.len()) => {
            let target = parse(&args[2]);
            let tls = args.get(4).map(|ca| {
                let resume = args.get(5).is_none_or(|mode| mode == "resume");
                (base_config(ca), resume)
            });
            storm(target, number(3) as usize, tls).await
        }
        Some("held") if args.len() == 7 => {
            let target = parse(&args[2]);
            held(
                target,
                number(3) as usize,
                number(4) as usize,
                Duration::from_secs(number(5)),
                Duration::from_secs(number(6)),
            )
            .await
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: agents storm TARGET COUNT [CA.pem [resume|full]] | held TARGET COUNT ACTIVE IDLE_S TALK_S");
    std::process::exit(2)
}

fn parse(address: &str) -> SocketAddr {
    address.parse().unwrap_or_else(|_| usage())
}

fn base_config(ca: &str) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Agent `index`'s source address.
fn source(index: usize) -> SocketAddr {
    let host = 1 + (index as u32 % SOURCES);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, host as u8)), 0)
}

async fn connect(index: usize, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source(index))?;
    socket.connect(target).await
}

/// An agent's connection, plain or TLS.
enum Line {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Line {
    async fn open(
        index: usize,
        target: SocketAddr,
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> std::io::Result<Line> {
        let stream = connect(index, target).await?;
        let mut line = match tls {
            None => Line::Plain(stream),
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from("vip.example").unwrap();
                Line::Tls(Box::new(tls.connect(name, stream).await?))
            }
        };
        line.exchange().await?;
        Ok(line)
    }

    async fn exchange(&mut self) -> std::io::Result<()> {
        match self {
            Line::Plain(stream) => exchange(stream).await,
            Line::Tls(stream) => exchange(stream.as_mut()).await,
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<()> {
    stream.write_all(b"hello\n").await?;
    let mut answer = [0; 6];
    stream.read_exact(&mut answer).await?;
    Ok(())
}

/// A number in [0, 1) from `seed` (splitmix64): delays without a random
/// source.
fn unit(seed: u64) -> f64 {
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((x ^ (x >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// Opens `count` lines, at most [`CONCURRENT_CONNECTS`] at once; exits
/// with the error if one fails.
async fn log_in(
    count: usize,
    target: SocketAddr,
    connectors: &[Option<tokio_rustls::TlsConnector>],
) -> Vec<Line> {
    let permits = Arc::new(Semaphore::new(CONCURRENT_CONNECTS));
    let tasks: Vec<_> = (0..count)
        .map(|index| {
            let permits = Arc::clone(&permits);
            let tls = connectors.get(index).cloned().flatten();
            tokio::spawn(async move {
                let _permit = permits.acquire().await.unwrap();
                Line::open(index, target, tls.as_ref()).await
            })
        })
        .collect();
    let mut lines = Vec::with_capacity(count);
    for (index, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            Ok(line) => lines.push(line),
            Err(error) => {
                eprintln!("agent {index} could not log in: {error}");
                std::process::exit(1);
            }
        }
    }
    lines
}

async fn storm(target: SocketAddr, count: usize, tls: Option<(rustls::ClientConfig, bool)>) {
    // One session cache per agent, as each desktop has its own.
    let connectors: Vec<Option<tokio_rustls::TlsConnector>> = (0..count)
        .map(|_| {
            tls.as_ref().map(|(config, _)| {
                let mut config = config.clone();
                config.resumption = rustls::client::Resumption::in_memory_sessions(2);
                tokio_rustls::TlsConnector::from(Arc::new(config))
            })
        })
        .collect();
    let lines = log_in(count, target, &connectors).await;
    let full = tls.as_ref().is_some_and(|(_, resume)| !resume);
    // The failover: every agent's connection goes at once.
    println!("closing");
    drop(lines);
    let started = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|index| {
            let tls = match (&tls, full) {
                (Some((config, _)), true) => {
                    Some(tokio_rustls::TlsConnector::from(Arc::new(config.clone())))
                }
                _ => connectors[index].clone(),
            };
            tokio::spawn(async move {
                let delay = Duration::from_secs_f64(2.0 * unit(index as u64));
                tokio::time::sleep_until((started + delay).into()).await;
                let mut failures = 0u64;
                loop {
                    let attempt = Instant::now();
                    let opened = tokio::time::timeout(
                        Duration::from_secs(5),
                        Line::open(index, target, tls.as_ref()),
                    )
                    .await;
                    match opened {
                        Ok(Ok(line)) => {
                            return (attempt.elapsed(), started.elapsed(), failures, line)
                        }
                        _ => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    let mut back = Duration::ZERO;
    let mut failures = 0;
    let mut held = Vec::with_capacity(count);
    for task in tasks {
        let (latency, at, failed, line) = task.await.expect("task");
        latencies.push(latency);
        back = back.max(at);
        failures += failed;
        held.push(line);
    }
    latencies.sort_unstable();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "storm agents={count} back_ms={} failures={failures} p50_ms={:.2} p99_ms={:.2}",
        back.as_millis(),
        percentile(0.5).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3
    );
}

async fn held(target: SocketAddr, count: usize, active: usize, idle: Duration, talk: Duration) {
    let mut lines = log_in(count, target, &[]).await;
    println!("ready {count}");
    tokio::time::sleep(idle).await;
    println!("talking");
    let talkers: Vec<Line> = lines.drain(..active.min(count)).collect();
    let until = Instant::now() + talk;
    let tasks: Vec<_> = talkers
        .into_iter()
        .map(|mut line| {
            tokio::spawn(async move {
                let mut round_trips = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while Instant::now() < until {
                    tick.tick().await;
                    let asked = Instant::now();
                    if line.exchange().await.is_err() {
                        eprintln!("an active agent lost its connection");
                        std::process::exit(1);
                    }
                    round_trips.push(asked.elapsed());
                }
                (round_trips, line)
            })
        })
        .collect();
    let mut round_trips = Vec::new();
    for task in tasks {
        let (mut times, line) = task.await.expect("task");
        round_trips.append(&mut times);
        lines.push(line);
    }
    round_trips.sort_unstable();
    // With no active agent there is no round trip to report: zeros.
    let percentile = |p: f64| {
        let last = round_trips.len().saturating_sub(1);
        round_trips
            .get((last as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "held p50_us={} p99_us={}",
        percentile(0.5).as_micros(),
        percentile(0.99).as_micros()
    );
    std::future::pending::<()>().await;
}
