//! `vipgate demo`: a whole deployment in one process for a first look.
//! Three simulated configuration-server proxies (csp1..csp3 on
//! 127.0.0.11-13, ports 9070 and 9075) answer each line with their own name;
//! vipgate serves them on 127.0.0.1:9070 with `config/demo.toml`.
//!
//! The simulated proxy, [`spawn_tagged_echo`], is also what the integration
//! tests put behind vipgate.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{self, ConfigError, Plan};
use crate::instance::LaunchError;

mod web_engagement;
pub use web_engagement::{serve_web_engagement, spawn_web_engagement, websocket_accept};

/// The configuration the demo runs.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// Longest line a simulated proxy answers; a longer one closes the
/// connection, so a client cannot make it buffer without bound.
const MAX_LINE: u64 = 4096;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "cannot start simulated proxy {tag} on {address}: {error} (is another demo still running?)"
    )]
    Member {
        tag: String,
        address: SocketAddr,
        /// Shown in the message; not chained, so it is not printed twice.
        error: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    #[error(transparent)]
    Start(#[from] LaunchError),
}

/// Starts a simulated proxy on `address` that answers each line `L` with
/// `"{tag} L"`. Returns the address it listens on (useful with port 0).
pub async fn spawn_tagged_echo(address: SocketAddr, tag: String) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve_tagged_echo(listener, tag));
    Ok(local)
}

/// Serves the simulated proxy on `listener` until dropped.
pub async fn serve_tagged_echo(listener: TcpListener, tag: String) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer_lines(stream, tag.clone()));
            }
            // Out of descriptors or the like: wait rather than spin.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn answer_lines(stream: TcpStream, tag: String) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut lines).take(MAX_LINE).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') => return,
            Ok(_) => {}
        }
        let reply = format!("{tag} {line}");
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Starts the simulated proxies; returns the plan vipgate serves them
/// with and the introduction to print once it listens.
pub async fn start() -> Result<(Plan, String), DemoError> {
    let plan = config::parse(DEMO_CONFIG, "config/demo.toml")?;
    let pool = &plan.pools["poolCSP01"];
    for member in &pool.members {
        let host = match member.address.ip() {
            std::net::IpAddr::V4(ip) => ip.octets()[3] - 10,
            std::net::IpAddr::V6(_) => 0,
        };
        let tag = format!("csp{host}:{}", member.address.port());
        spawn_tagged_echo(member.address, tag.clone())
            .await
            .map_err(|error| DemoError::Member {
                tag,
                address: member.address,
                error,
            })?;
    }
    let virtual_plan = &plan.virtuals[0];
    let listen = virtual_plan.listen;
    let members: Vec<String> = pool.members.iter().map(|m| m.address.to_string()).collect();
    let introduction = format!(
        "vipgate demo: virtual {name} on {listen}, round-robin over {count} members\n  \
         {members}\n\n\
         Try, in another terminal:\n  \
         nc {ip} {port}                      type a line; the proxy that answers names itself\n  \
         for i in 1 2 3 4 5 6; do echo hello | nc -q1 {ip} {port}; done    each connection goes to the next member\n  \
         curl -s 127.0.0.1:9100/status       members, health, monitors as JSON (metrics: /metrics)\n  \
         curl -s -X POST 127.0.0.1:9100/pools/poolCSP01/members/127.0.0.12:9070/offline    take a member out\n\n\
         Connection logs follow below. Ctrl-C stops the demo.",
        name = virtual_plan.name,
        count = members.len(),
        members = members.join(", "),
        ip = listen.ip(),
        port = listen.port(),
    );
    Ok((plan, introduction))
}
