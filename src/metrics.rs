//! `GET /metrics`: the live state in the Prometheus text format.
//!
//! The data path keeps plain atomics (and two histograms); nothing is
//! counted twice. At scrape time an [`Exporter`], registered in a real
//! `prometheus::Registry`, reads the snapshot and turns it into metric
//! families. Labels are bounded by the configuration: virtual, pool and
//! monitor names, member and SNAT addresses, and fixed reason words. No
//! client address appears in any label.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::config::{AdminState, Mode};
use crate::pool::{Health, Member, MemberState};
use crate::server::{Control, Snapshot};
use crate::snat::SourceNat;
use crate::virtual_server::VirtualServer;

/// Turns the live state into metric families at each scrape.
pub struct Exporter {
    control: Arc<Control>,
}

impl Exporter {
    pub fn new(control: Arc<Control>) -> Exporter {
        Exporter { control }
    }
}

/// A registry holding the vipgate exporter and the process collector
/// (`process_open_fds`, `process_max_fds`, `process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_start_time_seconds`).
pub fn registry(control: Arc<Control>) -> Registry {
    let registry = Registry::new();
    // The exporter has no fixed descriptors, and the process collector's
    // are its own, so registering them into a new registry cannot collide.
    let _ = registry.register(Box::new(Exporter::new(control)));
    let _ = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    registry
}

/// The registry's metrics in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut text = Vec::new();
    // Encoding into memory fails only on malformed families, which the
    // prometheus types do not let us build.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut text);
    String::from_utf8_lossy(&text).into_owned()
}

impl Collector for Exporter {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = self.control.live().load();
        let mut families = Families::default();
        virtuals(&snapshot, &mut families);
        members(&snapshot, &mut families);
        snat(&snapshot, &mut families);
        reloads(&self.control, &mut families);
        families.0
    }
}

/// Metric families being built for one scrape.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    /// A counter family; `fill` sets each labelled value.
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        fill: impl FnOnce(&IntCounterVec),
    ) {
        if let Ok(vec) = IntCounterVec::new(Opts::new(name, help), labels) {
            fill(&vec);
            self.0.extend(vec.collect());
        }
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[&str], fill: impl FnOnce(&IntGaugeVec)) {
        if let Ok(vec) = IntGaugeVec::new(Opts::new(name, help), labels) {
            fill(&vec);
            self.0.extend(vec.collect());
        }
    }

    /// A counter with one label, one value per item.
    fn counter_each<T>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        items: &[(&str, T)],
        value: impl Fn(&T) -> u64,
    ) {
        self.counter(name, help, &[label], |vec| {
            for (key, item) in items {
                add(vec, &[key], value(item));
            }
        });
    }

    /// A counter with two labels: per item, one value per word of the
    /// second label (`reason`, `result`, `status`).
    fn counter_split<T, const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        labels: [&str; 2],
        items: &[(&str, T)],
        values: impl Fn(&T) -> [(&'static str, u64); N],
    ) {
        self.counter(name, help, &labels, |vec| {
            for (key, item) in items {
                for (word, value) in values(item) {
                    add(vec, &[key, word], value);
                }
            }
        });
    }

    /// A gauge with one label, one value per item.
    fn gauge_each<T>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        items: &[(&str, T)],
        value: impl Fn(&T) -> i64,
    ) {
        self.gauge(name, help, &[label], |vec| {
            for (key, item) in items {
                set(vec, &[key], value(item));
            }
        });
    }

    fn histogram(&mut self, histogram: &prometheus::Histogram) {
        self.0.extend(histogram.collect());
    }
}

fn add(vec: &IntCounterVec, labels: &[&str], value: u64) {
    vec.with_label_values(labels).inc_by(value);
}

fn set(vec: &IntGaugeVec, labels: &[&str], value: i64) {
    vec.with_label_values(labels).set(value);
}

