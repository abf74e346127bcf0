//! The configuration file exactly as written: serde types that mirror the
//! TOML, with every value the operator typed kept in a [`Spanned`] so the
//! validation pass can point at its line and column.
//!
//! Nothing here is interpreted. Durations, addresses and limits stay strings
//! and integers so that a bad value becomes one entry in the validation
//! report instead of stopping the parse at the first mistake.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::monitors::{RawMonitor, RawMonitorRule, RawNode};
use super::persistence::{RawPersistence, RawPersistenceSettings};
use super::plan::{AdminState, Algorithm, ServiceDownAction, VirtualMode};
use super::snat::ProxyProtocol;
use super::snat::RawSnatPool;
use super::tls::{RawPoolTls, RawTls};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub settings: RawSettings,
    #[serde(default)]
    pub pools: BTreeMap<String, Spanned<RawPool>>,
    #[serde(default)]
    pub virtuals: BTreeMap<String, Spanned<RawVirtual>>,
    #[serde(default)]
    pub monitors: BTreeMap<String, Spanned<RawMonitor>>,
    #[serde(default)]
    pub nodes: BTreeMap<String, Spanned<RawNode>>,
    #[serde(default)]
    pub snat_pools: BTreeMap<String, Spanned<RawSnatPool>>,
    pub persistence: Option<Spanned<RawPersistenceSettings>>,
    pub admin: Option<Spanned<super::admin::RawAdmin>>,
}

/// `[settings]`: process-wide knobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub drain_timeout: Option<Spanned<RawDuration>>,
    pub worker_threads: Option<Spanned<i64>>,
    pub cpu_affinity: Option<Spanned<super::settings::RawCpuAffinity>>,
    pub state_file: Option<Spanned<String>>,
    pub upgrade_drain_timeout: Option<Spanned<RawDuration>>,
    pub persistence_records: Option<Spanned<i64>>,
    pub withdraw_delay: Option<Spanned<RawDuration>>,
    pub paced_drain: Option<bool>,
}

/// `[pools.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub algorithm: Option<Algorithm>,
    pub members: Option<Spanned<Vec<Spanned<RawMember>>>>,
    pub monitor: Option<Spanned<RawMonitorRule>>,
    pub action_on_service_down: Option<ServiceDownAction>,
    pub slow_ramp: Option<Spanned<RawDuration>>,
    pub min_active_members: Option<Spanned<i64>>,
    pub tls: Option<Spanned<RawPoolTls>>,
    pub rebalance: Option<super::balance::RawRebalance>,
}

/// One entry of a pool's `members` array.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub address: Spanned<String>,
    pub connection_limit: Option<Spanned<i64>>,
    pub monitor: Option<Spanned<RawMonitorRule>>,
    pub ratio: Option<Spanned<i64>>,
    pub priority: Option<Spanned<i64>>,
    pub state: Option<AdminState>,
    pub connect_rate_limit: Option<Spanned<i64>>,
    pub route: Option<Spanned<String>>,
}

/// `[virtuals.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtual {
    pub listen: Option<Spanned<String>>,
    pub pool: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<RawDuration>>,
    pub connect_timeout: Option<Spanned<RawDuration>>,
    pub connection_limit: Option<Spanned<i64>>,
    pub client_connection_limit: Option<Spanned<i64>>,
    pub client_rate_limit: Option<Spanned<i64>>,
    pub max_connection_lifetime: Option<Spanned<RawDuration>>,
    pub log_interval: Option<Spanned<RawDuration>>,
    pub backlog: Option<Spanned<i64>>,
    pub zero_copy: Option<bool>,
    pub tcp_keepalive: Option<Spanned<RawKeepalive>>,
    pub snat: Option<Spanned<String>>,
    pub expected_clients: Option<Spanned<i64>>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub tls: Option<Spanned<RawTls>>,
    pub mode: Option<Spanned<VirtualMode>>,
    pub persistence: Option<Spanned<RawPersistence>>,
    pub header_timeout: Option<Spanned<RawDuration>>,
    pub keepalive_timeout: Option<Spanned<RawDuration>>,
    pub max_header_size: Option<Spanned<i64>>,
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub request_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    pub response_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    pub redirect: Option<Spanned<super::redirect::RawRedirect>>,
}

/// `tcp_keepalive = { idle = "60s", interval = "10s", probes = 6 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepalive {
    pub idle: Option<Spanned<RawDuration>>,
    pub interval: Option<Spanned<RawDuration>>,
    pub probes: Option<Spanned<i64>>,
}

/// A duration as written: `"600s"`, `"1m 30s"`, or a bare number of seconds
/// (`600`, as F5 writes it).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(i64),
    Text(String),
}
