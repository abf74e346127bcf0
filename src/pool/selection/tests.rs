//! The algorithms on their own, over a plain table of members.

use super::*;

/// A pool as plain data.
struct Table {
    eligible: Vec<bool>,
    active: Vec<usize>,
    ratio: Vec<u32>,
    ramp: Vec<f64>,
}

impl Table {
    fn even(members: usize) -> Table {
        Table {
            eligible: vec![true; members],
            active: vec![0; members],
            ratio: vec![1; members],
            ramp: vec![1.0; members],
        }
    }
}

impl PoolView for Table {
    fn member_count(&self) -> usize {
        self.eligible.len()
    }
    fn eligible(&self, index: usize) -> bool {
        self.eligible[index]
    }
    fn active(&self, index: usize) -> usize {
        self.active[index]
    }
    fn ratio(&self, index: usize) -> u32 {
        self.ratio[index]
    }
    fn ramp(&self, index: usize) -> f64 {
        self.ramp[index]
    }
}

fn picks(selection: &dyn Selection, table: &Table, rounds: usize) -> Vec<usize> {
    (0..rounds)
        .map(|_| selection.select(table).expect("a member"))
        .collect()
}

fn shares(picks: &[usize], members: usize) -> Vec<usize> {
    let mut counts = vec![0; members];
    for &pick in picks {
        counts[pick] += 1;
    }
    counts
}

#[test]
fn round_robin_visits_members_in_order() {
    let rr = RoundRobin::new(3);
    assert_eq!(picks(&rr, &Table::even(3), 7), vec![0, 1, 2, 0, 1, 2, 0]);
}

#[test]
fn round_robin_skips_ineligible_without_doubling_the_next() {
    let rr = RoundRobin::new(4);
    let mut table = Table::even(4);
    table.eligible[1] = false;
    assert_eq!(picks(&rr, &table, 6), vec![0, 2, 3, 0, 2, 3]);
}

#[test]
fn nothing_eligible_is_none_for_every_algorithm() {
    let mut table = Table::even(2);
    table.eligible = vec![false, false];
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Ratio,
        Algorithm::LeastConnections,
    ] {
        assert_eq!(
            selector(algorithm, &[1, 1]).select(&table),
            None,
            "{algorithm}"
        );
        assert_eq!(
            selector(algorithm, &[]).select(&Table::even(0)),
            None,
            "{algorithm}"
        );
    }
}

#[test]
fn round_robin_is_even_across_threads() {
    let rr = std::sync::Arc::new(RoundRobin::new(4));
    let counts: Vec<Vec<usize>> = (0..4)
        .map(|_| {
            let rr = rr.clone();
            std::thread::spawn(move || shares(&picks(rr.as_ref(), &Table::even(4), 10_000), 4))
        })
        .map(|thread| thread.join().unwrap())
        .collect();
    for member in 0..4 {
        let total: usize = counts.iter().map(|c| c[member]).sum();
        assert_eq!(total, 10_000, "member {member}");
    }
}

#[test]
fn ratio_shares_follow_the_ratios_and_are_interleaved() {
    assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(
        smooth_schedule(&[4, 2]),
        vec![0, 1, 0],
        "ratios reduced by their gcd"
    );
    let ratio = Ratio::new(&[3, 2, 1]);
    let table = Table::even(3);
    assert_eq!(shares(&picks(&ratio, &table, 600), 3), vec![300, 200, 100]);
}

#[test]
fn ratio_skips_a_down_member_and_keeps_the_others_proportions() {
    let ratio = Ratio::new(&[2, 1, 1]);
    let mut table = Table::even(3);
    table.eligible[1] = false;
    assert_eq!(shares(&picks(&ratio, &table, 300), 3), vec![200, 0, 100]);
}

#[test]
fn least_connections_fills_the_emptiest_member_per_ratio() {
    let lc = LeastConnections::default();
    let mut table = Table::even(3);
    table.active = vec![10, 2, 5];
    assert_eq!(lc.select(&table), Some(1));
    table.ratio = vec![1, 1, 4];
    // (5 + 1) / 4 = 1.5 beats (2 + 1) / 1 = 3.
    assert_eq!(lc.select(&table), Some(2));
    table.eligible[2] = false;
    assert_eq!(lc.select(&table), Some(1));
}

#[test]
fn least_connections_evens_out_a_pool_after_recovery() {
    // Member 2 comes back empty while the others hold 100 each: new
    // connections go to it until it has caught up, then alternate.
    let lc = LeastConnections::default();
    let mut table = Table::even(3);
    table.active = vec![100, 100, 0];
    for _ in 0..100 {
        let pick = lc.select(&table).unwrap();
        table.active[pick] += 1;
    }
    assert_eq!(table.active, vec![100, 100, 100]);
    for _ in 0..30 {
        let pick = lc.select(&table).unwrap();
        table.active[pick] += 1;
    }
    assert_eq!(table.active, vec![110, 110, 110]);
}

