//! The live [`Snapshot`]: one consistent view of the configuration and the
//! runtime state it uses, built from a plan and the previous snapshot
//! (member state, pool member health, virtual counters and SNAT port
//! accounting carried over by identity).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::connections::Registry;
use crate::source_persistence::{Records, SourceAffinity};
use crate::stop_signal::StopTokens;
use crate::virtual_server::hand_over::HandOver;

use super::StartError;
use crate::config::{Mode, Plan, Snat, Tls, VirtualPlan};
use crate::dial::Dialer;
use crate::health::{self, HealthPlan};
use crate::http::HttpVirtual;
use crate::pool::{MemberRegistry, MemberState, Pool};
use crate::snat::{Automap, SnatPool, SourceNat};
use crate::stats::VirtualStats;
use crate::tls::{MemberTls, Terminator, TlsError};
use crate::virtual_server::VirtualServer;

/// One consistent view of the configuration and the runtime state it uses.
#[derive(Debug)]
pub struct Snapshot {
    plan: Plan,
    pools: BTreeMap<String, Arc<Pool>>,
    virtuals: HashMap<String, Arc<VirtualServer>>,
    members: MemberRegistry,
    health: HealthPlan,
    snat_pools: BTreeMap<String, Arc<SnatPool>>,
    /// `Shutdown::closing` (`all`): cancelled when open connections must
    /// close (the drain timeout of a shutdown ran out); and
    /// `Shutdown::handing_over` (`plain`). The same tokens across snapshots.
    pub(super) closing: StopTokens,
    /// Established connections moving to a successor; the same across
    /// snapshots.
    pub(super) hand_over: Arc<HandOver>,
    /// The TCP connections open now; the same across snapshots.
    pub(crate) connections: Arc<Registry>,
    /// Source-address persistence records; the same across snapshots.
    pub(crate) persistence_records: Arc<Records>,
}

/// What every snapshot of a process shares with the next.
struct Lasting<'a> {
    hand_over: &'a Arc<HandOver>,
    connections: &'a Arc<Registry>,
    persistence_records: &'a Arc<Records>,
}

impl Snapshot {
    /// Builds the runtime view of `plan`, reusing the state of members and
    /// virtuals that `previous` already had.
    pub fn build(plan: Plan, previous: Option<&Snapshot>) -> Result<Snapshot, StartError> {
        let closing = previous.map_or_else(StopTokens::root, |p| p.closing.clone());
        let hand_over = previous.map_or_else(Arc::default, |p| Arc::clone(&p.hand_over));
        let connections = previous.map_or_else(Arc::default, |p| Arc::clone(&p.connections));
        let persistence_records = previous.map_or_else(
            || Arc::new(Records::new(plan.settings.persistence_records)),
            |p| Arc::clone(&p.persistence_records),
        );
        let lasting = Lasting {
            hand_over: &hand_over,
            connections: &connections,
            persistence_records: &persistence_records,
        };
        let (pools, members) = build_pools(&plan, previous, &closing)?;
        let health = HealthPlan::build(&plan, &members, previous.map(|p| &p.health))?;
        let snat_pools = build_snat_pools(&plan, previous);
        let virtuals = plan
            .virtuals
            .iter()
            .map(|virtual_plan| {
                let built =
                    build_virtual(&plan, virtual_plan, &pools, &snat_pools, previous, &lasting)?;
                Ok((virtual_plan.name.clone(), Arc::new(built)))
            })
            .collect::<Result<_, StartError>>()?;
        Ok(Snapshot {
            plan,
            pools,
            virtuals,
            members,
            health,
            snat_pools,
            closing,
            hand_over,
            connections,
            persistence_records,
        })
    }

