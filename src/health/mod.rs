//! Health monitoring: probes run in their own tasks, and one evaluator turns
//! their results into each pool member's health.
//!
//! A probe is one monitor against one address (`ProbeKey`): the monitor
//! `TCP-9075` on 127.0.0.12:9075, or an ICMP monitor on 127.0.0.12. Probes
//! are shared by everyone who needs them: a pool rule `all = ["TCP-9070",
//! "TCP-9075"]` makes the two members 127.0.0.12:9070 and 127.0.0.12:9075
//! depend on the same two probes, and a second pool using those monitors
//! adds no probe. Each pool member's rule is judged on its own, as on F5:
//! the same address can be up in one pool and down in another whose rule
//! differs. Each probe runs at once on
//! start, then every `interval` (with a fixed per-probe offset of up to a
//! tenth of the interval, so a large pool does not probe in lockstep), and
//! each attempt is bounded by the interval, so a blackholed port delays
//! nothing but itself. A probe that has been up turns down only when no
//! attempt has succeeded for `timeout` (F5's semantics); a probe's first
//! verdict is immediate.
//!
//! The evaluator owns the pool member health atomics the data path reads,
//! logs each change once with its reason, and closes a member's connections
//! through a pool with `action_on_service_down = "reset"` when it goes down
//! there.

pub mod icmp;
pub mod probe;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::{
    MemberPlan, MonitorPlan, MonitorRule, Plan, Probe, ProbePort, ServiceDownAction,
};
use crate::pool::{Health, MemberHealth, MemberRegistry};
use crate::sync::lock;
use probe::Prober;

/// One monitor aimed at one address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeKey {
    pub monitor: String,
    /// Port 0 for ICMP monitors, which probe an address.
    pub target: SocketAddr,
}

impl ProbeKey {
    /// The target as people read it: `IP:port`, or the IP alone for ICMP.
    pub fn target_text(&self) -> String {
        if self.target.port() == 0 {
            self.target.ip().to_string()
        } else {
            self.target.to_string()
        }
    }
}

/// The latest verdict of one probe. Written by its probe task; read by the
/// evaluator and the status page, never by the data path.
#[derive(Debug)]
pub struct ProbeStatus {
    record: Mutex<ProbeRecord>,
}

#[derive(Debug, Clone)]
struct ProbeRecord {
    health: Health,
    /// "ok", or why the last attempt failed.
    detail: String,
    last_success: Option<Instant>,
    /// Attempts made so far.
    attempts: u64,
}

impl ProbeStatus {
    fn new() -> ProbeStatus {
        ProbeStatus {
            record: Mutex::new(ProbeRecord {
                health: Health::Unchecked,
                detail: "not probed yet".into(),
                last_success: None,
                attempts: 0,
            }),
        }
    }

    fn record(&self) -> ProbeRecord {
        lock(&self.record).clone()
    }

    /// The probe's health and the detail of its last attempt.
    pub fn verdict(&self) -> (Health, String) {
        let record = self.record();
        (record.health, record.detail)
    }

    /// Takes the verdict a predecessor process had (binary upgrade): an
    /// `Up` one counts as a success now, so it stays up unless probes fail
    /// for the monitor's timeout.
    pub fn carry(&self, health: Health, detail: String) {
        let mut record = lock(&self.record);
        record.health = health;
        record.detail = detail;
        if health == Health::Up {
            record.last_success = Some(Instant::now());
        }
    }

    /// How many attempts this probe has made: what a test counts to know
    /// that the probes ran (rather than sleeping and hoping they did).
    pub fn attempts(&self) -> u64 {
        self.record().attempts
    }

    /// Folds one attempt in; true if the probe's health changed.
    fn update(&self, result: Result<(), String>, timeout: Duration) -> bool {
        let mut record = lock(&self.record);
        record.attempts += 1;
        let before = record.health;
        match result {
            Ok(()) => {
                record.health = Health::Up;
                record.detail = "ok".into();
                record.last_success = Some(Instant::now());
            }
            Err(detail) => {
                record.detail = detail;
                let stale = record.last_success.is_none_or(|at| at.elapsed() >= timeout);
                if record.health != Health::Up || stale {
                    record.health = Health::Down;
                }
            }
        }
        record.health != before
    }
}

