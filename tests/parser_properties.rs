//! The parsers never panic, whatever they are given. The configuration
//! parser: random text, and valid files cut, spliced and mutated at random;
//! every input ends as a plan or as errors that name a place. The
//! ClientHello parser: random bytes, and a real hello mutated at random.

use proptest::prelude::*;

/// The F5 fixtures the importer's property starts from.
const F5_SEEDS: [&str; 9] = [
    include_str!("data/bigip-csp-loopback.conf"),
    include_str!("data/bigip-csp-sample.conf"),
    include_str!("data/bigip-tmsh.conf"),
    include_str!("data/f5/tmsh-v15.conf"),
    include_str!("data/f5/tmsh-one-line.conf"),
    include_str!("data/f5/bigpipe-v9.conf"),
    include_str!("data/f5/bigpipe-v10.conf"),
    include_str!("data/f5/bigpipe-v4.conf"),
    include_str!("data/f5/bigpipe-missing-brace.conf"),
];

const SEEDS: [&str; 4] = [
    include_str!("../config/vipgate.toml"),
    include_str!("../config/demo.toml"),
    include_str!("../config/tls.toml"),
    "[settings]\ndrain_timeout = 0\nworker_threads = -1\n[pools.a]\nmembers = [ { address = \"[::1]:1\", connection_limit = 99999999999 } ]\n[virtuals.b]\nlisten = \"0.0.0.0:0\"\npool = \"a\"\ntcp_keepalive = { probes = 1000 }\n",
];

/// Checks the one property: no panic, and every problem has a key and a
/// message.
fn check(text: &str) {
    match vipgate::config::parse(text, "fuzz") {
        Ok(plan) => {
            // A plan must describe itself without panicking too.
            let _ = plan.to_string();
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            for problem in error.problems() {
                assert!(
                    !problem.key.is_empty() && !problem.message.is_empty(),
                    "{problem:?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        seed in 0..SEEDS.len(),
        cut in any::<prop::sample::Index>(),
        insert in prop::sample::select(vec![
            "", "\n", "=", "\"", "[", "]", "{", "}", ",", "0", "-1", "\"0s\"", "\"1h\"",
            "99999999999999999999", "[virtuals.x]\n", "[pools.x]\n", "members = []\n",
            "listen = \"127.0.0.1:0\"\n", "pool = \"x\"\n", "\u{feff}", "é", "\u{0}",
        ]),
        drop in 0usize..20,
    ) {
        let seed = SEEDS[seed];
        let mut at = cut.index(seed.len() + 1);
        while !seed.is_char_boundary(at) {
            at -= 1;
        }
        let mut end = (at + drop).min(seed.len());
        while !seed.is_char_boundary(end) {
            end += 1;
        }
        let text = format!("{}{insert}{}", &seed[..at], &seed[end..]);
        check(&text);
    }
}

/// A real ClientHello from rustls.
fn real_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("csp.example").unwrap();
    let mut client = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut bytes = Vec::new();
    client.write_tls(&mut bytes).unwrap();
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn client_hello_parser_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = vipgate::tls::client_hello::inspect(&bytes);
        // Random bytes behind a plausible record header reach the deeper
        // parsing.
        let mut framed = vec![22, 3, 1, (bytes.len() >> 8) as u8, bytes.len() as u8];
        framed.extend_from_slice(&bytes);
        let _ = vipgate::tls::client_hello::inspect(&framed);
    }

    #[test]
    fn client_hello_parser_never_panics_on_mutated_hellos(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut hello = real_hello();
        for (at, value) in flips {
            let index = at.index(hello.len());
            hello[index] = value;
        }
        let end = cut.index(hello.len() + 1);
        let _ = vipgate::tls::client_hello::inspect(&hello[..end]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn persistence_parsers_never_panic(text in "\\PC{0,200}", name in "[a-zA-Z]{1,12}") {
        use vipgate::http::persistence::*;
        let _ = url_param_route(&text, &name);
        let _ = cookie_value(&text, &name);
        let _ = cookie_value_any_case(&text, &name);
        let _ = route_of(&text);
        let seal = CookieSeal::new(b"property test secret");
        let _ = seal.open(&text, 1);
    }

    #[test]
    fn sealed_tokens_open_to_their_member_and_mutations_never_do(
        member in "[ -~]{0,40}",
        flip in any::<prop::sample::Index>(),
        replacement in "[0-9a-f.v]",
    ) {
        use vipgate::http::persistence::*;
        let seal = CookieSeal::new(b"property test secret");
        let token = seal.seal(&member, 0);
        prop_assert_eq!(seal.open(&token, 1).map(|t| t.member), Ok(member.clone()));
        let at = flip.index(token.len());
        let mut mutated = token.clone();
        mutated.replace_range(at..at + 1, &replacement);
        if mutated != token {
            prop_assert!(seal.open(&mutated, 1).is_err(), "{} opened", mutated);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The F5 importer never panics, and whatever it converts is a valid
    /// configuration: on arbitrary bytes, arbitrary text in F5's alphabet,
    /// and the fixtures with bytes replaced, inserted or cut.
    #[test]
    fn the_f5_importer_gives_a_valid_configuration_or_an_error(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        text in "[ -~\n\t{}\"#<>:;/\\\\_$]{0,400}",
        edits in prop::collection::vec((any::<prop::sample::Index>(), "[ -~\n{}\"<>:_]{0,3}"), 0..6),
        which in 0usize..F5_SEEDS.len(),
    ) {
        let check = |result: Result<vipgate::f5::Imported, vipgate::f5::ImportError>| {
            match result {
                Ok(imported) => {
                    if let Err(error) = vipgate::config::parse(&imported.toml, "converted") {
                        return Err(format!("{error}\n{}", imported.toml));
                    }
                    let _ = imported.report.to_string();
                }
                // The importer checks its own output: this one is a bug.
                Err(error @ vipgate::f5::ImportError::Invalid { .. }) => {
                    return Err(error.to_string())
                }
                Err(error) => assert!(!error.to_string().is_empty()),
            }
            Ok(())
        };
        prop_assert!(check(vipgate::f5::import_bytes(&bytes, "bytes")).is_ok());
        prop_assert!(check(vipgate::f5::import(&text, "arbitrary")).is_ok());
        let mut mutated: Vec<char> = F5_SEEDS[which].chars().collect();
        for (at, insert) in edits {
            let index = at.index(mutated.len() + 1);
            let end = (index + 2).min(mutated.len());
            mutated.splice(index..end, insert.chars());
        }
        let mutated: String = mutated.into_iter().collect();
        let result = check(vipgate::f5::import(&mutated, "mutated"));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