    /// The SNAT pools in use, with their port accounting.
    pub fn snat_pools(&self) -> impl Iterator<Item = &Arc<SnatPool>> {
        self.snat_pools.values()
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn virtual_server(&self, name: &str) -> Option<&Arc<VirtualServer>> {
        self.virtuals.get(name)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every pool, by name.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    /// The health of `address` in pool `pool`.
    pub fn member_health(
        &self,
        pool: &str,
        address: SocketAddr,
    ) -> Option<&Arc<crate::pool::MemberHealth>> {
        self.members.health(pool, address)
    }

    /// The state of the member at `address`, whichever pools it is in.
    pub fn member(&self, address: &SocketAddr) -> Option<&Arc<MemberState>> {
        self.members.get(address)
    }

    /// Every member's state.
    pub fn members(&self) -> impl Iterator<Item = &Arc<MemberState>> {
        self.members.iter()
    }

    /// The health probes and their latest verdicts.
    pub fn health(&self) -> &HealthPlan {
        &self.health
    }

    /// Counters of virtual `name`.
    pub fn virtual_stats(&self, name: &str) -> Option<&Arc<VirtualStats>> {
        self.virtuals.get(name).map(|v| &v.stats)
    }

    /// Client connections open now, over every virtual.
    pub fn active_connections(&self) -> usize {
        self.virtuals
            .values()
            .map(|v| v.stats.active_connections())
            .sum()
    }

    /// What vipgate is doing, in a line (systemd's `STATUS=`): "serving 3
    /// virtuals, 12/12 members up, 341 connections".
    pub fn status_line(&self) -> String {
        let virtuals = self.plan.virtuals.len();
        let (mut up, mut members) = (0, 0);
        for pool in self.pools.values() {
            for member in pool.members() {
                members += 1;
                up += usize::from(member.usable());
            }
        }
        let connections = self.active_connections();
        format!(
            "serving {virtuals} virtual{}, {up}/{members} members up, {connections} connection{}",
            if virtuals == 1 { "" } else { "s" },
            if connections == 1 { "" } else { "s" }
        )
    }

    /// Reads the certificates of every virtual that terminates TLS again.
    /// A virtual whose new files are broken keeps its current ones; the
    /// result says which.
    pub fn reload_certificates(&self) -> Vec<(String, Result<(), TlsError>)> {
        let mut results: Vec<(String, Result<(), TlsError>)> = self
            .virtuals
            .iter()
            .filter_map(|(name, v)| Some((name.clone(), v.terminator.as_ref()?.reload())))
            .collect();
        results.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, result) in &results {
            match result {
                Ok(()) => tracing::info!(virtual_server = %name, "certificates reloaded"),
                Err(error) => {
                    tracing::error!(virtual_server = %name, %error, "certificate reload failed, keeping the current certificates")
                }
            }
        }
        results
    }
}

/// Every pool of `plan` with its members' state (carried over from
/// `previous` by address, and their health by pool and address). Members
/// new to the configuration start in their configured admin state.
fn build_pools(
    plan: &Plan,
    previous: Option<&Snapshot>,
    closing: &StopTokens,
) -> Result<(BTreeMap<String, Arc<Pool>>, MemberRegistry), StartError> {
    let mut members = MemberRegistry::default();
    let previous_members = previous.map(|p| &p.members);
    let mut pools = BTreeMap::new();
    for (name, pool_plan) in &plan.pools {
        let member_tls = MemberTls::load(&pool_plan.tls).map_err(|error| StartError::PoolTls {
            pool: name.clone(),
            error,
        })?;
        let monitored = |member: &_| health::monitored(plan, member);
        let pool = Pool::new(
            pool_plan,
            &mut members,
            previous_members,
            closing,
            monitored,
        )
        .with_member_tls(member_tls);
        pools.insert(name.clone(), Arc::new(pool));
    }
    for member in plan.pools.values().flat_map(|pool| &pool.members) {
        let new = previous_members
            .and_then(|p| p.get(&member.address))
            .is_none();
        if let Some(state) = members.get(&member.address).filter(|_| new) {
            state.set_admin_state(member.admin);
        }
    }
    Ok((pools, members))
}

/// One virtual ready to serve: its pools, how it reaches members (SNAT),
/// its TLS and HTTP sides, and its counters (carried over by name).
fn build_virtual(
    plan: &Plan,
    virtual_plan: &VirtualPlan,
    pools: &BTreeMap<String, Arc<Pool>>,
    snat_pools: &BTreeMap<String, Arc<SnatPool>>,
    previous: Option<&Snapshot>,
    lasting: &Lasting,
) -> Result<VirtualServer, StartError> {
    let name = &virtual_plan.name;
    let shared_name: Arc<str> = name.as_str().into();
    let source_affinity = virtual_plan.source_persistence.map(|rule| {
        SourceAffinity::new(
            Arc::clone(&shared_name),
            rule,
            Arc::clone(lasting.persistence_records),
        )
    });
    let stats = previous.and_then(|p| p.virtuals.get(name)).map_or_else(
        || Arc::new(VirtualStats::new(name, plan.settings.worker_threads)),
        |v| Arc::clone(&v.stats),
    );
    let pool = match &virtual_plan.pool {
        Some(pool) => Arc::clone(&pools[pool]),
        // A redirect virtual answers every request itself.
        None => Arc::new(Pool::without_members(name)),
    };
    let sni_routes = match &virtual_plan.tls {
        Tls::Passthrough { sni_routes, .. } => sni_routes
            .iter()
            .map(|route| (route.clone(), Arc::clone(&pools[&route.pool])))
            .collect(),
        Tls::Off | Tls::Terminate(_) => Vec::new(),
    };
    let snat = match &virtual_plan.snat {
        Snat::None => SourceNat::None,
        Snat::Automap => SourceNat::Automap(Arc::new(Automap::build(
            plan.pools_of(virtual_plan)
                .flat_map(|p| p.members.iter().map(|m| m.address)),
        ))),
        Snat::Pool(pool_name) => SourceNat::Pool(Arc::clone(&snat_pools[pool_name])),
    };
    let dialer = Dialer {
        snat,
        connect_timeout: virtual_plan.connect_timeout,
        keepalive: virtual_plan.tcp_keepalive,
    };
    let terminator = match &virtual_plan.tls {
        Tls::Terminate(terminate) => {
            Some(
                Terminator::load(terminate).map_err(|error| StartError::Tls {
                    virtual_name: name.clone(),
                    error,
                })?,
            )
        }
        _ => None,
    };
    let http = match &virtual_plan.mode {
        Mode::Http(http) => {
            let loaded = HttpVirtual::load(
                http,
                virtual_plan,
                Arc::clone(&pool),
                dialer.clone(),
                Arc::clone(&stats),
                plan.settings.worker_threads,
                source_affinity.clone(),
            )
            .map_err(|error| StartError::Http {
                virtual_name: name.clone(),
                error,
            })?;
            Some(Arc::new(loaded))
        }
        Mode::Tcp => None,
    };
    Ok(VirtualServer {
        name: shared_name,
        connections: Arc::clone(lasting.connections),
        source_affinity,
        plan: virtual_plan.clone(),
        pool,
        sni_routes,
        dialer,
        terminator,
        http,
        stats,
        hand_over: Arc::clone(lasting.hand_over),
    })
}

/// Each SNAT pool, with port sets toward every member that a virtual using
/// it can reach.
fn build_snat_pools(plan: &Plan, previous: Option<&Snapshot>) -> BTreeMap<String, Arc<SnatPool>> {
    plan.snat_pools
        .iter()
        .map(|(name, snat_plan)| {
            let mut members: Vec<SocketAddr> = plan
                .virtuals
                .iter()
                .filter(|v| v.snat == Snat::Pool(name.clone()))
                .flat_map(|v| {
                    plan.pools_of(v)
                        .flat_map(|p| p.members.iter().map(|m| m.address))
                })
                .collect();
            members.sort();
            members.dedup();
            let before = previous
                .and_then(|p| p.snat_pools.get(name))
                .map(Arc::as_ref);
            (
                name.clone(),
                Arc::new(SnatPool::build(snat_plan, &members, before)),
            )
        })
        .collect()
}
