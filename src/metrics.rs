//! `GET /metrics`: the live state in the Prometheus text format.
//!
//! The data path keeps plain atomics (and two histograms); nothing is
//! counted twice. At scrape time an [`Exporter`], registered in a real
//! `prometheus::Registry`, reads the snapshot and turns it into metric
//! families. Labels are bounded by the configuration: virtual, pool and
//! monitor names, member and SNAT addresses, and fixed reason words. No
//! client address appears in any label.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::pool::Departures;
use crate::server::{Live, ReloadStats};
use crate::stats::Rejection;
use crate::status::{MemberStatus, Status, VirtualStatus};

/// Turns the live state into metric families at each scrape.
pub struct Exporter {
    live: Live,
    reloads: Arc<ReloadStats>,
    /// Times a worker moved itself to a free CPU (`cpu_affinity = "spread"`).
    cpu_moves: Arc<AtomicU64>,
}

impl Exporter {
    pub fn new(live: Live, reloads: Arc<ReloadStats>, cpu_moves: Arc<AtomicU64>) -> Exporter {
        Exporter {
            live,
            reloads,
            cpu_moves,
        }
    }
}

/// A registry holding the vipgate exporter and the process collector
/// (`process_open_fds`, `process_max_fds`, `process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_start_time_seconds`).
pub fn registry(live: Live, reloads: Arc<ReloadStats>, cpu_moves: Arc<AtomicU64>) -> Registry {
    let registry = Registry::new();
    // The exporter has no fixed descriptors, and the process collector's
    // are its own, so registering them into a new registry cannot collide.
    let _ = registry.register(Box::new(Exporter::new(live, reloads, cpu_moves)));
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
        let snapshot = self.live.load();
        let status = Status::of(&snapshot, self.reloads.counts());
        let mut families = Families::default();
        virtuals(&status, &mut families);
        tls(&status, &mut families);
        http(&status, &mut families);
        member_health(&status, &mut families);
        member_counters(&status, &mut families);
        snat(&status, &mut families);
        config(&status, &mut families);
        let records = &status.persistence_records;
        families.gauge(
            "vipgate_persistence_records",
            "Source-address persistence records held now, over every virtual.",
            &[],
            |vec| set(vec, &[], records.records as i64),
        );
        families.counter(
            "vipgate_persistence_records_dropped_total",
            "Source-address persistence records dropped to make room (settings.persistence_records reached): raise the setting if this grows.",
            &[],
            |vec| add(vec, &[], records.dropped),
        );
        families.counter(
            "vipgate_worker_cpu_moves_total",
            "Times a worker thread moved itself off a CPU it shared with another busy worker to one where none was busy (settings.cpu_affinity = \"spread\").",
            &[],
            |vec| add(vec, &[], self.cpu_moves.load(Ordering::Relaxed)),
        );
        // Histograms are kept by the data path itself; they are not counts
        // a view can copy.
        for plan in &snapshot.plan().virtuals {
            if let Some(stats) = snapshot.virtual_stats(&plan.name) {
                families.histogram(stats.duration_histogram().collect());
                if matches!(plan.mode, crate::config::Mode::Http(_)) {
                    families.histogram(stats.request_histogram().collect());
                }
            }
        }
        let mut members: Vec<_> = snapshot.members().collect();
        members.sort_by_key(|member| member.address());
        for member in members {
            families.histogram(member.connect_histogram().collect());
        }
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

    fn histogram(&mut self, families: Vec<MetricFamily>) {
        self.0.extend(families);
    }
}

fn add(vec: &IntCounterVec, labels: &[&str], value: u64) {
    vec.with_label_values(labels).inc_by(value);
}

fn set(vec: &IntGaugeVec, labels: &[&str], value: i64) {
    vec.with_label_values(labels).set(value);
}

/// Each virtual's (name, status), the rows of the per-virtual families.
fn by_name(status: &Status) -> Vec<(&str, &VirtualStatus)> {
    status
        .virtuals
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect()
}