fn virtuals(snapshot: &Snapshot, families: &mut Families) {
    let virtuals: Vec<_> = snapshot
        .plan()
        .virtuals
        .iter()
        .filter_map(|plan| Some((plan, snapshot.virtual_server(&plan.name)?)))
        .collect();
    let by_name: Vec<(&str, &Arc<VirtualServer>)> = virtuals
        .iter()
        .map(|(plan, v)| (plan.name.as_str(), *v))
        .collect();
    families.counter_each(
        "vipgate_virtual_connections_total",
        "Client connections accepted.",
        "virtual",
        &by_name,
        |v| v.stats.accepted(),
    );
    families.gauge_each(
        "vipgate_virtual_connections_active",
        "Client connections open now.",
        "virtual",
        &by_name,
        |v| v.stats.active_connections() as i64,
    );
    families.counter_split(
        "vipgate_virtual_rejected_total",
        "Clients closed without being served, by reason: connection_limit (the virtual's), no_member (none could take it), snat_exhausted (no source port free).",
        ["virtual", "reason"],
        &by_name,
        |v| [
            ("connection_limit", v.stats.rejected_connection_limit()),
            ("no_member", v.stats.rejected_no_member()),
            ("snat_exhausted", v.stats.rejected_snat_exhausted()),
        ],
    );
    families.counter_each(
        "vipgate_virtual_accept_errors_total",
        "accept(2) failures (out of file descriptors and the like).",
        "virtual",
        &by_name,
        |v| v.stats.accept_errors(),
    );
    let terminating: Vec<_> = by_name
        .iter()
        .filter(|(_, v)| v.terminator.is_some())
        .cloned()
        .collect();
    families.counter_split(
        "vipgate_tls_handshakes_total",
        "TLS handshakes vipgate terminated, by result: ok, failed, timed_out.",
        ["virtual", "result"],
        &terminating,
        |v| {
            let (ok, failed, timed_out) = v.stats.handshakes();
            [("ok", ok), ("failed", failed), ("timed_out", timed_out)]
        },
    );
    let routing: Vec<_> = by_name
        .iter()
        .filter(|(_, v)| !v.sni_routes.is_empty())
        .cloned()
        .collect();
    families.counter_split(
        "vipgate_tls_client_hellos_total",
        "ClientHellos read for SNI routing, by result: ok, rejected, timed_out.",
        ["virtual", "result"],
        &routing,
        |v| {
            let (ok, rejected, timed_out) = v.stats.client_hellos();
            [("ok", ok), ("rejected", rejected), ("timed_out", timed_out)]
        },
    );
    let http: Vec<_> = virtuals
        .iter()
        .filter(|(plan, _)| matches!(plan.mode, Mode::Http(_)))
        .map(|(plan, v)| (plan.name.as_str(), v.stats.http.counts()))
        .collect();
    families.counter_each(
        "vipgate_http_requests_total",
        "HTTP requests received.",
        "virtual",
        &http,
        |c| c.requests,
    );
    families.counter_split(
        "vipgate_persistence_total",
        "HTTP requests by persistence result: hit (sent to the member named), miss (nothing named), reroute (named a member that could not take it, or a forged or expired cookie).",
        ["virtual", "result"],
        &http,
        |c| [("hit", c.persistence_hits), ("miss", c.persistence_misses), ("reroute", c.persistence_reroutes)],
    );
    families.counter_each(
        "vipgate_persistence_cookies_set_total",
        "Persistence cookies set.",
        "virtual",
        &http,
        |c| c.cookies_set,
    );
    families.counter_split(
        "vipgate_http_responses_generated_total",
        "Answers vipgate gave itself, by status: 408 (slow request head), 502 (member failed), 503 (no member), 504 (member too slow).",
        ["virtual", "status"],
        &http,
        |c| [("408", c.request_timeouts), ("502", c.member_failed), ("503", c.no_member), ("504", c.member_timed_out)],
    );
    families.counter_each(
        "vipgate_http_upgrades_total",
        "Connections switched to another protocol (WebSocket) and tunnelled.",
        "virtual",
        &http,
        |c| c.upgrades,
    );
    for (_, v) in &virtuals {
        families.histogram(v.stats.duration_histogram());
    }
}

fn members(snapshot: &Snapshot, families: &mut Families) {
    let mut members: Vec<_> = snapshot.members().cloned().collect();
    members.sort_by_key(|m| m.address());
    let names: Vec<String> = members.iter().map(|m| m.address().to_string()).collect();
    let each = || members.iter().zip(&names);
    let by_name: Vec<(&str, &Arc<MemberState>)> = names
        .iter()
        .map(String::as_str)
        .zip(members.iter())
        .collect();
    families.gauge(
        "vipgate_member_up",
        "1 when the member's monitors in this pool (its own rule and its node's) pass, or it has none; else 0.",
        &["pool", "member"],
        |vec| {
            for (pool, member, name) in pool_members(snapshot) {
                let up = member.health.health() == Health::Up;
                set(vec, &[pool, &name], i64::from(up));
            }
        },
    );
    families.gauge(
        "vipgate_member_health",
        "1 for the member's current health in this pool: up, down, or unchecked (first probes not finished).",
        &["pool", "member", "health"],
        |vec| {
            for (pool, member, name) in pool_members(snapshot) {
                set(vec, &[pool, &name, member.health.health().as_str()], 1);
            }
        },
    );
    families.gauge(
        "vipgate_member_admin_state",
        "1 for the member's admin state: enabled, disabled, forced-offline.",
        &["member", "state"],
        |vec| {
            for (member, name) in each() {
                let state = match member.admin_state() {
                    AdminState::Enabled => "enabled",
                    AdminState::Disabled => "disabled",
                    AdminState::ForcedOffline => "forced-offline",
                };
                set(vec, &[name, state], 1);
            }
        },
    );
    families.gauge_each(
        "vipgate_member_connections_active",
        "Connections (HTTP: requests) open to the member now.",
        "member",
        &by_name,
        |m| m.active_connections() as i64,
    );
    families.counter_each(
        "vipgate_member_connections_total",
        "Connections established to the member.",
        "member",
        &by_name,
        |m| m.total_connections(),
    );
    families.counter_each(
        "vipgate_member_connect_failures_total",
        "Connects to the member that were refused, timed out or failed.",
        "member",
        &by_name,
        |m| m.connect_failures(),
    );
    families.counter(
        "vipgate_member_bytes_total",
        "Bytes carried, by direction: to_member, to_client (counted as connections close).",
        &["member", "direction"],
        |vec| {
            for (member, name) in each() {
                let (to_member, to_client) = member.bytes();
                add(vec, &[name, "to_member"], to_member);
                add(vec, &[name, "to_client"], to_client);
            }
        },
    );
    families.gauge(
        "vipgate_pool_member",
        "1 for each member of each pool.",
        &["pool", "member"],
        |vec| {
            for (pool, plan) in &snapshot.plan().pools {
                for member in &plan.members {
                    set(vec, &[pool, &member.address.to_string()], 1);
                }
            }
        },
    );
    families.gauge(
        "vipgate_pool_members_up",
        "Members of the pool that are up and enabled.",
        &["pool"],
        |vec| {
            for pool in snapshot.plan().pools.keys() {
                if let Some(live) = snapshot.pool(pool) {
                    let up = live.members().iter().filter(|m| m.usable()).count();
                    set(vec, &[pool], up as i64);
                }
            }
        },
    );
    families.gauge(
        "vipgate_monitor_up",
        "The last verdict of one monitor on one target: 1 up, 0 down or not yet probed.",
        &["monitor", "target"],
        |vec| {
            for (key, status) in snapshot.health().probes() {
                let (health, _) = status.verdict();
                set(
                    vec,
                    &[&key.monitor, &key.target_text()],
                    i64::from(health == Health::Up),
                );
            }
        },
    );
    for member in &members {
        families.histogram(member.connect_histogram());
    }
}

