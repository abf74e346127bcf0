//! Per-client guards: one desktop stuck in a reconnect loop, opening
//! connections as fast as it can and keeping them, takes no more than its
//! `client_connection_limit` and `client_rate_limit`, across both worker
//! threads, while a thousand other agents stay connected and newcomers are
//! served.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use vipgate::stats::Rejection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_a_reconnect_loop_takes_only_its_share() {
    raise_file_limit();
    let member = tagged_member("127.0.0.11", "m1").await;
    let vipgate = start(&format!(
        "[settings]\nworker_threads = 2\n{}",
        config(
            &[member],
            "client_connection_limit = 5\nclient_rate_limit = 20"
        )
    ))
    .await;
    let vip = vipgate.addr("vs");
    // A thousand agents, each from its own address.
    let agent_address = |n: u32| IpAddr::V4(Ipv4Addr::from(0x7f01_0000 + n));
    let mut agents = Vec::new();
    for n in 0..1000 {
        let mut agent = LineClient::try_connect_from(agent_address(n), vip)
            .await
            .expect("an agent connects");
        assert!(agent.ask("hello").await.is_some(), "agent {n} served");
        agents.push(agent);
    }

    // The looping desktop: 500 connections a second for two seconds, each
    // kept open if vipgate lets it.
    let looping = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 50));
    let mut kept = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    for attempt in 0..1000u32 {
        let due = started + Duration::from_millis(u64::from(attempt) * 2);
        tokio::time::sleep_until(due.into()).await;
        match LineClient::try_connect_from(looping, vip).await {
            Some(mut client) => match client.ask("again").await {
                Some(_) => kept.push(client),
                None => refused += 1,
            },
            None => refused += 1,
        }
        // Newcomers keep being served meanwhile.
        if attempt % 100 == 0 {
            let newcomer = LineClient::try_connect_from(agent_address(2000 + attempt), vip).await;
            let answered = match newcomer {
                Some(mut newcomer) => newcomer.ask("new").await.is_some(),
                None => false,
            };
            assert!(answered, "a newcomer is served");
        }
    }
    let stats = vipgate.virtual_stats("vs");
    let by_limit = stats.rejected(Rejection::ClientLimit);
    let by_rate = stats.rejected(Rejection::ClientRate);
    println!(
        "a client looping at 500 connections/s for 2 s: {} kept open, {refused} refused ({by_limit} by client_connection_limit, {by_rate} by client_rate_limit); 1,000 agents and every newcomer served",
        kept.len()
    );
    assert_eq!(kept.len(), 5, "the limit holds across both workers");
    assert_eq!(refused, 995);
    assert_eq!(by_limit + by_rate, 995);
    assert_eq!(stats.open_from(looping), 5);
    for (n, agent) in agents.iter_mut().enumerate() {
        assert!(
            agent.ask("still").await.is_some(),
            "agent {n} still connected"
        );
    }
    // Its connections end: the client may come back.
    drop(kept);
    eventually("the looping client's connections are let go", || {
        stats.open_from(looping) == 0
    })
    .await;

    // The loop as desktops really do it: each connection closed, then a new
    // one at once. Now the rate holds it: a second's burst, then 20 a
    // second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rate_before = stats.rejected(Rejection::ClientRate);
    let started = Instant::now();
    let mut served = 0u64;
    for attempt in 0..1000u32 {
        let due = started + Duration::from_millis(u64::from(attempt) * 2);
        tokio::time::sleep_until(due.into()).await;
        if let Some(mut client) = LineClient::try_connect_from(looping, vip).await {
            if client.ask("again").await.is_some() {
                served += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let by_rate = stats.rejected(Rejection::ClientRate) - rate_before;
    println!(
        "a client reconnecting at 500/s for {elapsed:.1} s: {served} served, {by_rate} refused by client_rate_limit (20/s)"
    );
    assert!(served >= 20, "the burst is served: {served}");
    assert!(
        served as f64 <= 20.0 + 20.0 * elapsed + 1.0,
        "{served} served in {elapsed:.1} s"
    );
    assert!(by_rate > 0);
    for (n, agent) in agents.iter_mut().enumerate() {
        assert!(
            agent.ask("last").await.is_some(),
            "agent {n} still connected"
        );
    }
}
