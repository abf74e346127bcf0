//! Member selection over real loopback sockets: round-robin spread,
//! reselect past refusing and silent members, connection limits.

mod common;

use common::*;
use std::collections::BTreeMap;

async fn count_tags(addr: std::net::SocketAddr, clients: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..clients {
        let tag = tag_of_answer(addr).await.expect("served");
        *counts.entry(tag).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_spreads_clients_exactly_evenly() {
    let members = [
        tagged_member("127.0.0.11", "m11").await,
        tagged_member("127.0.0.12", "m12").await,
        tagged_member("127.0.0.13", "m13").await,
    ];
    let vipgate = start(&config(&members, "")).await;
    let counts = count_tags(vipgate.addr("vs"), 30).await;
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even_with_concurrent_clients() {
    let members = [
        tagged_member("127.0.0.11", "m11").await,
        tagged_member("127.0.0.12", "m12").await,
    ];
    let vipgate = start(&config(&members, "")).await;
    let addr = vipgate.addr("vs");
    let clients: Vec<_> = (0..200)
        .map(|_| tokio::spawn(tag_of_answer(addr)))
        .collect();
    let mut counts = BTreeMap::new();
    for client in clients {
        *counts
            .entry(client.await.unwrap().expect("served"))
            .or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100],
        "{counts:?}"
    );
    for member in members {
        assert_eq!(vipgate.member(member).total_connections(), 100);
    }
}

#[tokio::test]
async fn refusing_member_is_skipped_and_counted() {
    let refusing = refusing_address("127.0.0.12").await;
    let members = [
        tagged_member("127.0.0.11", "m11").await,
        refusing,
        tagged_member("127.0.0.13", "m13").await,
    ];
    let vipgate = start(&config(&members, "")).await;
    let counts = count_tags(vipgate.addr("vs"), 20).await;
    assert_eq!(
        counts,
        BTreeMap::from([("m11".to_string(), 10), ("m13".to_string(), 10)])
    );
    assert_eq!(vipgate.member(refusing).connect_failures(), 10);
    assert_eq!(vipgate.virtual_stats("vs").counts().rejected.no_member, 0);
}

#[tokio::test]
async fn member_that_does_not_answer_is_reselected_after_connect_timeout() {
    let (_listener, _fillers, silent) = silent_address("127.0.0.12").await;
    let good = tagged_member("127.0.0.11", "m11").await;
    let vipgate = start(&config(&[silent, good], "connect_timeout = \"200ms\"")).await;
    for _ in 0..3 {
        assert_eq!(
            tag_of_answer(vipgate.addr("vs")).await.as_deref(),
            Some("m11")
        );
    }
    assert!(vipgate.member(silent).connect_failures() >= 1);
}

#[tokio::test]
async fn client_is_closed_and_counted_when_no_member_answers() {
    let members = [
        refusing_address("127.0.0.11").await,
        refusing_address("127.0.0.12").await,
    ];
    let vipgate = start(&config(&members, "")).await;
    // With both members refusing at once on loopback, the reset can reach
    // the client before its own connect is seen to complete.
    assert!(LineClient::is_refused(vipgate.addr("vs"), "hello").await);
    let stats = vipgate.virtual_stats("vs");
    eventually("the rejection is counted", || {
        stats.counts().rejected.no_member == 1
    })
    .await;
    assert_eq!(vipgate.member(members[0]).connect_failures(), 1);
    assert_eq!(vipgate.member(members[1]).connect_failures(), 1);
}

#[tokio::test]
async fn virtual_connection_limit_closes_the_extra_client_at_once() {
    let member = tagged_member("127.0.0.11", "m11").await;
    let vipgate = start(&config(&[member], "connection_limit = 2")).await;
    let addr = vipgate.addr("vs");
    let mut first = LineClient::connect(addr).await;
    let mut second = LineClient::connect(addr).await;
    assert!(first.ask("one").await.is_some());
    assert!(second.ask("two").await.is_some());

    assert!(
        LineClient::is_refused(addr, "three").await,
        "the third client is refused"
    );
    let stats = vipgate.virtual_stats("vs");
    assert_eq!(stats.counts().rejected.connection_limit, 1);

    drop(first);
    eventually("the first connection is gone", || {
        stats.active_connections() == 1
    })
    .await;
    let mut fourth = LineClient::connect(addr).await;
    assert!(
        fourth.ask("four").await.is_some(),
        "room again after a close"
    );
    assert!(second.ask("still here").await.is_some());
}

#[tokio::test]
async fn member_connection_limits_send_clients_elsewhere_then_refuse() {
    let members = [
        tagged_member("127.0.0.11", "m11").await,
        tagged_member("127.0.0.12", "m12").await,
    ];
    let toml = config(&members, "").replace(
        &format!("{{ address = \"{}\" }}", members[0]),
        &format!("{{ address = \"{}\", connection_limit = 1 }}", members[0]),
    );
    let toml = toml.replace(
        &format!("{{ address = \"{}\" }}", members[1]),
        &format!("{{ address = \"{}\", connection_limit = 1 }}", members[1]),
    );
    let vipgate = start(&toml).await;
    let addr = vipgate.addr("vs");
    let mut first = LineClient::connect(addr).await;
    let mut second = LineClient::connect(addr).await;
    let tags = [
        first.ask("a").await.unwrap()[..3].to_string(),
        second.ask("b").await.unwrap()[..3].to_string(),
    ];
    assert_ne!(tags[0], tags[1], "each member took one");
    assert!(LineClient::is_refused(addr, "c").await);
    assert_eq!(vipgate.virtual_stats("vs").counts().rejected.no_member, 1);
}

/// A burst larger than a member's connect rate is paced, not refused: each
/// client waits for a token up to `connect_timeout`, end to end through
/// both workers, three bursts in a row. (The race that refused a few, a
/// client losing a token to another at the moment it was due, is caught
/// reliably by the pool's own test with eight threads.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_connect_rate_waits_for_its_turn_and_nobody_is_refused() {
    let member = tagged_member("127.0.0.11", "m11").await;
    let vipgate = start(&format!(
        "[pools.p]\nmembers = [ {{ address = \"{member}\", connect_rate_limit = 20 }} ]\n\
         [virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\nconnect_timeout = \"5s\"\n"
    ))
    .await;
    let vip = vipgate.addr("vs");
    for burst in 0..3 {
        let started = tokio::time::Instant::now();
        let clients: Vec<_> = (0..60)
            .map(|_| tokio::spawn(async move { tag_of_answer(vip).await }))
            .collect();
        let mut served = 0;
        for client in clients {
            if client.await.unwrap().is_some() {
                served += 1;
            }
        }
        println!(
            "burst {burst}: {served} of 60 served in {:?}",
            started.elapsed()
        );
        assert_eq!(served, 60, "burst {burst}");
        // The bucket fills again before the next burst.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    assert_eq!(vipgate.virtual_stats("vs").counts().rejected.no_member, 0);
}
