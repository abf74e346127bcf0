//! The public parsers never panic, whatever they are given. The
//! configuration parser: random text, and valid files cut, spliced and
//! mutated at random; every input ends as a plan or as errors that name a
//! place. The F5 importer: its fixtures mutated, and random bytes. (The
//! ClientHello and persistence parsers have theirs beside them.)

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
