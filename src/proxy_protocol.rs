//! PROXY protocol headers (HAProxy's, versions 1 and 2): sent to a member
//! before the client's first byte, so a member that understands it learns
//! the client's real address even behind SNAT.

use std::net::SocketAddr;

use crate::config::ProxyProtocol;

/// The 12-byte signature that opens a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header telling that `client` connected to `destination` (the VIP),
/// or nothing when the protocol is off. At most 108 bytes (v1) or 52 (v2).
pub fn header(version: ProxyProtocol, client: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    // A client and VIP of different families (a v4-mapped client on a v6
    // listener) are both written as IPv6.
    let (client, destination) = match (client, destination) {
        (SocketAddr::V4(c), SocketAddr::V6(d)) => (
            SocketAddr::new(c.ip().to_ipv6_mapped().into(), c.port()),
            SocketAddr::V6(d),
        ),
        (SocketAddr::V6(c), SocketAddr::V4(d)) => (
            SocketAddr::V6(c),
            SocketAddr::new(d.ip().to_ipv6_mapped().into(), d.port()),
        ),
        pair => pair,
    };
    match version {
        ProxyProtocol::Off => Vec::new(),
        ProxyProtocol::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                destination.ip(),
                client.port(),
                destination.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut header = Vec::with_capacity(52);
            header.extend_from_slice(&V2_SIGNATURE);
            // Version 2, command PROXY.
            header.push(0x21);
            match (client, destination) {
                (SocketAddr::V4(c), SocketAddr::V4(d)) => {
                    header.push(0x11); // TCP over IPv4
                    header.extend_from_slice(&12u16.to_be_bytes());
                    header.extend_from_slice(&c.ip().octets());
                    header.extend_from_slice(&d.ip().octets());
                }
                _ => {
                    let octets = |a: SocketAddr| match a {
                        SocketAddr::V6(a) => a.ip().octets(),
                        SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
                    };
                    header.push(0x21); // TCP over IPv6
                    header.extend_from_slice(&36u16.to_be_bytes());
                    header.extend_from_slice(&octets(client));
                    header.extend_from_slice(&octets(destination));
                }
            }
            header.extend_from_slice(&client.port().to_be_bytes());
            header.extend_from_slice(&destination.port().to_be_bytes());
            header
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_text() {
        let header = header(
            ProxyProtocol::V1,
            "10.1.2.3:52814".parse().unwrap(),
            "127.0.0.100:9070".parse().unwrap(),
        );
        assert_eq!(header, b"PROXY TCP4 10.1.2.3 127.0.0.100 52814 9070\r\n");
        let header6 = super::header(
            ProxyProtocol::V1,
            "[::1]:5".parse().unwrap(),
            "[::2]:6".parse().unwrap(),
        );
        assert_eq!(header6, b"PROXY TCP6 ::1 ::2 5 6\r\n");
    }

    #[test]
    fn version_2_binary() {
        let header = header(
            ProxyProtocol::V2,
            "10.1.2.3:52814".parse().unwrap(),
            "127.0.0.100:9070".parse().unwrap(),
        );
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 1, 2, 3, 127, 0, 0, 100]);
        expected.extend_from_slice(&52814u16.to_be_bytes());
        expected.extend_from_slice(&9070u16.to_be_bytes());
        assert_eq!(header, expected);
        let header6 = super::header(
            ProxyProtocol::V2,
            "[::1]:5".parse().unwrap(),
            "127.0.0.1:6".parse().unwrap(),
        );
        assert_eq!(header6.len(), 16 + 36);
        assert_eq!(&header6[13..16], &[0x21, 0, 36]);
    }

    #[test]
    fn off_is_empty() {
        assert!(header(
            ProxyProtocol::Off,
            "1.2.3.4:1".parse().unwrap(),
            "1.2.3.4:2".parse().unwrap()
        )
        .is_empty());
    }
}