/// What the health checker watches for one configuration.
#[derive(Debug, Default)]
pub struct HealthPlan {
    probes: BTreeMap<ProbeKey, (Arc<Prober>, Arc<ProbeStatus>)>,
    subjects: Arc<[Subject]>,
}

/// Why the monitors of a (valid) configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("monitors.{monitor}.tls: {error}")]
    Tls {
        monitor: String,
        error: crate::tls::TlsError,
    },
    #[error("monitors.{monitor}: {error}")]
    Icmp {
        monitor: String,
        error: icmp::Unavailable,
    },
}

/// One member of one pool and the rules that decide its health there.
#[derive(Debug)]
struct Subject {
    pool: String,
    address: SocketAddr,
    health: Arc<MemberHealth>,
    own: CompiledRule,
    node: CompiledRule,
    reset_on_down: bool,
}

#[derive(Debug)]
struct CompiledRule {
    /// How many probes must be up; `None` for all of them.
    min: Option<usize>,
    probes: Vec<(ProbeKey, Arc<ProbeStatus>)>,
}

/// Whether `member` has any monitor in its pool: its own rule or its
/// node's.
pub fn monitored(plan: &Plan, member: &MemberPlan) -> bool {
    let node = plan
        .nodes
        .get(&member.address.ip())
        .is_some_and(|node| node.monitor != MonitorRule::Always);
    node || member.monitor != MonitorRule::Always
}

/// The address a monitor probes for a member at `address`: ICMP knows no
/// port, so every member of an address shares one ICMP probe.
fn target(monitor: &MonitorPlan, address: SocketAddr) -> SocketAddr {
    match (&monitor.probe, monitor.port) {
        (Probe::Icmp, _) => SocketAddr::new(address.ip(), 0),
        (_, ProbePort::Member) => address,
        (_, ProbePort::Fixed(port)) => SocketAddr::new(address.ip(), port),
    }
}

impl HealthPlan {
    /// The probes and rules of `plan`, for the pool members in `members`.
    /// Probes that `previous` had keep their status (no flapping on
    /// reload). Fails when a monitor's TLS files cannot be read or ICMP
    /// cannot be sent.
    pub fn build(
        plan: &Plan,
        members: &MemberRegistry,
        previous: Option<&HealthPlan>,
    ) -> Result<HealthPlan, HealthError> {
        // Each monitor in use, and the address families it probes.
        let mut families: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
        let uses = plan
            .pools
            .values()
            .flat_map(|pool| pool.members.iter().map(|m| (&m.monitor, m.address.ip())))
            .chain(
                plan.nodes
                    .values()
                    .map(|node| (&node.monitor, node.address)),
            );
        for (rule, ip) in uses {
            for name in rule.monitors() {
                let family = families.entry(name.as_str()).or_default();
                family.0 |= ip.is_ipv4();
                family.1 |= ip.is_ipv6();
            }
        }
        let mut probers: BTreeMap<&str, Arc<Prober>> = BTreeMap::new();
        for (name, family) in families {
            probers.insert(name, Arc::new(Prober::new(&plan.monitors[name], family)?));
        }
        let mut probes = BTreeMap::new();
        let mut compile = |rule: &MonitorRule, address: SocketAddr| {
            let min = match rule {
                MonitorRule::AtLeast { min, .. } => Some(*min),
                _ => None,
            };
            let probes = rule
                .monitors()
                .iter()
                .map(|name| {
                    let key = ProbeKey {
                        monitor: name.clone(),
                        target: target(&plan.monitors[name], address),
                    };
                    let (_, status) = probes.entry(key.clone()).or_insert_with(|| {
                        let status = previous
                            .and_then(|p| p.probes.get(&key))
                            .map_or_else(|| Arc::new(ProbeStatus::new()), |(_, s)| s.clone());
                        (Arc::clone(&probers[name.as_str()]), status)
                    });
                    (key, status.clone())
                })
                .collect();
            CompiledRule { min, probes }
        };
        let mut subjects = Vec::new();
        for pool in plan.pools.values() {
            for member in &pool.members {
                let Some(health) = members.health(&pool.name, member.address) else {
                    continue;
                };
                let node_rule = plan
                    .nodes
                    .get(&member.address.ip())
                    .map_or(MonitorRule::Always, |node| node.monitor.clone());
                subjects.push(Subject {
                    pool: pool.name.clone(),
                    address: member.address,
                    health: Arc::clone(health),
                    own: compile(&member.monitor, member.address),
                    node: compile(&node_rule, member.address),
                    reset_on_down: pool.action_on_service_down == ServiceDownAction::Reset,
                });
            }
        }
        Ok(HealthPlan {
            probes,
            subjects: subjects.into(),
        })
    }

