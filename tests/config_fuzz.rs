//! The configuration parser never panics, whatever it is given: random
//! bytes, and valid files cut, spliced and mutated at random. Every input
//! ends as a plan or as errors that name a place.

use proptest::prelude::*;

const SEEDS: [&str; 3] = [
    include_str!("../config/vipgate.toml"),
    include_str!("../config/demo.toml"),
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
