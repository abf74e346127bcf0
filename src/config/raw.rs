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

use super::plan::{
    AdminState, MonitorType, ProxyProtocol, ServiceDownAction, TlsMode, VirtualMode,
};
use crate::pool::Algorithm;

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

/// `[persistence]`: what every cookie-persistence virtual shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersistenceSettings {
    pub secret_file: Option<Spanned<String>>,
}

/// `[snat_pools.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnatPool {
    pub addresses: Option<Spanned<Vec<Spanned<String>>>>,
    pub ports: Option<Spanned<String>>,
}

/// `[monitors.NAME]`: one health probe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    #[serde(rename = "type")]
    pub kind: MonitorType,
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<RawDuration>>,
    pub timeout: Option<Spanned<RawDuration>>,
    pub send: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<RawStatus>>,
    pub tls: Option<Spanned<RawMonitorTls>>,
}

/// An http monitor's `expect_status`: `200`, `"2xx"` or `"any"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawStatus {
    Code(i64),
    Text(String),
}

/// An http monitor's `tls`: `true` (HTTPS without checking the member's
/// certificate, as F5's https monitor) or a table as a pool's `tls`.
#[derive(Debug)]
pub enum RawMonitorTls {
    On(bool),
    Verified(RawPoolTls),
}

// By hand rather than `untagged`: an untagged enum buffers its input, and
// the `Spanned` values inside the table cannot be read back from a buffer.
impl<'de> Deserialize<'de> for RawMonitorTls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawMonitorTls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a table such as { ca = \"ca.pem\" }")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<RawMonitorTls, E> {
                Ok(RawMonitorTls::On(on))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<RawMonitorTls, M::Error> {
                let table =
                    RawPoolTls::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawMonitorTls::Verified(table))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `monitor = { all = [...] }` or `monitor = { min = N, of = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitorRule {
    pub all: Option<Vec<Spanned<String>>>,
    pub min: Option<Spanned<i64>>,
    pub of: Option<Vec<Spanned<String>>>,
}

/// `[nodes."IP"]`: monitors of a whole server address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub monitor: Option<Spanned<RawMonitorRule>>,
}

/// `[settings]`: process-wide knobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub drain_timeout: Option<Spanned<RawDuration>>,
    pub worker_threads: Option<Spanned<i64>>,
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
}

/// A pool's `tls = { ca = "...", server_name = "..." }`: re-encryption
/// toward its members.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTls {
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub verify: Option<bool>,
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
}

/// `persistence = { url_param = "jsessionid" }` or
/// `persistence = { cookie = "GWELB", max_age = "8h" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersistence {
    pub url_param: Option<Spanned<String>>,
    pub in_cookie: Option<bool>,
    pub cookie: Option<Spanned<String>>,
    pub max_age: Option<Spanned<RawDuration>>,
}

/// `tls = { mode = "passthrough", sni_routes = { ... } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub mode: TlsMode,
    pub handshake_timeout: Option<Spanned<RawDuration>>,
    pub sni_routes: Option<BTreeMap<String, Spanned<String>>>,
    pub certs: Option<Spanned<Vec<RawCert>>>,
    pub client_ca: Option<Spanned<String>>,
    pub require_client_cert: Option<bool>,
    pub alpn: Option<Vec<String>>,
    pub session_tickets: Option<Spanned<bool>>,
}

/// `{ cert = "chain.pem", key = "key.pem" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
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