    /// The status of every probe, for the status page.
    pub fn probes(&self) -> impl Iterator<Item = (&ProbeKey, &Arc<ProbeStatus>)> {
        self.probes.iter().map(|(key, (_, status))| (key, status))
    }

    /// The status of the probe `key`, if this plan has it.
    pub fn probe(&self, key: &ProbeKey) -> Option<&Arc<ProbeStatus>> {
        self.probes.get(key).map(|(_, status)| status)
    }

    /// The probes that decide the health of the member at `address` in
    /// `pool` (its own rule's, then its node's), for the status page.
    pub fn probes_of(
        &self,
        pool: &str,
        address: SocketAddr,
    ) -> Vec<(&ProbeKey, &Arc<ProbeStatus>)> {
        self.subjects
            .iter()
            .filter(|subject| subject.address == address && subject.pool == pool)
            .flat_map(|subject| subject.own.probes.iter().chain(&subject.node.probes))
            .map(|(key, status)| (key, status))
            .collect()
    }

    /// Starts the probe tasks and the evaluator in `tasks`.
    pub fn spawn(&self, tasks: &mut JoinSet<()>) {
        let changed = Arc::new(Notify::new());
        for (key, (prober, status)) in &self.probes {
            tasks.spawn(probe_loop(
                key.clone(),
                Arc::clone(prober),
                status.clone(),
                changed.clone(),
            ));
        }
        let subjects = self.subjects.clone();
        tasks.spawn(async move {
            loop {
                for subject in subjects.iter() {
                    subject.evaluate();
                }
                changed.notified().await;
            }
        });
    }
}

async fn probe_loop(
    key: ProbeKey,
    prober: Arc<Prober>,
    status: Arc<ProbeStatus>,
    changed: Arc<Notify>,
) {
    let monitor = &prober.monitor;
    let attempt_limit = monitor.interval.min(monitor.timeout);
    let period = monitor.interval + offset(&key, monitor.interval);
    let mut next = tokio::time::Instant::now();
    loop {
        let result = tokio::time::timeout(attempt_limit, prober.run(key.target))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(attempt_limit)
                ))
            });
        if let Err(detail) = &result {
            tracing::debug!(monitor = %key.monitor, target = %key.target_text(), %detail, "probe failed");
        }
        if status.update(result, monitor.timeout) {
            changed.notify_one();
        }
        next += period;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// A fixed offset of up to a tenth of `interval`, different per probe, so
/// probes of a large pool spread out over time.
fn offset(key: &ProbeKey, interval: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    interval.mul_f64((hasher.finish() % 1000) as f64 / 10_000.0)
}

impl CompiledRule {
    fn verdict(&self) -> Health {
        let healths = self.probes.iter().map(|(_, status)| status.verdict().0);
        judge(self.min, healths)
    }

    /// Why the rule is not up, naming each probe that is not.
    fn reasons(&self, what: &str, out: &mut Vec<String>) {
        for (key, status) in &self.probes {
            let record = status.record();
            if record.health == Health::Up {
                continue;
            }
            let since = match record.last_success {
                Some(at) => format!("no success for {}s", at.elapsed().as_secs()),
                None if record.health == Health::Unchecked => "not probed yet".into(),
                None => "never succeeded".into(),
            };
            out.push(format!(
                "{what} {} on {}: {} ({since})",
                key.monitor,
                key.target_text(),
                record.detail
            ));
        }
    }
}

