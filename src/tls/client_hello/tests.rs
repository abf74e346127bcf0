//! The parser against real ClientHellos made by rustls, cut and re-framed.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

/// The bytes a rustls client sends first, asking for `name`.
fn real_hello(name: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut bytes = Vec::new();
    client.write_tls(&mut bytes).unwrap();
    bytes
}

#[test]
fn finds_the_server_name_of_a_real_hello() {
    let hello = real_hello("CSP-A.example");
    assert_eq!(
        inspect(&hello),
        Ok(Hello::Complete {
            server_name: Some("csp-a.example".into())
        })
    );
}

#[test]
fn an_ip_address_hello_has_no_server_name() {
    assert_eq!(
        inspect(&real_hello("127.0.0.1")),
        Ok(Hello::Complete { server_name: None })
    );
}

#[test]
fn every_prefix_asks_for_more() {
    let hello = real_hello("csp-a.example");
    for cut in 0..hello.len() {
        assert_eq!(
            inspect(&hello[..cut]),
            Ok(Hello::Incomplete),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_hello_split_over_two_records_is_reassembled() {
    let hello = real_hello("csp-b.example");
    let message = &hello[5..];
    let (first, second) = message.split_at(40);
    let mut framed = Vec::new();
    for part in [first, second] {
        framed.extend_from_slice(&[22, 3, 1]);
        framed.extend_from_slice(&(part.len() as u16).to_be_bytes());
        framed.extend_from_slice(part);
    }
    assert_eq!(
        inspect(&framed),
        Ok(Hello::Complete {
            server_name: Some("csp-b.example".into())
        })
    );
    assert_eq!(inspect(&framed[..50]), Ok(Hello::Incomplete));
}

#[test]
fn other_protocols_are_not_tls() {
    assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
    assert_eq!(inspect(b"hello\n"), Err(HelloError::NotTls));
    assert_eq!(inspect(&[22, 2]), Err(HelloError::NotTls));
    assert_eq!(inspect(&[22]), Ok(Hello::Incomplete));
}

#[test]
fn malformed_and_oversized_hellos_are_refused() {
    let mut hello = real_hello("csp-a.example");
    // A record whose handshake is not a ClientHello.
    let mut server_hello = hello.clone();
    server_hello[5] = 2;
    assert!(matches!(
        inspect(&server_hello),
        Err(HelloError::Malformed(_))
    ));
    // A session id longer than the message.
    hello[5 + 4 + 34] = 255;
    assert!(matches!(inspect(&hello), Err(HelloError::Malformed(_))));
    // A record announcing more than TLS allows.
    assert!(matches!(
        inspect(&[22, 3, 1, 0xff, 0xff]),
        Err(HelloError::Malformed(_))
    ));
    // A handshake message announcing more than MAX_HELLO.
    let huge = [22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff];
    assert_eq!(inspect(&huge), Err(HelloError::TooLarge));
    assert_eq!(inspect(&vec![22; MAX_HELLO + 1]), Err(HelloError::TooLarge));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn client_hello_parser_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = inspect(&bytes);
        // Random bytes behind a plausible record header reach the deeper
        // parsing.
        let mut framed = vec![22, 3, 1, (bytes.len() >> 8) as u8, bytes.len() as u8];
        framed.extend_from_slice(&bytes);
        let _ = inspect(&framed);
    }

    #[test]
    fn client_hello_parser_never_panics_on_mutated_hellos(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut hello = real_hello("csp.example");
        for (at, value) in flips {
            let index = at.index(hello.len());
            hello[index] = value;
        }
        let end = cut.index(hello.len() + 1);
        let _ = inspect(&hello[..end]);
    }
}