/// Every member of every pool, with the pool's name and the member's
/// address as text.
fn pool_members(snapshot: &Snapshot) -> impl Iterator<Item = (&str, &Member, String)> {
    snapshot.pools().flat_map(|pool| {
        pool.members()
            .iter()
            .map(move |member| (pool.name(), member, member.state.address().to_string()))
    })
}

fn label_values(key: &[String; 3]) -> [&str; 3] {
    [key[0].as_str(), key[1].as_str(), key[2].as_str()]
}

fn snat(snapshot: &Snapshot, families: &mut Families) {
    let labels = ["snat_pool", "address", "member"];
    // (pool, address, member) -> (in use, free) for every port set.
    let mut usage: Vec<([String; 3], usize, Option<usize>)> = Vec::new();
    for pool in snapshot.snat_pools() {
        for address in pool.addresses() {
            for (member, ports) in address.usage() {
                let key = [
                    pool.name().to_string(),
                    address.address.to_string(),
                    member.to_string(),
                ];
                usage.push((key, ports.in_use(), Some(ports.free())));
            }
        }
    }
    for plan in &snapshot.plan().virtuals {
        if let Some(SourceNat::Automap(automap)) =
            snapshot.virtual_server(&plan.name).map(|v| &v.snat)
        {
            for (address, member, in_use) in automap.usage() {
                let key = [
                    format!("automap:{}", plan.name),
                    address.to_string(),
                    member.to_string(),
                ];
                usage.push((key, in_use, None));
            }
        }
    }
    families.gauge(
        "vipgate_snat_ports_in_use",
        "Source ports taken on a SNAT address toward one member (automap: connections).",
        &labels,
        |vec| {
            for (key, in_use, _) in &usage {
                set(vec, &label_values(key), *in_use as i64);
            }
        },
    );
    families.gauge(
        "vipgate_snat_ports_free",
        "Source ports still free on a SNAT address toward one member.",
        &labels,
        |vec| {
            for (key, _, free) in &usage {
                if let Some(free) = free {
                    set(vec, &label_values(key), *free as i64);
                }
            }
        },
    );
    families.counter(
        "vipgate_snat_exhausted_total",
        "Connections that found no free port on a SNAT address toward their member.",
        &["snat_pool", "address"],
        |vec| {
            for pool in snapshot.snat_pools() {
                for address in pool.addresses() {
                    add(
                        vec,
                        &[pool.name(), &address.address.to_string()],
                        address.exhausted(),
                    );
                }
            }
        },
    );
}

fn reloads(control: &Control, families: &mut Families) {
    let (succeeded, failed) = control.reloads.counts();
    families.counter(
        "vipgate_config_reloads_total",
        "Configuration reloads (SIGHUP, POST /reload), by result: success, failure.",
        &["result"],
        |vec| {
            add(vec, &["success"], succeeded);
            add(vec, &["failure"], failed);
        },
    );
    families.gauge(
        "vipgate_config_last_reload_success_timestamp_seconds",
        "When the running configuration was loaded (Unix seconds).",
        &[],
        |vec| {
            set(vec, &[], control.reloads.last_success() as i64);
        },
    );
    families.gauge(
        "vipgate_config_info",
        "1, labelled with the SHA-256 of the running configuration file.",
        &["hash"],
        |vec| {
            set(vec, &[&control.reloads.config_hash()], 1);
        },
    );
    families.gauge(
        "vipgate_build_info",
        "1, labelled with the vipgate version.",
        &["version"],
        |vec| {
            set(vec, &[env!("CARGO_PKG_VERSION")], 1);
        },
    );
}
