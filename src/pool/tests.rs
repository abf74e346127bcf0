//! Which members a pool lets its algorithm choose from.

use super::*;
use crate::config::{AdminState, Algorithm, MemberPlan, MonitorRule};
use crate::stop_signal::StopTokens;

fn member(i: usize) -> MemberPlan {
    MemberPlan {
        address: format!("127.0.0.{}:9070", 11 + i).parse().unwrap(),
        connection_limit: ConnectionLimit::Unlimited,
        monitor: MonitorRule::Always,
        ratio: 1,
        priority: 0,
        admin: AdminState::Enabled,
        connect_rate_limit: RateLimit::Unlimited,
        route: None,
    }
}

fn plan(members: Vec<MemberPlan>) -> PoolPlan {
    PoolPlan {
        name: "p".into(),
        algorithm: Algorithm::RoundRobin,
        members,
        action_on_service_down: ServiceDownAction::None,
        slow_ramp: Duration::ZERO,
        min_active_members: 0,
        tls: crate::config::Reencrypt::Off,
        rebalance: None,
    }
}

fn build(plan: &PoolPlan, registry: &mut MemberRegistry) -> Pool {
    Pool::new(plan, registry, None, &StopTokens::root(), |_| false)
}

fn picks(pool: &Pool, count: usize) -> Vec<SocketAddr> {
    (0..count)
        .map(|_| {
            pool.reserve(&mut Tried::default())
                .unwrap()
                .member()
                .address()
        })
        .collect()
}

#[test]
fn reserve_respects_member_limits_and_releases_on_drop() {
    let mut members = vec![member(0), member(1)];
    for m in &mut members {
        m.connection_limit = ConnectionLimit::At(1);
    }
    let pool = build(&plan(members), &mut MemberRegistry::default());
    let first = pool.reserve(&mut Tried::default()).unwrap();
    let second = pool.reserve(&mut Tried::default()).unwrap();
    assert_ne!(first.member().address(), second.member().address());
    assert!(pool.reserve(&mut Tried::default()).is_none());
    drop(first);
    let third = pool.reserve(&mut Tried::default()).unwrap();
    assert_eq!(third.member().active_connections(), 1);
}

