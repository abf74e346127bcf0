//! Source address translation over loopback: members see the SNAT
//! addresses, ports are accounted per (address, member), exhaustion closes
//! and counts, PROXY protocol headers arrive exact.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A member that answers each connection with the address it sees the
/// connection coming from, then keeps it open until the client closes.
async fn source_reporting_member(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(format!("{peer}\n").as_bytes()).await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

/// Connects through vipgate and returns the connection and the source the
/// member saw, or `None` if vipgate closed the connection (its reset can
/// arrive before the connect completes).
async fn connect_and_read_source(vipgate: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
    let stream = match TcpStream::connect(vipgate).await {
        Ok(stream) => stream,
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(error) => panic!("connect: {error}"),
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    match tokio::time::timeout(PATIENCE, reader.read_line(&mut line))
        .await
        .unwrap()
    {
        Ok(n) if n > 0 => Some((reader.into_inner(), line.trim().parse().unwrap())),
        _ => None,
    }
}

fn snat_config(members: &[SocketAddr], addresses: &[&str], ports: &str, extra: &str) -> String {
    let addresses: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[snat_pools.s]\naddresses = [{}]\nports = \"{ports}\"\n{}",
        addresses.join(", "),
        config(members, &format!("snat = \"s\"\n{extra}"))
    )
}

#[tokio::test]
async fn members_see_the_snat_addresses_and_load_is_spread_over_them() {
    let member = source_reporting_member("127.0.0.11").await;
    let vipgate = start(&snat_config(
        &[member],
        &["127.0.0.21", "127.0.0.22"],
        "61000-61999",
        "",
    ))
    .await;
    let first: IpAddr = "127.0.0.21".parse().unwrap();
    let second: IpAddr = "127.0.0.22".parse().unwrap();

    // All held: each lease goes to the address with more free ports (ties
    // take turns), so twenty split evenly whatever the timing.
    let mut held = Vec::new();
    let mut by_address: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for _ in 0..20 {
        let (stream, source) = connect_and_read_source(vipgate.addr("vs")).await.unwrap();
        assert!((61000..=61999).contains(&source.port()), "{source}");
        *by_address.entry(source.ip()).or_insert(0) += 1;
        held.push((stream, source));
    }
    assert_eq!(by_address, [(first, 10), (second, 10)].into());

    // Free the ports on the first address only: the next ten all go there,
    // where plain turn-taking would send half of them to the second.
    held.retain(|(_, source)| source.ip() != first);
    let snapshot = vipgate.snapshot();
    let pool = snapshot.snat_pools().next().unwrap();
    let on_first = pool
        .addresses()
        .iter()
        .find(|a| a.address == first)
        .unwrap();
    let (_, ports_on_first) = on_first.usage().next().unwrap();
    eventually("the first address's ports are free again", || {
        ports_on_first.in_use() == 0
    })
    .await;
    for _ in 0..10 {
        let (stream, source) = connect_and_read_source(vipgate.addr("vs")).await.unwrap();
        assert_eq!(source.ip(), first, "the address with the most free ports");
        held.push((stream, source));
    }
}

#[tokio::test]
async fn automap_uses_the_local_address_facing_the_member() {
    let member = source_reporting_member("127.0.0.12").await;
    let vipgate = start(&config(&[member], "snat = \"automap\"")).await;
    let (_stream, source) = connect_and_read_source(vipgate.addr("vs")).await.unwrap();
    // On Linux the loopback route toward 127.0.0.12 has source 127.0.0.1.
    assert_eq!(source.ip().to_string(), "127.0.0.1");
}

async fn fill(vipgate: &Vipgate, count: usize) -> Vec<(TcpStream, SocketAddr)> {
    let mut held = Vec::new();
    for index in 0..count {
        let connection = connect_and_read_source(vipgate.addr("vs"))
            .await
            .unwrap_or_else(|| panic!("connection {index} of {count} was refused"));
        held.push(connection);
    }
    held
}

#[tokio::test]
async fn exhausted_ports_close_the_client_and_count_until_ports_free_up() {
    let member = source_reporting_member("127.0.0.11").await;
    let vipgate = start(&snat_config(&[member], &["127.0.0.21"], "61100-61115", "")).await;
    let mut held = fill(&vipgate, 16).await;
    let mut ports: Vec<u16> = held.iter().map(|(_, s)| s.port()).collect();
    ports.sort();
    assert_eq!(ports, (61100..=61115).collect::<Vec<_>>());

    assert!(
        connect_and_read_source(vipgate.addr("vs")).await.is_none(),
        "the 17th is closed"
    );
    let stats = vipgate.virtual_stats("vs");
    assert_eq!(stats.counts().rejected.snat_exhausted, 1);
    let snapshot = vipgate.snapshot();
    let pool = snapshot.snat_pools().next().unwrap();
    assert_eq!(pool.addresses()[0].exhausted(), 1);
    let (_, ports_in_use) = pool.addresses()[0].usage().next().unwrap();
    assert_eq!((ports_in_use.in_use(), ports_in_use.free()), (16, 0));

    held.truncate(14);
    eventually("two ports are free again", || ports_in_use.free() == 2).await;
    fill(&vipgate, 2).await;
}

#[tokio::test]
async fn a_second_member_doubles_the_capacity() {
    let members = [
        source_reporting_member("127.0.0.11").await,
        source_reporting_member("127.0.0.12").await,
    ];
    let vipgate = start(&snat_config(&members, &["127.0.0.21"], "61200-61215", "")).await;
    let _held = fill(&vipgate, 32).await;
    assert!(
        connect_and_read_source(vipgate.addr("vs")).await.is_none(),
        "the 33rd is closed"
    );
    assert_eq!(
        vipgate.virtual_stats("vs").counts().rejected.snat_exhausted,
        1
    );
}

#[tokio::test]
async fn ports_are_reused_after_close_without_failures() {
    let member = tagged_member("127.0.0.11", "m").await;
    let vipgate = start(&snat_config(&[member], &["127.0.0.21"], "61300-61303", "")).await;
    for round in 0..40 {
        assert_eq!(
            tag_of_answer(vipgate.addr("vs")).await.as_deref(),
            Some("m"),
            "round {round}"
        );
    }
    let stats = vipgate.virtual_stats("vs");
    assert_eq!(
        stats.counts().rejected.snat_exhausted + stats.counts().rejected.no_member,
        0
    );
}

/// The first 12 bytes of a v2 PROXY header, from the specification (not
/// from vipgate, so the test checks vipgate against the spec).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A member that reads a PROXY protocol header (v1 or v2), answers with
/// what it understood as "SOURCE DESTINATION", then echoes.
async fn proxy_protocol_member(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 12];
                stream.read_exact(&mut first).await.unwrap();
                let parsed = if first == V2_SIGNATURE {
                    let mut head = [0u8; 4];
                    stream.read_exact(&mut head).await.unwrap();
                    assert_eq!(&head[..2], &[0x21, 0x11], "v2 PROXY over TCP/IPv4");
                    let mut body = vec![0u8; u16::from_be_bytes([head[2], head[3]]) as usize];
                    stream.read_exact(&mut body).await.unwrap();
                    let ip = |b: &[u8]| IpAddr::from([b[0], b[1], b[2], b[3]]);
                    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
                    format!(
                        "{} {}",
                        SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                        SocketAddr::new(ip(&body[4..8]), port(&body[10..12]))
                    )
                } else {
                    let mut line = first.to_vec();
                    while !line.ends_with(b"\r\n") {
                        let mut byte = [0u8; 1];
                        stream.read_exact(&mut byte).await.unwrap();
                        line.push(byte[0]);
                    }
                    let text = String::from_utf8(line).unwrap();
                    let parts: Vec<&str> = text.trim_end().split(' ').collect();
                    assert_eq!(&parts[..2], &["PROXY", "TCP4"], "{text}");
                    format!("{}:{} {}:{}", parts[2], parts[4], parts[3], parts[5])
                };
                stream
                    .write_all(format!("{parsed}\n").as_bytes())
                    .await
                    .unwrap();
            });
        }
    });
    addr
}

async fn proxy_protocol_round_trip(version: &str) {
    let member = proxy_protocol_member("127.0.0.13").await;
    let vipgate = start(&snat_config(
        &[member],
        &["127.0.0.21"],
        "61400-61499",
        &format!("proxy_protocol = \"{version}\""),
    ))
    .await;
    let stream = TcpStream::connect(vipgate.addr("vs")).await.unwrap();
    let client = stream.local_addr().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim(), format!("{client} {}", vipgate.addr("vs")));
}

#[tokio::test]
async fn proxy_protocol_v1_header_is_exact() {
    proxy_protocol_round_trip("v1").await;
}

#[tokio::test]
async fn proxy_protocol_v2_header_is_exact() {
    proxy_protocol_round_trip("v2").await;
}
