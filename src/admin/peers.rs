//! The other nodes of a pair (`[admin] peers`): the operator's member
//! decisions are shared with them, so that after a failover the new active
//! node keeps a member under maintenance out, and a node that restarts
//! comes back with what was decided while it was away.
//!
//! State, not messages: each node serves its decisions (`GET /decisions`)
//! and takes another's (`PUT /decisions`, merged by
//! `state_file::Decisions::merge`, the later decision about each member
//! winning). At start a node asks every peer before it reports READY;
//! after each local change it sends all its decisions to every peer, again
//! every [`RETRY`] until that peer takes them. Only the latest set is ever
//! pending, so nothing queues up while a peer is away. Nodes keep their
//! clocks in step (NTP): "later" is by wall clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::server::Control;

/// How long a call to a peer may take, connect to last byte.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a change a peer did not take is sent again.
pub const RETRY: Duration = Duration::from_secs(2);

/// The peers of this node and the token their changes need (the same
/// `token_file` on every node).
#[derive(Debug, Clone)]
pub struct Peers {
    addresses: Vec<SocketAddr>,
    token: Option<Arc<str>>,
}

impl Peers {
    /// The peers of an endpoint listening on `listen`: `configured`, less
    /// this node itself (a peer on this host's own address and the
    /// listener's port), so that every node of a pair can share one
    /// configuration that lists them all.
    pub(super) fn new(
        configured: &[SocketAddr],
        listen: SocketAddr,
        token: Option<Arc<str>>,
    ) -> Option<Peers> {
        let own = local_addresses();
        let addresses: Vec<SocketAddr> = configured
            .iter()
            .filter(|peer| !(peer.port() == listen.port() && own.contains(&peer.ip())))
            .copied()
            .collect();
        (!addresses.is_empty()).then_some(Peers { addresses, token })
    }

    /// The peers this node talks to.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Asks every peer for its decisions and takes the later ones; a peer
    /// that does not answer within [`CALL_TIMEOUT`] is logged and passed
    /// over (it gets ours when it is back).
    pub async fn pull(&self, control: &Control) {
        for peer in &self.addresses {
            match call(*peer, http::Method::GET, "/decisions", None, String::new()).await {
                Ok((200, body)) => match serde_json::from_str(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|decisions| control.merge_decisions(&decisions))
                {
                    Ok(taken) => {
                        tracing::info!(%peer, taken, "member decisions asked of a peer at start")
                    }
                    Err(error) => {
                        tracing::warn!(%peer, %error, "a peer's member decisions are not readable")
                    }
                },
                Ok((status, body)) => {
                    tracing::warn!(%peer, status, body = body.trim(), "a peer refused to give its member decisions")
                }
                Err(error) => {
                    tracing::warn!(%peer, %error, "cannot ask a peer for its member decisions; starting with ours")
                }
            }
        }
    }

    /// Sends this node's decisions to each peer now and after every local
    /// change, until `stop`.
    pub fn spawn_senders(&self, control: Arc<Control>, stop: CancellationToken) {
        for peer in self.addresses.clone() {
            let (control, stop, token) = (Arc::clone(&control), stop.clone(), self.token.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = send_changes(peer, &control, token.as_deref()) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    }
}

/// Sends the decisions to `peer` whenever they changed here, retrying each
/// set until the peer takes it.
async fn send_changes(peer: SocketAddr, control: &Control, token: Option<&str>) {
    let mut changes = control.decision_changes();
    loop {
        // A set that fails is sent again, as it is then (a later change
        // replaces it).
        let mut failures = 0u32;
        loop {
            changes.borrow_and_update();
            let body = serde_json::to_string(&control.decisions_to_share()).unwrap_or_default();
            match call(peer, http::Method::PUT, "/decisions", token, body).await {
                Ok((200, _)) => {
                    if failures > 0 {
                        tracing::info!(%peer, "a peer took our member decisions");
                    }
                    break;
                }
                Ok((status, answer)) => {
                    tracing::warn!(%peer, status, answer = answer.trim(), "a peer refused our member decisions; trying again");
                }
                Err(error) if failures == 0 => {
                    tracing::warn!(%peer, %error, "cannot send our member decisions to a peer; trying again every {RETRY:?}");
                }
                Err(_) => {}
            }
            failures += 1;
            tokio::time::sleep(RETRY).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The addresses of this host's interfaces (where it cannot tell, none:
/// then no peer is taken for this node itself, and one that is would get
/// its own decisions back, which changes nothing).
fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list it allocated, which
    // is read here only while it lives and freed once below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return found;
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet
        // freed; `ifa_addr` is null or points to a sockaddr of the family it
        // names, whose size that family fixes.
        unsafe {
            let address = (*entry).ifa_addr;
            if !address.is_null() {
                match i32::from((*address).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(address as *const libc::sockaddr_in);
                        found.push(std::net::IpAddr::from(
                            u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(address as *const libc::sockaddr_in6);
                        found.push(std::net::IpAddr::from(v6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
    }
    // SAFETY: the list getifaddrs allocated, freed once, not used after.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// One call to a peer's admin endpoint: the status and the body as text.
async fn call(
    peer: SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: String,
) -> Result<(u16, String), String> {
    let (status, body) =
        super::client::call(peer, method, path, token, body.into(), CALL_TIMEOUT).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::{local_addresses, Peers};

    #[test]
    fn a_node_does_not_take_itself_for_a_peer() {
        assert!(local_addresses().contains(&"127.0.0.1".parse().unwrap()));
        let listen = "0.0.0.0:9100".parse().unwrap();
        let listed = [
            "127.0.0.1:9100".parse().unwrap(),
            "127.0.0.1:9101".parse().unwrap(),
            "198.18.99.2:9100".parse().unwrap(),
        ];
        let peers = Peers::new(&listed, listen, None).unwrap();
        assert_eq!(peers.addresses(), &listed[1..]);
        assert!(Peers::new(&listed[..1], listen, None).is_none());
    }
}
