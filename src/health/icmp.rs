//! ICMP echo for `type = "icmp"` monitors, IPv4 and IPv6.
//!
//! Linux offers two ways to ping without a helper binary. An unprivileged
//! ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`) is allowed when the process's
//! group is in `net.ipv4.ping_group_range` (it covers IPv6 too); the kernel
//! then picks the echo identifier and hands this socket only its own
//! replies. Otherwise a raw socket works with CAP_NET_RAW; it sees every
//! ICMP packet, so replies are matched by identifier, sequence and payload.
//! Which one this process can use is found once, when the configuration is
//! loaded, so `vipgate check` and `run` can say what to change instead of
//! marking every member down.
//!
//! Each attempt uses a socket connected to the target, so the kernel drops
//! packets from anybody else; the caller bounds the time.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

/// The kind of ICMP socket this process may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// An unprivileged ping socket.
    Datagram,
    /// A raw socket (CAP_NET_RAW).
    Raw,
}

/// Neither kind of ICMP socket can be opened.
#[derive(Debug, thiserror::Error)]
#[error("this process cannot send ICMP echo requests over {family}: a ping socket is refused ({datagram}; net.ipv4.ping_group_range is \"{range}\" and the process's group is {group}) and so is a raw socket ({raw}); allow ping sockets for the group (sysctl -w net.ipv4.ping_group_range=\"{group} {group}\") or give vipgate CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW)")]
pub struct Unavailable {
    family: &'static str,
    datagram: io::Error,
    raw: io::Error,
    range: String,
    group: u32,
}

/// Finds which socket kind works for the family of `ip`.
pub fn socket_kind(ip: IpAddr) -> Result<SocketKind, Unavailable> {
    let datagram = match open(ip, SocketKind::Datagram) {
        Ok(_) => return Ok(SocketKind::Datagram),
        Err(error) => error,
    };
    let raw = match open(ip, SocketKind::Raw) {
        Ok(_) => return Ok(SocketKind::Raw),
        Err(error) => error,
    };
    Err(Unavailable {
        family: if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        datagram,
        raw,
        range: std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
            .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into()),
        // SAFETY: getegid(2) cannot fail and touches no memory.
        group: unsafe { libc::getegid() },
    })
}