/// The verdict of a rule over its probes: all must be up, or at least
/// `min`. Not enough known yet is unchecked, not down.
fn judge(min: Option<usize>, healths: impl Iterator<Item = Health>) -> Health {
    let (mut up, mut unchecked, mut total) = (0, 0, 0);
    for health in healths {
        total += 1;
        match health {
            Health::Up => up += 1,
            Health::Unchecked => unchecked += 1,
            Health::Down => {}
        }
    }
    let needed = min.unwrap_or(total);
    if up >= needed {
        Health::Up
    } else if up + unchecked >= needed {
        Health::Unchecked
    } else {
        Health::Down
    }
}

impl Subject {
    fn evaluate(&self) {
        let own = self.own.verdict();
        let node = self.node.verdict();
        let health = match (own, node) {
            (Health::Down, _) | (_, Health::Down) => Health::Down,
            (Health::Unchecked, _) | (_, Health::Unchecked) => Health::Unchecked,
            _ => Health::Up,
        };
        if health == self.health.health() {
            return;
        }
        self.health.set(health);
        let (address, pool) = (self.address, &self.pool);
        match health {
            Health::Up => {
                tracing::info!("member {address} up in pool {pool}: every required monitor passes")
            }
            Health::Down => {
                let mut reasons = Vec::new();
                self.node.reasons("node monitor", &mut reasons);
                self.own.reasons("monitor", &mut reasons);
                let action = if self.reset_on_down {
                    self.health.reset_connections();
                    "; closing its connections (action_on_service_down = reset)"
                } else {
                    ""
                };
                tracing::warn!(
                    "member {address} down in pool {pool}: {}{action}",
                    reasons.join("; ")
                );
            }
            Health::Unchecked => {
                tracing::info!(
                    "member {address} unchecked in pool {pool}: waiting for its first probes"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    #[test]
    fn all_needs_every_probe_up() {
        assert_eq!(judge(None, [Up, Up].into_iter()), Up);
        assert_eq!(judge(None, [Up, Down].into_iter()), Down);
        assert_eq!(judge(None, [Up, Unchecked].into_iter()), Unchecked);
        assert_eq!(judge(None, [Unchecked, Down].into_iter()), Down);
        assert_eq!(judge(None, [].into_iter()), Up, "no monitor: always up");
    }

    #[test]
    fn min_n_of_m_needs_n_up() {
        assert_eq!(judge(Some(1), [Down, Up, Down].into_iter()), Up);
        assert_eq!(judge(Some(2), [Down, Up, Down].into_iter()), Down);
        assert_eq!(judge(Some(2), [Unchecked, Up, Down].into_iter()), Unchecked);
        assert_eq!(judge(Some(2), [Up, Up, Down].into_iter()), Up);
    }

    #[test]
    fn a_probe_that_was_up_goes_down_only_after_timeout_without_success() {
        let status = ProbeStatus::new();
        let timeout = Duration::from_millis(200);
        assert!(status.update(Ok(()), timeout));
        assert!(!status.update(Err("connection refused".into()), timeout));
        assert_eq!(status.verdict(), (Up, "connection refused".to_string()));
        std::thread::sleep(Duration::from_millis(250));
        assert!(status.update(Err("connection refused".into()), timeout));
        assert_eq!(status.verdict().0, Down);
        assert!(status.update(Ok(()), timeout), "one success brings it back");
        assert_eq!(status.attempts(), 4, "every attempt is counted");
    }

    #[test]
    fn a_first_failed_probe_is_down_at_once() {
        let status = ProbeStatus::new();
        assert_eq!(status.verdict().0, Unchecked);
        assert!(status.update(Err("connection refused".into()), Duration::from_secs(16)));
        assert_eq!(status.verdict().0, Down);
    }

    #[test]
    fn offsets_stay_within_a_tenth_and_differ() {
        let interval = Duration::from_secs(5);
        let offsets: Vec<Duration> = (9070..9080)
            .map(|port| {
                offset(
                    &ProbeKey {
                        monitor: "TCP".into(),
                        target: SocketAddr::from(([127, 0, 0, 1], port)),
                    },
                    interval,
                )
            })
            .collect();
        assert!(offsets.iter().all(|o| *o < interval / 10));
        let mut distinct = offsets.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 5);
    }
}