#[test]
fn slow_ramp_shares_grow_with_the_ramp() {
    for algorithm in [Algorithm::RoundRobin, Algorithm::Ratio] {
        let selection = selector(algorithm, &[1, 1]);
        let mut table = Table::even(2);
        table.ramp[1] = 0.25;
        let counts = shares(&picks(selection.as_ref(), &table, 4000), 2);
        // Member 1 gets about a quarter of its turns: 500 of 4000.
        assert!((400..=600).contains(&counts[1]), "{algorithm}: {counts:?}");
        table.ramp[1] = 1.0;
        let counts = shares(&picks(selection.as_ref(), &table, 4000), 2);
        assert_eq!(counts, vec![2000, 2000], "{algorithm}");
    }
}

#[test]
fn slow_ramp_holds_back_least_connections_too() {
    let lc = LeastConnections::default();
    let mut table = Table::even(2);
    table.active = vec![50, 0];
    table.ramp[1] = 0.1;
    // (0 + 1) / 0.1 = 10 < 51: the recovering member still gets some...
    assert_eq!(lc.select(&table), Some(1));
    table.active[1] = 5;
    // ...but (5 + 1) / 0.1 = 60 > 51: not the whole wave.
    assert_eq!(lc.select(&table), Some(0));
}

#[test]
fn a_ramping_members_refused_turns_are_spread_over_the_others() {
    for algorithm in [Algorithm::RoundRobin, Algorithm::Ratio] {
        let selection = selector(algorithm, &[1, 1, 1]);
        let mut table = Table::even(3);
        // Just back up: the first member refuses every turn.
        table.ramp[0] = 0.0;
        let counts = shares(&picks(selection.as_ref(), &table, 3000), 3);
        assert_eq!(counts[0], 0, "{algorithm}: {counts:?}");
        // Its 1,000 turns go half to each other member, not all to the next:
        // 1,500 each (within the hash's spread), not 2,000 / 1,000.
        assert!(
            counts[1..].iter().all(|&n| (1400..=1600).contains(&n)),
            "{algorithm}: {counts:?}"
        );
    }
}

#[test]
fn ramping_members_are_used_when_nothing_else_is_eligible() {
    let rr = RoundRobin::new(2);
    let mut table = Table::even(2);
    table.ramp = vec![0.0, 0.0];
    assert!(rr.select(&table).is_some());
}

#[test]
fn tried_set_small_and_large_indexes() {
    let mut tried = Tried::default();
    for index in [0, 5, 127, 128, 1000] {
        assert!(!tried.contains(index));
        tried.insert(index);
        assert!(tried.contains(index));
    }
    assert!(!tried.contains(6));
    assert!(!tried.contains(129));
}

fn client(n: u32) -> u64 {
    address_hash(std::net::Ipv4Addr::from(0x0A00_0000 + n).into(), 0)
}

#[test]
fn rendezvous_spreads_clients_by_ratio() {
    let mut table = Table::even(3);
    table.ratio = vec![1, 1, 2];
    let picks: Vec<usize> = (0..40_000)
        .map(|n| rendezvous(&table, client(n)).unwrap())
        .collect();
    let counts = shares(&picks, 3);
    for (member, expected) in [(0, 10_000.0), (1, 10_000.0), (2, 20_000.0)] {
        let off = (counts[member] as f64 - expected).abs() / expected;
        assert!(off < 0.05, "member {member}: {counts:?}");
    }
}

#[test]
fn rendezvous_moves_only_the_clients_of_a_member_that_leaves() {
    let mut table = Table::even(4);
    let before: Vec<usize> = (0..10_000)
        .map(|n| rendezvous(&table, client(n)).unwrap())
        .collect();
    table.eligible[2] = false;
    let mut moved = 0;
    for (n, &was) in before.iter().enumerate() {
        let now = rendezvous(&table, client(n as u32)).unwrap();
        if was == 2 {
            moved += 1;
            assert_ne!(now, 2);
        } else {
            assert_eq!(now, was, "client {n} moved though its member stayed");
        }
    }
    assert!((2_000..3_000).contains(&moved), "{moved}");
    // And it comes back to the same choice when the member returns.
    table.eligible[2] = true;
    for (n, &was) in before.iter().enumerate() {
        assert_eq!(rendezvous(&table, client(n as u32)), Some(was));
    }
    table.eligible = vec![false; 4];
    assert_eq!(rendezvous(&table, client(1)), None);
}

#[test]
fn address_hashes_differ_by_port_and_family() {
    let v4: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    let v6: std::net::IpAddr = "::a00:1".parse().unwrap();
    assert_ne!(address_hash(v4, 80), address_hash(v4, 81));
    assert_ne!(address_hash(v4, 80), address_hash(v6, 80));
    // The same in every process: a fixed value.
    assert_eq!(
        address_hash(v4, 80),
        address_hash("10.0.0.1".parse().unwrap(), 80)
    );
}