fn open(ip: IpAddr, kind: SocketKind) -> io::Result<Socket> {
    let (domain, protocol) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let kind = match kind {
        SocketKind::Datagram => Type::DGRAM,
        SocketKind::Raw => Type::RAW,
    };
    let socket = Socket::new(domain, kind, Some(protocol))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Echo identifiers for raw sockets, which must tell their replies apart
/// (a ping socket's identifier is the kernel's choice).
static IDENTIFIER: AtomicU16 = AtomicU16::new(0);

/// Bytes after the echo header: a marker, so a stray reply that happens to
/// carry our identifier and sequence is not taken for ours.
const PAYLOAD: &[u8; 16] = b"vipgate-monitor!";

/// Most bytes of one received packet read (an IPv4 header of at most 60
/// bytes, the echo header and our payload fit; anything larger is not
/// ours).
const RECEIVE_BUFFER: usize = 256;

/// Sends one echo request to `target` and waits for its reply. `Err`
/// carries a short reason for the log and the status page.
pub async fn ping(kind: SocketKind, target: IpAddr, sequence: u16) -> Result<(), String> {
    let socket = open(target, kind).map_err(|e| format!("cannot open an ICMP socket: {e}"))?;
    socket
        .connect(&SockAddr::from(SocketAddr::new(target, 0)))
        .map_err(|e| describe(&e))?;
    let identifier = IDENTIFIER.fetch_add(1, Ordering::Relaxed);
    let request = echo_request(target.is_ipv4(), identifier, sequence);
    // SAFETY: the `Socket` owns its descriptor, which stays open until the
    // `AsyncFd` (which owns the `Socket`) is dropped.
    let socket =
        unsafe { AsyncFd::register(socket) }.map_err(|error| describe(&error.into_parts().1))?;
    loop {
        let mut guard = socket.writable().await.map_err(|e| describe(&e))?;
        match guard.try_io(|inner| inner.get_ref().send(&request)) {
            Ok(result) => {
                result.map_err(|e| describe(&e))?;
                break;
            }
            Err(_would_block) => continue,
        }
    }
    let mut buffer = [0u8; RECEIVE_BUFFER];
    loop {
        let mut guard = socket.readable().await.map_err(|e| describe(&e))?;
        let read = match guard.try_io(|inner| (&mut inner.get_ref()).read(&mut buffer)) {
            Ok(result) => result.map_err(|e| describe(&e))?,
            Err(_would_block) => continue,
        };
        let packet = &buffer[..read];
        // Only raw IPv4 sockets hand over the IP header.
        let message = if kind == SocketKind::Raw && target.is_ipv4() {
            strip_ipv4_header(packet)
        } else {
            Some(packet)
        };
        let check_identifier = (kind == SocketKind::Raw).then_some(identifier);
        if message.is_some_and(|m| is_reply(m, target.is_ipv4(), check_identifier, sequence)) {
            return Ok(());
        }
    }
}

/// An echo request: type, code, checksum, identifier, sequence, payload.
/// The checksum is filled in for ICMPv4 (a raw socket sends it as is; a
/// ping socket recomputes it); the kernel always computes ICMPv6's.
fn echo_request(ipv4: bool, identifier: u16, sequence: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(8 + PAYLOAD.len());
    packet.push(if ipv4 { 8 } else { 128 });
    packet.push(0);
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&identifier.to_be_bytes());
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if ipv4 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ICMP message inside an IPv4 packet.
fn strip_ipv4_header(packet: &[u8]) -> Option<&[u8]> {
    let header_length = usize::from(packet.first()? & 0x0f) * 4;
    packet.get(header_length..)
}

/// Whether `message` is the echo reply to our request.
fn is_reply(message: &[u8], ipv4: bool, identifier: Option<u16>, sequence: u16) -> bool {
    let reply_type = if ipv4 { 0 } else { 129 };
    message.len() >= 8 + PAYLOAD.len()
        && message[0] == reply_type
        && message[1] == 0
        && identifier.is_none_or(|id| message[4..6] == id.to_be_bytes())
        && message[6..8] == sequence.to_be_bytes()
        && &message[8..8 + PAYLOAD.len()] == PAYLOAD
}

fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EHOSTUNREACH) => "host unreachable".into(),
        Some(libc::ENETUNREACH) => "network unreachable".into(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_a_valid_checksum_and_replies_are_matched() {
        let request = echo_request(true, 0x1234, 7);
        assert_eq!(request[0], 8);
        assert_eq!(
            checksum(&request),
            0,
            "a packet with its checksum sums to zero"
        );
        let mut reply = request.clone();
        reply[0] = 0;
        assert!(is_reply(&reply, true, Some(0x1234), 7));
        assert!(
            is_reply(&reply, true, None, 7),
            "ping sockets: the kernel's id"
        );
        assert!(!is_reply(&reply, true, Some(0x1235), 7));
        assert!(!is_reply(&reply, true, Some(0x1234), 8));
        assert!(
            !is_reply(&request, true, Some(0x1234), 7),
            "our own request"
        );
        assert!(!is_reply(&reply[..10], true, None, 7));
        let mut v6 = echo_request(false, 1, 2);
        assert_eq!(v6[0], 128);
        v6[0] = 129;
        assert!(is_reply(&v6, false, Some(1), 2));
    }

    #[test]
    fn ipv4_headers_are_skipped_by_their_length() {
        let mut packet = vec![0x45u8];
        packet.extend_from_slice(&[0; 19]);
        packet.extend_from_slice(&[0, 0, 1, 2]);
        assert_eq!(strip_ipv4_header(&packet), Some(&[0u8, 0, 1, 2][..]));
        assert_eq!(strip_ipv4_header(&[0x4f]), None);
        assert_eq!(strip_ipv4_header(&[]), None);
    }
}
