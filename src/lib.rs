//! vipgate: a Layer-4 load balancer for long-lived TCP connections, in the
//! place of an F5 BIG-IP virtual server.
//!
//! Layout, in the order a connection meets it:
//!
//! - [`config`]: `vipgate.toml` -> raw serde types -> one validation pass
//!   that lists every problem -> a [`config::Plan`] with nothing left
//!   optional.
//! - [`server`]: the live [`server::Snapshot`] (one `ArcSwap`), listeners,
//!   the lifecycle up to a drained shutdown, and [`server::Control`]: live
//!   reload and member admin state.
//! - [`virtual_server`]: a listener per virtual, the accept loop, admission
//!   under connection limits, and per connection: choose, connect, pump, log.
//! - [`pool`]: members, their runtime state in atomics keyed by address, and
//!   the load-balancing algorithms behind one trait.
//! - [`health`]: monitors probing members and nodes, and the verdict that
//!   marks a member up or down.
//! - [`snat`]: source addresses toward members (automap, SNAT pools with
//!   lock-free port accounting per address and member), and
//!   [`proxy_protocol`] headers that tell members the real client.
//! - [`tls`]: terminating TLS (certificates by SNI, client certificates,
//!   reload, session tickets a pair shares), re-encryption toward members,
//!   and the ClientHello parser that routes passthrough connections.
//! - [`secret`]: the secret a pair shares, and the keys derived from it.
//! - [`proxy`]: the byte pump, splice(2) zero-copy with a portable buffered
//!   fallback; half-close, resets and the idle timeout.
//! - [`http`]: HTTP virtuals: requests routed one by one with persistence
//!   (URL-parameter routes, sealed cookies), kept-alive member connections,
//!   WebSocket tunnels.
//! - [`metrics`], [`admin`]: the Prometheus exporter and the admin endpoint
//!   (`/metrics`, `/status`, member actions, `/reload`).
//! - [`throttle`], [`clock`]: one warning per second instead of a flood.
//! - [`f5`]: `vipgate import-f5`, a BIG-IP configuration to vipgate's.
//! - [`service`]: systemd readiness, reload and stop notifications, the
//!   watchdog.
//! - [`demo`], [`commands`], [`logging`]: what the `vipgate` binary runs.

pub mod admin;
pub mod clock;
pub mod commands;
pub mod config;
pub mod demo;
pub mod dial;
pub mod f5;
pub mod health;
pub mod http;
pub mod instance;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod secret;
pub mod server;
pub mod service;
pub mod snat;
pub mod stats;
pub mod status;
pub mod streams;
pub mod sync;
pub mod throttle;
pub mod tls;
pub mod virtual_server;