/// Client connections of every virtual: accepted, open, refused.
fn virtuals(status: &Status, families: &mut Families) {
    let by_name = by_name(status);
    families.counter_each(
        "vipgate_virtual_connections_total",
        "Client connections accepted.",
        "virtual",
        &by_name,
        |v| v.counts.connections.total,
    );
    families.gauge_each(
        "vipgate_virtual_connections_active",
        "Client connections open now.",
        "virtual",
        &by_name,
        |v| v.counts.connections.active as i64,
    );
    families.counter_split(
        "vipgate_virtual_rejected_total",
        "Clients (HTTP: requests) not served, by reason: connection_limit (the virtual's), no_member (none could take it), snat_exhausted (no source port free), local_resources (this host ran out of file descriptors or memory), client_limit and client_rate (one client over client_connection_limit or client_rate_limit).",
        ["virtual", "reason"],
        &by_name,
        |v| {
            let rejected = v.counts.rejected;
            [
                (Rejection::ConnectionLimit.as_str(), rejected.connection_limit),
                (Rejection::NoMember.as_str(), rejected.no_member),
                (Rejection::SnatExhausted.as_str(), rejected.snat_exhausted),
                (Rejection::LocalResources.as_str(), rejected.local_resources),
                (Rejection::ClientLimit.as_str(), rejected.client_limit),
                (Rejection::ClientRate.as_str(), rejected.client_rate),
            ]
        },
    );
    families.counter_each(
        "vipgate_client_table_full_total",
        "Clients not held to the per-client limits because the virtual's table of clients was full (more distinct clients active at once than it holds).",
        "virtual",
        &by_name,
        |v| v.counts.rejected.client_table_full,
    );
    families.counter_each(
        "vipgate_virtual_accept_errors_total",
        "accept(2) failures (out of file descriptors and the like).",
        "virtual",
        &by_name,
        |v| v.counts.accept_errors,
    );
}

/// TLS on the virtuals that terminate it or route by SNI.
fn tls(status: &Status, families: &mut Families) {
    let by_name = by_name(status);
    let terminating: Vec<_> = by_name
        .iter()
        .filter(|(_, v)| matches!(v.tls, "terminate" | "auto"))
        .cloned()
        .collect();
    families.counter_split(
        "vipgate_tls_handshakes_total",
        "TLS handshakes vipgate terminated, by result: ok, failed, timed_out.",
        ["virtual", "result"],
        &terminating,
        |v| {
            let handshakes = v.counts.handshakes;
            [
                ("ok", handshakes.ok),
                ("failed", handshakes.failed),
                ("timed_out", handshakes.timed_out),
            ]
        },
    );
    families.counter_each(
        "vipgate_tls_warnings_total",
        "Warnings rustls raised about client connections (a refused renegotiation, an unexpected message), logged at debug with the client.",
        "virtual",
        &terminating,
        |v| v.counts.tls_warnings,
    );
    let routing: Vec<_> = by_name
        .iter()
        .filter(|(_, v)| v.routes_by_sni)
        .cloned()
        .collect();
    families.counter_split(
        "vipgate_tls_client_hellos_total",
        "ClientHellos read for SNI routing, by result: ok, rejected, timed_out.",
        ["virtual", "result"],
        &routing,
        |v| {
            let hellos = v.counts.client_hellos;
            [
                ("ok", hellos.ok),
                ("rejected", hellos.failed),
                ("timed_out", hellos.timed_out),
            ]
        },
    );
}

/// Requests, persistence and answers of the HTTP virtuals.
fn http(status: &Status, families: &mut Families) {
    let http: Vec<_> = status
        .virtuals
        .iter()
        .filter_map(|v| Some((v.name.as_str(), v.http.as_ref()?.counts)))
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
    families.counter_each(
        "vipgate_http_redirects_total",
        "Requests a redirect virtual answered with its redirect (to HTTPS, as F5's _sys_https_redirect).",
        "virtual",
        &http,
        |c| c.redirects,
    );
    families.counter_split(
        "vipgate_http_responses_generated_total",
        "Answers vipgate gave itself, by status: 400 (unparsable request, no Host, malformed body), 408 (slow request head), 431 (request head too large), 502 (member failed), 503 (no member), 504 (member too slow).",
        ["virtual", "status"],
        &http,
        |c| [("400", c.answered_400), ("408", c.answered_408), ("431", c.answered_431), ("502", c.answered_502), ("503", c.answered_503), ("504", c.answered_504)],
    );
    families.counter_split(
        "vipgate_http_member_responses_total",
        "Members' answers passed to clients, by status class: 1xx, 2xx, 3xx, 4xx, 5xx (vipgate's own answers are in vipgate_http_responses_generated_total).",
        ["virtual", "class"],
        &http,
        |c| {
            let answers = c.member_answers;
            [
                ("1xx", answers.informational),
                ("2xx", answers.success),
                ("3xx", answers.redirection),
                ("4xx", answers.client_error),
                ("5xx", answers.server_error),
            ]
        },
    );
    families.counter_each(
        "vipgate_http2_requests_total",
        "HTTP requests that came over HTTP/2 (also counted in vipgate_http_requests_total).",
        "virtual",
        &http,
        |c| c.http2_requests,
    );
    families.counter_each(
        "vipgate_http_upgrades_total",
        "Connections switched to another protocol (WebSocket) and tunnelled.",
        "virtual",
        &http,
        |c| c.upgrades,
    );
}

