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
use crate::pool::Health;
use crate::server::{Control, Snapshot};
use crate::snat::SourceNat;

/// Turns the live state into metric families at each scrape.
pub struct Exporter {
    control: Arc<Control>,
}

impl Exporter {
    pub fn new(control: Arc<Control>) -> Exporter {
        Exporter { control }
    }
}

/// A registry holding the vipgate exporter.
pub fn registry(control: Arc<Control>) -> Registry {
    let registry = Registry::new();
    // The exporter has no fixed descriptors, so registering it into a new
    // registry cannot collide with anything.
    let _ = registry.register(Box::new(Exporter::new(control)));
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
    families.counter(
        "vipgate_virtual_connections_total",
        "Client connections accepted.",
        &["virtual"],
        |vec| {
            for (plan, v) in &virtuals {
                add(vec, &[&plan.name], v.stats.accepted());
            }
        },
    );
    families.gauge(
        "vipgate_virtual_connections_active",
        "Client connections open now.",
        &["virtual"],
        |vec| {
            for (plan, v) in &virtuals {
                set(vec, &[&plan.name], v.stats.active_connections() as i64);
            }
        },
    );
    families.counter(
        "vipgate_virtual_rejected_total",
        "Clients closed without being served, by reason: connection_limit (the virtual's), no_member (none could take it), snat_exhausted (no source port free).",
        &["virtual", "reason"],
        |vec| {
            for (plan, v) in &virtuals {
                add(vec, &[&plan.name, "connection_limit"], v.stats.rejected_connection_limit());
                add(vec, &[&plan.name, "no_member"], v.stats.rejected_no_member());
                add(vec, &[&plan.name, "snat_exhausted"], v.stats.rejected_snat_exhausted());
            }
        },
    );
    families.counter(
        "vipgate_virtual_accept_errors_total",
        "accept(2) failures (out of file descriptors and the like).",
        &["virtual"],
        |vec| {
            for (plan, v) in &virtuals {
                add(vec, &[&plan.name], v.stats.accept_errors());
            }
        },
    );
    families.counter(
        "vipgate_tls_handshakes_total",
        "TLS handshakes vipgate terminated, by result: ok, failed, timed_out.",
        &["virtual", "result"],
        |vec| {
            for (plan, v) in virtuals.iter().filter(|(_, v)| v.terminator.is_some()) {
                let (ok, failed, timed_out) = v.stats.handshakes();
                add(vec, &[&plan.name, "ok"], ok);
                add(vec, &[&plan.name, "failed"], failed);
                add(vec, &[&plan.name, "timed_out"], timed_out);
            }
        },
    );
    families.counter(
        "vipgate_tls_client_hellos_total",
        "ClientHellos read for SNI routing, by result: ok, rejected, timed_out.",
        &["virtual", "result"],
        |vec| {
            for (plan, v) in virtuals.iter().filter(|(_, v)| !v.sni_routes.is_empty()) {
                let (ok, rejected, timed_out) = v.stats.client_hellos();
                add(vec, &[&plan.name, "ok"], ok);
                add(vec, &[&plan.name, "rejected"], rejected);
                add(vec, &[&plan.name, "timed_out"], timed_out);
            }
        },
    );
    let http: Vec<_> = virtuals
        .iter()
        .filter(|(plan, _)| matches!(plan.mode, Mode::Http(_)))
        .map(|(plan, v)| (plan.name.as_str(), v.stats.http.counts()))
        .collect();
    families.counter(
        "vipgate_http_requests_total",
        "HTTP requests received.",
        &["virtual"],
        |vec| {
            for (name, counts) in &http {
                add(vec, &[name], counts.requests);
            }
        },
    );
    families.counter(
        "vipgate_persistence_total",
        "HTTP requests by persistence result: hit (sent to the member named), miss (nothing named), reroute (named a member that could not take it, or a forged or expired cookie).",
        &["virtual", "result"],
        |vec| {
            for (name, counts) in &http {
                add(vec, &[name, "hit"], counts.persistence_hits);
                add(vec, &[name, "miss"], counts.persistence_misses);
                add(vec, &[name, "reroute"], counts.persistence_reroutes);
            }
        },
    );
    families.counter(
        "vipgate_persistence_cookies_set_total",
        "Persistence cookies set.",
        &["virtual"],
        |vec| {
            for (name, counts) in &http {
                add(vec, &[name], counts.cookies_set);
            }
        },
    );
    families.counter(
        "vipgate_http_responses_generated_total",
        "Answers vipgate gave itself, by status: 408 (slow request head), 502 (member failed), 503 (no member), 504 (member too slow).",
        &["virtual", "status"],
        |vec| {
            for (name, counts) in &http {
                add(vec, &[name, "408"], counts.request_timeouts);
                add(vec, &[name, "502"], counts.member_failed);
                add(vec, &[name, "503"], counts.no_member);
                add(vec, &[name, "504"], counts.member_timed_out);
            }
        },
    );
    families.counter(
        "vipgate_http_upgrades_total",
        "Connections switched to another protocol (WebSocket) and tunnelled.",
        &["virtual"],
        |vec| {
            for (name, counts) in &http {
                add(vec, &[name], counts.upgrades);
            }
        },
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
    families.gauge(
        "vipgate_member_up",
        "1 when the member's monitors pass (or it has none), else 0.",
        &["member"],
        |vec| {
            for (member, name) in each() {
                set(vec, &[name], i64::from(member.health() == Health::Up));
            }
        },
    );
    families.gauge(
        "vipgate_member_health",
        "1 for the member's current health: up, down, or unchecked (first probes not finished).",
        &["member", "health"],
        |vec| {
            for (member, name) in each() {
                set(vec, &[name, member.health().as_str()], 1);
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
    families.gauge(
        "vipgate_member_connections_active",
        "Connections (HTTP: requests) open to the member now.",
        &["member"],
        |vec| {
            for (member, name) in each() {
                set(vec, &[name], member.active_connections() as i64);
            }
        },
    );
    families.counter(
        "vipgate_member_connections_total",
        "Connections established to the member.",
        &["member"],
        |vec| {
            for (member, name) in each() {
                add(vec, &[name], member.total_connections());
            }
        },
    );
    families.counter(
        "vipgate_member_connect_failures_total",
        "Connects to the member that were refused, timed out or failed.",
        &["member"],
        |vec| {
            for (member, name) in each() {
                add(vec, &[name], member.connect_failures());
            }
        },
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
                    let up = live.members().iter().filter(|m| m.state.usable()).count();
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
                    &[&key.monitor, &key.target.to_string()],
                    i64::from(health == Health::Up),
                );
            }
        },
    );
    for member in &members {
        families.histogram(member.connect_histogram());
    }
}

fn snat(snapshot: &Snapshot, families: &mut Families) {
    let labels = ["snat_pool", "address", "member"];
    families.gauge(
        "vipgate_snat_ports_in_use",
        "Source ports taken on a SNAT address toward one member (automap: connections).",
        &labels,
        |vec| {
            for pool in snapshot.snat_pools() {
                for address in pool.addresses() {
                    for (member, ports) in address.usage() {
                        set(
                            vec,
                            &[
                                pool.name(),
                                &address.address.to_string(),
                                &member.to_string(),
                            ],
                            ports.in_use() as i64,
                        );
                    }
                }
            }
            for plan in &snapshot.plan().virtuals {
                if let Some(SourceNat::Automap(automap)) =
                    snapshot.virtual_server(&plan.name).map(|v| &v.snat)
                {
                    let name = format!("automap:{}", plan.name);
                    for (address, member, in_use) in automap.usage() {
                        set(
                            vec,
                            &[&name, &address.to_string(), &member.to_string()],
                            in_use as i64,
                        );
                    }
                }
            }
        },
    );
    families.gauge(
        "vipgate_snat_ports_free",
        "Source ports still free on a SNAT address toward one member.",
        &labels,
        |vec| {
            for pool in snapshot.snat_pools() {
                for address in pool.addresses() {
                    for (member, ports) in address.usage() {
                        set(
                            vec,
                            &[
                                pool.name(),
                                &address.address.to_string(),
                                &member.to_string(),
                            ],
                            ports.free() as i64,
                        );
                    }
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
