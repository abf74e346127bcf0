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
//! differs. Each probe starts an attempt at once on
//! start, then every `interval` (with a fixed per-probe offset of up to a
//! tenth of the interval, so a large pool does not probe in lockstep).
//!
//! An attempt is judged against the monitor's `timeout`, as on F5, not cut
//! off at the next interval: it runs until it answers, fails, or `timeout`
//! has passed, so a lost SYN or SYN-ACK, which Linux sends again only
//! after a second, costs that attempt a second rather than the attempt
//! itself. An attempt with no answer after half an interval opens a
//! second connection beside the first, and attempts started every
//! interval overlap while earlier ones wait (at most
//! [`MAX_ATTEMPTS_IN_FLIGHT`] per probe), so one lost packet delays one
//! connection while others get through. A probe that has been up turns
//! down the moment no attempt has succeeded for `timeout`, whatever is
//! still in flight; a probe's first verdict is immediate: the first
//! attempt's failure, or no answer within the interval.
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
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

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

    /// When the probe turns down unless an attempt succeeds first: `timeout`
    /// after its last success, while it is up.
    fn expires_at(&self, timeout: Duration) -> Option<Instant> {
        let record = lock(&self.record);
        match (record.health, record.last_success) {
            (Health::Up, Some(at)) => Some(at + timeout),
            _ => None,
        }
    }

    /// Turns the probe down if it is up and nothing succeeded for
    /// `timeout`, or if it has no verdict yet (called when its first
    /// attempt went unanswered for an interval); `waited` says how long,
    /// for the detail. True if its health changed.
    fn expire(&self, timeout: Duration, waited: Duration) -> bool {
        let mut record = lock(&self.record);
        let stale = record.last_success.is_none_or(|at| at.elapsed() >= timeout);
        let turns = match record.health {
            Health::Up => stale,
            Health::Unchecked => true,
            _ => false,
        };
        if turns {
            record.health = Health::Down;
            if record.detail == "ok" || record.detail == "not probed yet" {
                record.detail = format!("no answer within {}", humantime::format_duration(waited));
            }
        }
        turns
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

/// Attempts of one probe that may be in flight at once: 4. Each lives up
/// to the monitor's `timeout` (with at most two connections), so F5's
/// usual `timeout` of three intervals and a second keeps about four going
/// against a target that does not answer; a slot that finds four still
/// waiting is skipped (their retransmissions are already on the way)
/// rather than piling sockets up.
pub const MAX_ATTEMPTS_IN_FLIGHT: usize = 4;

async fn probe_loop(
    key: ProbeKey,
    prober: Arc<Prober>,
    status: Arc<ProbeStatus>,
    changed: Arc<Notify>,
) {
    let monitor = &prober.monitor;
    let period = monitor.interval + offset(&key, monitor.interval);
    let mut next = Instant::now();
    // The first verdict is due an interval after the first attempt began.
    let mut first_due = Some(next + monitor.interval);
    let mut attempts = JoinSet::new();
    loop {
        let expiry = first_due.or_else(|| status.expires_at(monitor.timeout));
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                if attempts.len() < MAX_ATTEMPTS_IN_FLIGHT {
                    attempts.spawn(attempt(Arc::clone(&prober), key.target));
                } else {
                    tracing::debug!(monitor = %key.monitor, target = %key.target_text(), "probe attempts still waiting: none started this interval");
                }
                next += period;
                next = next.max(Instant::now());
            }
            Some(joined) = attempts.join_next() => {
                let result = joined.unwrap_or_else(|error| Err(format!("probe failed: {error}")));
                if let Err(detail) = &result {
                    tracing::debug!(monitor = %key.monitor, target = %key.target_text(), %detail, "probe failed");
                }
                first_due = None;
                if status.update(result, monitor.timeout) {
                    changed.notify_one();
                }
            }
            () = sleep_until_some(expiry) => {
                let waited = if first_due.take().is_some() { monitor.interval } else { monitor.timeout };
                if status.expire(monitor.timeout, waited) {
                    changed.notify_one();
                }
            }
        }
    }
}

/// One attempt, given up after the monitor's `timeout`. If the target has
/// not answered within half an interval, a second connection joins the
/// first and the first answer of either counts: one lost packet then
/// costs half an interval rather than the second Linux waits to send it
/// again, which matters when the interval is shorter than that second.
/// A definite answer (refused, reset, the wrong reply) ends the attempt
/// at once; only silence brings the second connection.
async fn attempt(prober: Arc<Prober>, target: SocketAddr) -> Result<(), String> {
    let limit = prober.monitor.timeout;
    let first_and_second = async {
        let first = prober.run(target);
        tokio::pin!(first);
        tokio::select! {
            result = &mut first => return result,
            () = tokio::time::sleep(prober.monitor.interval / 2) => {}
        }
        let second = prober.run(target);
        tokio::pin!(second);
        tokio::select! {
            result = first => result,
            result = second => result,
        }
    };
    tokio::time::timeout(limit, first_and_second)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(limit)
            ))
        })
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
    fn an_up_probe_expires_timeout_after_its_last_success_whatever_is_in_flight() {
        let status = ProbeStatus::new();
        let timeout = Duration::from_millis(200);
        assert_eq!(status.expires_at(timeout), None, "no verdict yet");
        assert!(status.update(Ok(()), timeout));
        let expiry = status.expires_at(timeout).unwrap();
        let left = expiry - Instant::now();
        assert!(left <= timeout && left > timeout / 2, "{left:?}");
        assert!(!status.expire(timeout, timeout), "not yet stale");
        std::thread::sleep(timeout);
        assert!(status.expire(timeout, timeout));
        assert_eq!(
            status.verdict(),
            (Down, "no answer within 200ms".to_string()),
            "nothing failed: the silence is the reason"
        );
        assert_eq!(
            status.expires_at(timeout),
            None,
            "down: nothing left to expire"
        );
        assert!(!status.expire(timeout, timeout));
    }

    #[test]
    fn an_expiring_probe_keeps_the_failure_it_saw() {
        let status = ProbeStatus::new();
        let timeout = Duration::from_millis(50);
        assert!(status.update(Ok(()), timeout));
        assert!(!status.update(Err("connection refused".into()), timeout));
        std::thread::sleep(timeout);
        assert!(status.expire(timeout, timeout));
        assert_eq!(status.verdict(), (Down, "connection refused".to_string()));
    }

    #[test]
    fn an_unanswered_first_attempt_is_down_after_the_interval() {
        let status = ProbeStatus::new();
        assert!(status.expire(Duration::from_secs(16), Duration::from_secs(5)));
        assert_eq!(status.verdict(), (Down, "no answer within 5s".to_string()));
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