/// Which count of a member's departures a metric shows.
type DepartureCount = fn(&Departures) -> u64;

/// Every (pool, member) pair.
fn in_pools(status: &Status) -> impl Iterator<Item = (&str, &MemberStatus)> {
    status.pools.iter().flat_map(|pool| {
        pool.members
            .iter()
            .map(move |member| (pool.name.as_str(), member))
    })
}

/// Health per pool and member, the pools' usable members, and each
/// monitor's verdict.
fn member_health(status: &Status, families: &mut Families) {
    let in_pools = || in_pools(status);
    families.gauge(
        "vipgate_member_up",
        "1 when the member's monitors in this pool (its own rule and its node's) pass, or it has none; else 0.",
        &["pool", "member"],
        |vec| {
            for (pool, member) in in_pools() {
                set(vec, &[pool, &member.address], i64::from(member.up));
            }
        },
    );
    families.gauge(
        "vipgate_member_health",
        "1 for the member's current health in this pool: up, down, or unchecked (first probes not finished).",
        &["pool", "member", "health"],
        |vec| {
            for (pool, member) in in_pools() {
                set(vec, &[pool, &member.address, member.health], 1);
            }
        },
    );
    families.counter(
        "vipgate_member_down_total",
        "Times the member went from up to down in this pool: a member that flaps counts up here.",
        &["pool", "member"],
        |vec| {
            for (pool, member) in in_pools() {
                add(vec, &[pool, &member.address], member.times_down);
            }
        },
    );
    families.gauge(
        "vipgate_pool_member",
        "1 for each member of each pool.",
        &["pool", "member"],
        |vec| {
            for (pool, member) in in_pools() {
                set(vec, &[pool, &member.address], 1);
            }
        },
    );
    let departures: [(&str, &str, DepartureCount); 3] = [
        ("vipgate_rebalanced_total", "Connections of the member in this pool closed (with a FIN, while quiet) so that their clients reconnect to a member with room: the pool's rebalance.", |d| d.rebalanced),
        ("vipgate_lifetime_closed_total", "Connections of the member in this pool closed (while quiet) at their virtual's max_connection_lifetime.", |d| d.lifetime),
        ("vipgate_drained_total", "Connections of the member in this pool closed by the operator's timed drain of the member.", |d| d.drained),
    ];
    for (name, help, count) in departures {
        families.counter(name, help, &["pool", "member"], |vec| {
            for (pool, member) in in_pools() {
                add(vec, &[pool, &member.address], count(&member.departures));
            }
        });
    }
    let rebalancing: Vec<(&str, i64)> = status
        .pools
        .iter()
        .filter_map(|pool| {
            Some((
                pool.name.as_str(),
                i64::from(pool.rebalance.as_ref()?.active),
            ))
        })
        .collect();
    families.gauge_each(
        "vipgate_pool_rebalancing",
        "1 while a pool with rebalance has a member off its share and moves connections, else 0.",
        "pool",
        &rebalancing,
        |active| *active,
    );
    let pools: Vec<(&str, i64)> = status
        .pools
        .iter()
        .map(|pool| {
            let usable = pool.members.iter().filter(|m| m.usable).count();
            (pool.name.as_str(), usable as i64)
        })
        .collect();
    families.gauge_each(
        "vipgate_pool_members_up",
        "Members of the pool that are up and enabled.",
        "pool",
        &pools,
        |usable| *usable,
    );
    // A monitor probes a target once, whatever pools it serves.
    let monitors: BTreeMap<(&str, &str), bool> = in_pools()
        .flat_map(|(_, member)| &member.monitors)
        .map(|m| ((m.monitor.as_str(), m.target.as_str()), m.result == "up"))
        .collect();
    families.gauge(
        "vipgate_monitor_up",
        "The last verdict of one monitor on one target: 1 up, 0 down or not yet probed.",
        &["monitor", "target"],
        |vec| {
            for ((monitor, target), up) in &monitors {
                set(vec, &[monitor, target], i64::from(*up));
            }
        },
    );
}