#[test]
fn reserve_skips_tried_members() {
    let pool = build(
        &plan(vec![member(0), member(1), member(2)]),
        &mut MemberRegistry::default(),
    );
    let mut tried = Tried::default();
    let mut seen = Vec::new();
    while let Some(slot) = pool.reserve(&mut tried) {
        seen.push(slot.member().address());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
}

#[test]
fn down_unchecked_and_disabled_members_get_nothing() {
    let pool = build(
        &plan(vec![member(0), member(1), member(2), member(3)]),
        &mut MemberRegistry::default(),
    );
    pool.members()[0].health.set(Health::Down);
    pool.members()[1].health.set(Health::Unchecked);
    pool.members()[2]
        .state
        .set_admin_state(AdminState::ForcedOffline);
    let only = pool.members()[3].state.address();
    assert!(picks(&pool, 5).iter().all(|&a| a == only));
}

#[test]
fn priority_groups_fail_over_to_the_standby_group_and_back() {
    let mut members = vec![member(0), member(1), member(2), member(3)];
    members[0].priority = 10;
    members[1].priority = 10;
    let mut pool_plan = plan(members);
    pool_plan.min_active_members = 2;
    let pool = build(&pool_plan, &mut MemberRegistry::default());
    let preferred = [
        pool.members()[0].state.address(),
        pool.members()[1].state.address(),
    ];
    assert!(picks(&pool, 6).iter().all(|a| preferred.contains(a)));

    // One preferred member down: fewer than 2 usable, the standby group joins.
    pool.members()[0].health.set(Health::Down);
    let spread = picks(&pool, 6);
    assert!(!spread.contains(&preferred[0]));
    assert!(spread.contains(&pool.members()[2].state.address()));
    assert!(spread.contains(&preferred[1]));

    pool.members()[0].health.set(Health::Up);
    assert!(picks(&pool, 6).iter().all(|a| preferred.contains(a)));
}

#[test]
fn connect_rate_limit_sends_the_excess_to_the_next_member() {
    let mut members = vec![member(0), member(1)];
    members[0].connect_rate_limit = RateLimit::PerSecond(3);
    let pool = build(&plan(members), &mut MemberRegistry::default());
    let limited = pool.members()[0].state.address();
    let chosen = picks(&pool, 20);
    let to_limited = chosen.iter().filter(|&&a| a == limited).count();
    assert!(
        (3..=4).contains(&to_limited),
        "{to_limited} of 20 went to the limited member"
    );
}

#[test]
fn registry_keeps_state_of_members_that_stay() {
    let mut first = MemberRegistry::default();
    let pool = build(&plan(vec![member(0), member(1)]), &mut first);
    pool.members()[0].state.record_connected();
    let mut second = MemberRegistry::default();
    let rebuilt = Pool::new(
        &plan(vec![member(0)]),
        &mut second,
        Some(&first),
        &StopTokens::root(),
        |_| true,
    );
    assert_eq!(rebuilt.members()[0].state.total_connections(), 1);
    assert!(Arc::ptr_eq(
        &rebuilt.members()[0].state,
        &pool.members()[0].state
    ));
    assert!(
        Arc::ptr_eq(&rebuilt.members()[0].health, &pool.members()[0].health),
        "a reload keeps the pool member's health"
    );
}

#[test]
fn health_is_per_pool_and_the_rest_per_address() {
    let mut registry = MemberRegistry::default();
    let a = build(&plan(vec![member(0)]), &mut registry);
    let mut other = plan(vec![member(0)]);
    other.name = "q".into();
    let b = Pool::new(&other, &mut registry, None, &StopTokens::root(), |_| false);
    assert!(Arc::ptr_eq(&a.members()[0].state, &b.members()[0].state));
    a.members()[0].health.set(Health::Down);
    assert!(a.reserve(&mut Tried::default()).is_none());
    let slot = b.reserve(&mut Tried::default()).expect("up in pool q");
    assert_eq!(
        a.members()[0].state.active_connections(),
        1,
        "counted once per address"
    );
    drop(slot);
    b.members()[0].state.set_admin_state(AdminState::Disabled);
    assert!(
        b.reserve(&mut Tried::default()).is_none(),
        "admin state is per address"
    );
}

#[test]
fn a_priority_group_that_failed_this_connection_hands_over_to_the_next() {
    let mut members = vec![member(0), member(1)];
    members[0].priority = 2;
    members[1].priority = 1;
    let mut pool_plan = plan(members);
    pool_plan.min_active_members = 1;
    let pool = build(&pool_plan, &mut MemberRegistry::default());
    let mut tried = Tried::default();
    let Reservation { index: first, slot } = pool.reserve_indexed(&mut tried).unwrap();
    assert_eq!(first, 0, "the higher group first");
    drop(slot);
    // The member refused: the next try of the same connection may use the
    // lower group, though no monitor has marked the first down.
    let second = pool.reserve_indexed(&mut tried).unwrap().index;
    assert_eq!(second, 1);
    assert!(pool.reserve_indexed(&mut tried).is_none());
    assert_eq!(
        pool.reserve_indexed(&mut Tried::default()).unwrap().index,
        0
    );
}

/// Clients on several threads waiting for the same rate-limited member:
/// one that loses a token to another at the moment it was due waits for
/// the next one; none is refused before its deadline.
#[test]
fn paced_clients_on_many_threads_all_get_a_slot_before_their_deadline() {
    let mut limited = member(0);
    limited.connect_rate_limit = RateLimit::PerSecond(200);
    let mut registry = MemberRegistry::default();
    let pool = std::sync::Arc::new(build(&plan(vec![limited]), &mut registry));
    // 8 threads x 40 clients: 200 at once (the burst), 120 more over 0.6 s.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let pool = std::sync::Arc::clone(&pool);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    let clients: Vec<_> = (0..40)
                        .map(|_| {
                            let pool = std::sync::Arc::clone(&pool);
                            tokio::spawn(async move {
                                pool.reserve_paced(
                                    &mut Tried::default(),
                                    deadline,
                                    Choice::Algorithm,
                                )
                                .await
                                .is_some()
                            })
                        })
                        .collect();
                    let mut refused = 0;
                    for client in clients {
                        if !client.await.unwrap() {
                            refused += 1;
                        }
                    }
                    refused
                })
            })
        })
        .collect();
    let refused: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(refused, 0, "paced clients refused before their deadline");
}
