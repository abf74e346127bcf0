//! vipgate: a Layer-4 load balancer for long-lived TCP connections, in the
//! place of an F5 BIG-IP virtual server. Linux only: it relies on splice(2),
//! `IP_FREEBIND`, `IP_BIND_ADDRESS_NO_PORT`, `TCP_USER_TIMEOUT` and Unix
//! signals.
//!
//! Layout, in the order a connection meets it. Modules depend downwards:
//! `config` is the bottom layer and uses no other module (so `vipgate
//! check` judges a file the same on any host), nothing in the load
//! balancer knows of the admin endpoint beside it, and a lower module that
//! must reach up is handed a function instead (`tls` claims rustls' log
//! records from `logging`). `tests/layering.rs` fails a change that makes
//! two modules, or two files of one module, depend on each other.
//! docs/architecture.md tells the life of a connection through these.
//!
//! - [`config`]: `vipgate.toml` -> raw serde types -> one validation pass
//!   that lists every problem -> a [`config::Plan`] with nothing left
//!   optional.
//! - [`instance`]: one vipgate as `vipgate run` starts it: the
//!   [`server::Server`] and the [`admin`] endpoint, wired together.
//! - [`server`]: the live [`server::Snapshot`] (one `ArcSwap`), the accept
//!   loops, the lifecycle up to a drained shutdown, and
//!   [`server::Control`]: live reload and member admin state.
//! - `workers`: one thread per core, each with its own single-threaded
//!   runtime and its own listening socket per virtual (SO_REUSEPORT): a
//!   connection lives and dies on the worker that accepted it. Whether the
//!   CPUs `settings.cpu_affinity` names exist here is checked there.
//! - `virtual_server`: a listener per virtual, admission under connection
//!   limits, and per connection: choose, dial, pump, log; HTTP virtuals
//!   are handed to [`http`].
//! - [`pool`]: members, their runtime state in atomics keyed by address, and
//!   the load-balancing algorithms behind one trait.
//! - `source_persistence`: the process's table of which member each client
//!   address used last (F5's `source_addr`), bounded, kept across reloads.
//! - `dial`: the one way to reach a member, for both kinds of virtual:
//!   SNAT source, connect, PROXY header, re-encryption, and whose fault a
//!   failure was.
//! - [`health`]: monitors probing members and nodes, and the verdict that
//!   marks a member up or down in each pool.
//! - `snat`: source addresses toward members (automap, SNAT pools with
//!   lock-free port accounting); `proxy_protocol`: headers that tell
//!   members the real client.
//! - `tls`: terminating TLS (certificates by SNI, client certificates,
//!   reload, session tickets a pair shares; the stream driven through
//!   rustls' unbuffered API), re-encryption toward members,
//!   and the ClientHello parser that routes passthrough connections;
//!   `secret`: the secret a pair shares and the keys derived from it.
//! - `streams`: the client and member sides of a connection, plain or TLS;
//!   `proxy`: the byte pump, splice(2) zero-copy or buffered; half-close,
//!   resets and the idle timeout; its `Tally` of bytes and idle time, and
//!   a request to leave.
//! - `connections`: every open TCP connection's record (`GET
//!   /connections`), which the mover in [`server`] reads to rebalance
//!   pools, drain members on a deadline and close connections at their
//!   lifetime.
//! - [`http`]: HTTP virtuals: HTTP/1.1 and HTTP/2 clients, requests routed
//!   one by one with persistence (URL-parameter routes, encrypted
//!   cookies), kept-alive HTTP/1.1 member connections, WebSocket tunnels.
//! - [`stats`]: the counters of each virtual; [`status`]: the live state as
//!   named views, which [`metrics`] (Prometheus) and [`admin`] (the status
//!   page, `/status`, `/ready`, member actions, `/reload`) both read.
//! - [`f5`]: `vipgate import-f5`, a BIG-IP configuration to vipgate's.
//! - [`service`]: systemd readiness, reload and stop notifications, the
//!   watchdog; [`state_file`]: the operator's member decisions, kept
//!   across restarts (and shared with a pair's peers by `admin`);
//!   [`upgrade`]: a binary upgrade that hands the listening sockets, the
//!   live state and the established TCP connections to the new process.
//! - [`commands`], [`logging`], [`demo`]: what the `vipgate` binary runs.
//! - `throttle`, `clock`, `sync`, `stop_signal`: one warning a second
//!   instead of a flood, a cheap clock, one way to take a lock, and the
//!   shutdown's two steps (`Shutdown`: draining, then closing; and
//!   handing over, which only connections that can move hear) with a
//!   connection's lock-free watch on them or on its member going down.

// Kept by clippy (-D warnings in CI): every unsafe block says why it is
// sound, and library code outside tests never unwraps.
#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

#[cfg(not(target_os = "linux"))]
compile_error!("vipgate runs on Linux only: it relies on splice(2), IP_FREEBIND, IP_BIND_ADDRESS_NO_PORT and TCP_USER_TIMEOUT");

pub mod admin;
pub(crate) mod clock;
pub mod commands;
pub mod config;
pub(crate) mod connections;
pub mod demo;
pub(crate) mod dial;
pub mod f5;
pub mod health;
pub mod http;
pub mod instance;
pub mod logging;
pub mod metrics;
pub mod pool;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub(crate) mod secret;
pub mod server;
pub mod service;
pub(crate) mod snat;
pub(crate) mod source_persistence;
pub mod state_file;
pub mod stats;
pub mod status;
pub(crate) mod stop_signal;
pub(crate) mod streams;
pub(crate) mod sync;
pub(crate) mod throttle;
pub(crate) mod tls;
pub mod upgrade;
pub(crate) mod virtual_server;
pub mod workers;
