//! The live state as operators read it, once: named structures built from
//! the snapshot and the reload counters, which `GET /status` serializes and
//! `GET /metrics` turns into metric families. A new counter is added to
//! [`crate::stats`] or the member state, and shows in both. Fields marked
//! `serde(skip)` are for the metrics only; the JSON keeps the shape the
//! admin endpoint documents.

use serde::Serialize;

use crate::config::{Mode, Persistence, Tls};
use crate::health::ProbeStatus;
use crate::pool::{Departures, Drain, Health, MemberCounts};
use crate::server::{ReloadCounts, Snapshot};
use crate::snat::SourceNat;
use crate::stats::{HttpCounts, VirtualCounts};

/// Everything `/status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    /// Unix seconds when this instance started.
    pub started_at: u64,
    pub uptime_seconds: u64,
    /// What the admin endpoint asks of callers; set by [`crate::admin`].
    pub admin: AdminStatus,
    pub config: ConfigStatus,
    pub virtuals: Vec<VirtualStatus>,
    pub pools: Vec<PoolStatus>,
    pub snat_pools: Vec<SnatPoolStatus>,
    /// SNAT automap: connections from each local address toward each
    /// member, per virtual.
    #[serde(skip)]
    pub automap: Vec<AutomapUse>,
    pub persistence_records: PersistenceRecordsStatus,
}

/// The source-address persistence table, shared by every virtual.
#[derive(Debug, Serialize)]
pub struct PersistenceRecordsStatus {
    /// Records held now.
    pub records: usize,
    /// The most it holds (`settings.persistence_records`).
    pub capacity: usize,
    /// Records dropped to make room since the start.
    pub dropped: u64,
}

/// What the admin endpoint asks of callers.
#[derive(Debug, Default, Serialize)]
pub struct AdminStatus {
    /// Whether changes need `Authorization: Bearer <token>`
    /// (`admin.token_file` is set).
    pub token_required: bool,
}

/// The configuration in force and its reloads.
#[derive(Debug, Serialize)]
pub struct ConfigStatus {
    /// SHA-256 of the running file ("" when not started from a file).
    pub hash: String,
    /// Unix seconds of the last successful load.
    pub loaded_at: u64,
    pub reloads: ReloadTotals,
    pub last_reload_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ReloadTotals {
    pub succeeded: u64,
    pub failed: u64,
    /// Binary upgrades the service went through (carried from process to
    /// process).
    pub upgrades: u64,
}

#[derive(Debug, Serialize)]
pub struct VirtualStatus {
    pub name: String,
    pub listen: String,
    /// `None` for a redirect virtual.
    pub pool: Option<String>,
    /// `tcp` or `http`.
    pub mode: &'static str,
    /// `off`, `terminate`, `auto` or `passthrough`.
    pub tls: &'static str,
    /// Whether the virtual reads ClientHellos to route by SNI.
    #[serde(skip)]
    pub routes_by_sni: bool,
    #[serde(flatten)]
    pub counts: VirtualCounts,
    /// For HTTP virtuals: persistence and request counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpStatus>,
}

#[derive(Debug, Serialize)]
pub struct HttpStatus {
    /// The persistence in words (`none`, `cookie GWELB`, `url_param jsessionid`).
    pub persistence: String,
    #[serde(flatten)]
    pub counts: HttpCounts,
}

#[derive(Debug, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub algorithm: String,
    /// The lowest priority group taking new connections, when the pool
    /// uses priority groups (`min_active_members` > 0).
    pub priority_in_use: Option<i64>,
    /// Its `rebalance`, if set.
    pub rebalance: Option<RebalanceStatus>,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Serialize)]
pub struct RebalanceStatus {
    pub tolerance: f64,
    /// Connections closed a second at most.
    pub rate: u32,
    /// Some member is off its share now, and connections are moving.
    pub active: bool,
}

/// A member's timed drain.
#[derive(Debug, Serialize)]
pub struct DrainStatus {
    /// How long the operator gave it, in seconds.
    pub within_seconds: f64,
    /// Until the deadline (0 once passed).
    pub seconds_left: f64,
    /// Its connections when the drain started.
    pub started_with: usize,
    /// Its connections now.
    pub remaining: usize,
    /// Its last connection is gone.
    pub drained: bool,
}