/// What belongs to a member's address, whatever pools list it: admin
/// state, connections, connect failures, bytes.
fn member_counters(status: &Status, families: &mut Families) {
    let by_address: BTreeMap<&str, &MemberStatus> = in_pools(status)
        .map(|(_, member)| (member.address.as_str(), member))
        .collect();
    let by_name: Vec<(&str, &MemberStatus)> = by_address.into_iter().collect();
    families.gauge(
        "vipgate_member_admin_state",
        "1 for the member's admin state: enabled, disabled, forced-offline.",
        &["member", "state"],
        |vec| {
            for (name, member) in &by_name {
                set(vec, &[name, &member.state], 1);
            }
        },
    );
    families.gauge_each(
        "vipgate_member_connections_active",
        "Connections (HTTP: requests) open to the member now.",
        "member",
        &by_name,
        |m| m.counts.connections.active as i64,
    );
    families.counter_each(
        "vipgate_member_connections_total",
        "Connections established to the member.",
        "member",
        &by_name,
        |m| m.counts.connections.total,
    );
    families.counter_each(
        "vipgate_member_connect_failures_total",
        "Connects to the member that were refused, timed out or failed (TLS handshake included).",
        "member",
        &by_name,
        |m| m.counts.connect_failures,
    );
    families.counter_split(
        "vipgate_member_bytes_total",
        "Bytes carried, by direction: to_member, to_client (counted as connections close).",
        ["member", "direction"],
        &by_name,
        |m| {
            [
                ("to_member", m.counts.bytes.to_member),
                ("to_client", m.counts.bytes.to_client),
            ]
        },
    );
}

fn snat(status: &Status, families: &mut Families) {
    let labels = ["snat_pool", "address", "member"];
    // (pool, address, member) -> (in use, free) for every port set.
    let mut usage: Vec<([String; 3], usize, Option<usize>)> = Vec::new();
    for pool in &status.snat_pools {
        for address in &pool.addresses {
            for ports in &address.members {
                let key = [
                    pool.name.clone(),
                    address.address.clone(),
                    ports.member.clone(),
                ];
                usage.push((key, ports.in_use, Some(ports.free)));
            }
        }
    }
    for automap in &status.automap {
        let key = [
            format!("automap:{}", automap.virtual_name),
            automap.address.clone(),
            automap.member.clone(),
        ];
        usage.push((key, automap.in_use, None));
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
            for pool in &status.snat_pools {
                for address in &pool.addresses {
                    add(vec, &[&pool.name, &address.address], address.exhausted);
                }
            }
        },
    );
}

fn label_values(key: &[String; 3]) -> [&str; 3] {
    [key[0].as_str(), key[1].as_str(), key[2].as_str()]
}

fn config(status: &Status, families: &mut Families) {
    let config = &status.config;
    families.counter(
        "vipgate_config_reloads_total",
        "Configuration reloads (SIGHUP, POST /reload), by result: success, failure.",
        &["result"],
        |vec| {
            add(vec, &["success"], config.reloads.succeeded);
            add(vec, &["failure"], config.reloads.failed);
        },
    );
    families.counter(
        "vipgate_upgrades_total",
        "Binary upgrades the service went through, carried from process to process: a scrape that sees the other counters start again and this one grow saw an upgrade.",
        &[],
        |vec| {
            add(vec, &[], config.reloads.upgrades);
        },
    );
    families.gauge(
        "vipgate_config_last_reload_success_timestamp_seconds",
        "When the running configuration was loaded (Unix seconds).",
        &[],
        |vec| {
            set(vec, &[], config.loaded_at as i64);
        },
    );
    families.gauge(
        "vipgate_config_info",
        "1, labelled with the SHA-256 of the running configuration file.",
        &["hash"],
        |vec| {
            set(vec, &[&config.hash], 1);
        },
    );
    families.gauge(
        "vipgate_build_info",
        "1, labelled with the vipgate version.",
        &["version"],
        |vec| {
            set(vec, &[status.version], 1);
        },
    );
}