impl DrainStatus {
    fn of(drain: Drain, remaining: usize) -> DrainStatus {
        let now = tokio::time::Instant::now();
        let round = |seconds: f64| (seconds * 10.0).round() / 10.0;
        DrainStatus {
            within_seconds: round(
                drain
                    .deadline
                    .saturating_duration_since(drain.started)
                    .as_secs_f64(),
            ),
            seconds_left: round(drain.deadline.saturating_duration_since(now).as_secs_f64()),
            started_with: drain.initial,
            remaining,
            drained: drain.finished.is_some(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub address: String,
    pub route: Option<String>,
    /// `up`, `down` or `unchecked`, in this pool.
    pub health: &'static str,
    #[serde(skip)]
    pub up: bool,
    /// Times it went from up to down in this pool: a member that flaps
    /// counts up.
    pub times_down: u64,
    /// `enabled`, `disabled` or `forced-offline`.
    pub state: String,
    /// Its priority group in this pool.
    pub priority: i64,
    /// Its share along the slow ramp: 0 just back up, 1 full.
    pub ramp: f64,
    /// Up and enabled: may take new connections.
    #[serde(skip)]
    pub usable: bool,
    #[serde(flatten)]
    pub counts: MemberCounts,
    /// Its connections in this pool closed so that their clients
    /// reconnect elsewhere, by why.
    pub departures: Departures,
    /// The operator's timed drain, while one runs or once it finished.
    pub drain: Option<DrainStatus>,
    /// The pool's rebalancing passes it over for new clients (it holds
    /// its share or more).
    pub over_share: bool,
    /// The monitors that decide its health here, with their last result.
    pub monitors: Vec<MonitorStatus>,
}

#[derive(Debug, Serialize)]
pub struct MonitorStatus {
    pub monitor: String,
    pub target: String,
    /// `up`, `down` or `unchecked`.
    pub result: &'static str,
    /// "ok", or why the last attempt failed.
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct SnatPoolStatus {
    pub name: String,
    pub addresses: Vec<SnatAddressStatus>,
}

#[derive(Debug, Serialize)]
pub struct SnatAddressStatus {
    pub address: String,
    /// Connections that found no free port on this address.
    pub exhausted: u64,
    pub members: Vec<PortUse>,
}

/// Source ports toward one member.
#[derive(Debug, Serialize)]
pub struct PortUse {
    pub member: String,
    pub in_use: usize,
    pub free: usize,
}

#[derive(Debug, Serialize)]
pub struct AutomapUse {
    pub virtual_name: String,
    pub address: String,
    pub member: String,
    pub in_use: usize,
}

impl Status {
    /// The state of `snapshot`, with the configuration's `reloads`.
    pub fn of(snapshot: &Snapshot, reloads: ReloadCounts) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION"),
            started_at: reloads.started_at,
            uptime_seconds: crate::clock::unix_seconds().saturating_sub(reloads.started_at),
            admin: AdminStatus::default(),
            config: ConfigStatus {
                hash: reloads.config_hash,
                loaded_at: reloads.last_success,
                reloads: ReloadTotals {
                    succeeded: reloads.succeeded,
                    failed: reloads.failed,
                    upgrades: reloads.upgrades,
                },
                last_reload_error: reloads.last_error,
            },
            virtuals: virtuals(snapshot),
            pools: pools(snapshot),
            snat_pools: snat_pools(snapshot),
            automap: automap(snapshot),
            persistence_records: PersistenceRecordsStatus {
                records: snapshot.persistence_records.len(),
                capacity: snapshot.persistence_records.capacity(),
                dropped: snapshot.persistence_records.dropped(),
            },
        }
    }
}

fn virtuals(snapshot: &Snapshot) -> Vec<VirtualStatus> {
    snapshot
        .plan()
        .virtuals
        .iter()
        .filter_map(|plan| {
            let live = snapshot.virtual_server(&plan.name)?;
            let counts = live.stats.counts();
            let http = match &plan.mode {
                Mode::Tcp => None,
                Mode::Http(http) => Some(HttpStatus {
                    persistence: match &http.persistence {
                        Persistence::None => "none".to_string(),
                        Persistence::UrlParam { name, .. } => format!("url_param {name}"),
                        Persistence::Cookie { name, .. } => format!("cookie {name}"),
                    },
                    counts: counts.http,
                }),
            };
            Some(VirtualStatus {
                name: plan.name.clone(),
                listen: plan.listen.to_string(),
                pool: plan.pool.clone(),
                mode: if http.is_some() { "http" } else { "tcp" },
                tls: match &plan.tls {
                    Tls::Off => "off",
                    Tls::Passthrough { .. } => "passthrough",
                    Tls::Terminate(t) if t.plain_allowed => "auto",
                    Tls::Terminate(_) => "terminate",
                },
                routes_by_sni: !live.sni_routes.is_empty(),
                counts,
                http,
            })
        })
        .collect()
}

fn pools(snapshot: &Snapshot) -> Vec<PoolStatus> {
    snapshot
        .pools()
        .map(|pool| PoolStatus {
            name: pool.name().to_string(),
            algorithm: snapshot.plan().pools[pool.name()].algorithm.to_string(),
            priority_in_use: pool.priority_in_use(),
            rebalance: pool.rebalance().map(|rebalance| RebalanceStatus {
                tolerance: rebalance.tolerance,
                rate: rebalance.rate,
                active: pool.rebalancing(),
            }),
            members: pool
                .members()
                .iter()
                .enumerate()
                .map(|(index, member)| {
                    let address = member.state.address();
                    let health = member.health.health();
                    MemberStatus {
                        address: address.to_string(),
                        route: member.route.clone(),
                        health: health.as_str(),
                        up: health == Health::Up,
                        times_down: member.health.times_down(),
                        state: member.state.admin_state().to_string(),
                        priority: member.priority,
                        // Rounded: the page shows a percentage.
                        ramp: (pool.ramp(index) * 1000.0).round() / 1000.0,
                        usable: member.usable(),
                        counts: member.state.counts(),
                        departures: member.balance.departures(),
                        drain: member
                            .state
                            .drain()
                            .map(|drain| DrainStatus::of(drain, member.state.active_connections())),
                        over_share: member.balance.over_share(),
                        monitors: snapshot
                            .health()
                            .probes_of(pool.name(), address)
                            .into_iter()
                            .map(|(key, status)| monitor(&key.monitor, key.target_text(), status))
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect()
}

fn monitor(name: &str, target: String, status: &ProbeStatus) -> MonitorStatus {
    let (health, detail) = status.verdict();
    MonitorStatus {
        monitor: name.to_string(),
        target,
        result: health.as_str(),
        detail,
    }
}

fn snat_pools(snapshot: &Snapshot) -> Vec<SnatPoolStatus> {
    snapshot
        .snat_pools()
        .map(|pool| SnatPoolStatus {
            name: pool.name().to_string(),
            addresses: pool
                .addresses()
                .iter()
                .map(|address| {
                    let mut members: Vec<PortUse> = address
                        .usage()
                        .map(|(member, ports)| PortUse {
                            member: member.to_string(),
                            in_use: ports.in_use(),
                            free: ports.free(),
                        })
                        .collect();
                    members.sort_by(|a, b| a.member.cmp(&b.member));
                    SnatAddressStatus {
                        address: address.address.to_string(),
                        exhausted: address.exhausted(),
                        members,
                    }
                })
                .collect(),
        })
        .collect()
}

fn automap(snapshot: &Snapshot) -> Vec<AutomapUse> {
    let mut uses = Vec::new();
    for plan in &snapshot.plan().virtuals {
        let Some(live) = snapshot.virtual_server(&plan.name) else {
            continue;
        };
        if let SourceNat::Automap(automap) = &live.dialer.snat {
            for (address, member, in_use) in automap.usage() {
                uses.push(AutomapUse {
                    virtual_name: plan.name.clone(),
                    address: address.to_string(),
                    member: member.to_string(),
                    in_use,
                });
            }
        }
    }
    uses
}
