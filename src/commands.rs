//! What each `vipgate` subcommand does. `main.rs` parses the command line
//! and calls one of these.

use std::path::Path;
use std::sync::Arc;

use crate::config::{self, ConfigError};
use crate::instance::{Instance, LaunchError};
use crate::server::{termination_signal, ConfigSource, Control, Inherited, StartError};

/// Why `vipgate run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] LaunchError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot take over from the old process: {0}")]
    Upgrade(std::io::Error),
}

/// Why `vipgate check` found a configuration unusable.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Valid, but its certificates or keys cannot be loaded.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Valid, but the admin token file is missing or too short.
    #[error(transparent)]
    Admin(#[from] crate::admin::EndpointError),
    /// Valid, but it names CPUs this host does not let vipgate run on.
    #[error(transparent)]
    Host(#[from] crate::workers::AffinityError),
    /// Valid, but its state file cannot be read.
    #[error(transparent)]
    StateFile(#[from] crate::state_file::StateFileError),
}

/// `vipgate check`: validates the file, loads the certificates it names,
/// and describes the plan. Returns the text to print on success.
pub fn check(path: &Path, share: Option<config::SnatShare>) -> Result<String, CheckError> {
    let (_, plan) = config::load_shared(path, share)?;
    // Everything `run` reads: certificates, secrets, monitor TLS and ICMP,
    // the admin token.
    crate::server::Snapshot::build(plan.clone(), None)?;
    crate::admin::token(&plan.admin)?;
    crate::workers::check_affinity(&plan.settings.cpu_affinity)?;
    let state_file = match &plan.settings.state_file {
        Some(path) => crate::state_file::check(path)?,
        None => None,
    };
    let mut report = format!("{} is valid.\n\n{plan}", path.display());
    for warning in plan.warnings.iter().chain(&state_file) {
        report.push_str(&format!("warning: {warning}\n"));
    }
    Ok(report)
}

/// `vipgate run`: serves `path` until SIGTERM/SIGINT, then drains. With
/// `share`, this node leases only its slice of every SNAT pool's ports.
pub fn run(path: &Path, share: Option<config::SnatShare>) -> Result<(), RunError> {
    crate::upgrade::remember_how_started();
    // Started by a binary upgrade: take over from the old process, which
    // serves on if this one cannot.
    let mut successor = None;
    let (inherited, admin_socket) = match std::env::var_os(crate::upgrade::FROM) {
        None => (Inherited::default(), None),
        Some(socket) => {
            let (inherited, admin, taking_over) =
                crate::upgrade::inherit(Path::new(&socket)).map_err(RunError::Upgrade)?;
            successor = Some(taking_over);
            (inherited, admin)
        }
    };
    let refuse = |successor: Option<crate::upgrade::Successor>, why: String| {
        if let Some(successor) = successor {
            successor.refuse(&why);
        }
    };
    let (text, plan) = match config::load_shared(path, share) {
        Ok(loaded) => loaded,
        Err(error) => {
            refuse(successor, error.to_string());
            return Err(error.into());
        }
    };
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    let source = ConfigSource {
        path: path.to_path_buf(),
        text,
        snat_share: share,
    };
    runtime()?.block_on(async {
        let stop = termination_signal();
        let mut instance =
            match Instance::bind_inherited(plan, Some(source), inherited, admin_socket) {
                Ok(instance) => instance,
                Err(error) => {
                    refuse(successor, error.to_string());
                    return Err(error.into());
                }
            };
        if let Some(successor) = successor {
            let serving = instance.when_serving();
            let control = instance.control();
            tokio::spawn(async move {
                if serving.await.is_ok() {
                    take_over(successor, control).await;
                }
            });
        }
        instance.run(stop).await;
        Ok(())
    })
}

/// The new process's side of a binary upgrade, once it serves: it tells
/// systemd and the old process so, then takes the old process's
/// established TCP connections.
async fn take_over(mut successor: crate::upgrade::Successor, control: Arc<Control>) {
    crate::service::ServiceManager::from_environment().main_process();
    if let Err(error) = successor.ready() {
        tracing::error!(%error, "binary upgrade: cannot tell the old process this one serves; it serves on beside this one");
        return;
    }
    tracing::info!(
        "binary upgrade: serving in place of the old process; taking its TCP connections"
    );
    let taking = tokio::task::spawn_blocking(move || {
        successor.take_connections(|batch| control.adopt_connections(batch))
    });
    match taking.await {
        Ok(Ok(count)) => tracing::info!(
            connections = count,
            "binary upgrade: took over the old process's TCP connections"
        ),
        // A vipgate from before connections moved says nothing more.
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => tracing::info!(
            "binary upgrade: the old process hands no connections over (an older vipgate); they drain there"
        ),
        Ok(Err(error)) => {
            tracing::error!(%error, "binary upgrade: taking the old process's connections failed; those not received closed with it")
        }
        Err(error) => {
            tracing::error!(%error, "binary upgrade: taking the old process's connections failed")
        }
    }
}

/// `vipgate demo`.
pub fn demo() -> Result<(), crate::demo::DemoError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(crate::demo::DemoError::Runtime)?;
    runtime.block_on(async {
        let stop = termination_signal();
        let (plan, introduction) = crate::demo::start().await?;
        let instance = Instance::bind(plan, None)?;
        println!("{introduction}");
        instance.run(stop).await;
        Ok(())
    })
}

/// The runtime of everything but the data path (health probes, the admin
/// endpoint, reloads, signals): one thread. The data path runs on the
/// server's worker threads, `settings.worker_threads` of them.
fn runtime() -> Result<tokio::runtime::Runtime, RunError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)
}

/// Why `vipgate import-f5` could not convert a file.
#[derive(Debug, thiserror::Error)]
pub enum ImportF5Error {
    #[error("cannot read {path}: {error}")]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Import(#[from] crate::f5::ImportError),
}

/// `vipgate import-f5 FILE`: the converted configuration and the report
/// on what changed and what was not carried over.
pub fn import_f5(paths: &[std::path::PathBuf]) -> Result<crate::f5::Imported, ImportF5Error> {
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let bytes = std::fs::read(path).map_err(|error| ImportF5Error::Read {
            path: path.to_path_buf(),
            error,
        })?;
        // One file: its name; several: as given, so that two partitions'
        // bigip.conf stay apart.
        let source = if paths.len() == 1 {
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        } else {
            path.display().to_string()
        };
        files.push((source, bytes));
    }
    let borrowed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .collect();
    Ok(crate::f5::import_files(&borrowed)?)
}

/// Why `vipgate ready` did not answer "ready".
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} has no [admin] table, and `vipgate ready` and `vipgate upgrade` ask the admin endpoint: add [admin] listen = \"127.0.0.1:9100\", or give --admin (an upgrade can also be started with kill -USR2 <pid>)")]
    NoAdmin(String),
    #[error("\"{0}\" is not an admin address; give it as 127.0.0.1:9100")]
    Address(String),
    #[error("cannot ask {address}/ready: {why}")]
    Unreachable { address: String, why: String },
    #[error("vipgate at {address} is not ready: {}", missing.join("; "))]
    NotReady {
        address: String,
        missing: Vec<String>,
    },
}

/// `vipgate ready`: asks the admin endpoint (`admin`, or the one in the
/// configuration at `config`) whether every virtual can serve. Returns
/// what to print when it can.
pub fn ready(
    admin: Option<&str>,
    config: &Path,
    timeout: std::time::Duration,
) -> Result<String, ReadyError> {
    let address = admin_address(admin, config)?;
    let unreachable = |why: String| ReadyError::Unreachable {
        address: address.to_string(),
        why,
    };
    let (status, body) =
        call_admin(address, http::Method::GET, "/ready", None, timeout).map_err(unreachable)?;
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| unreachable(format!("the answer is not JSON: {e}")))?;
    match status {
        200 => Ok(format!("vipgate at {address} is ready")),
        503 => Err(ReadyError::NotReady {
            address: address.to_string(),
            missing: answer["missing"]
                .as_array()
                .map(|lines| {
                    lines
                        .iter()
                        .filter_map(|l| l.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        }),
        other => Err(unreachable(format!("unexpected status {other}"))),
    }
}

/// Why `vipgate upgrade` did not upgrade.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeCommandError {
    #[error(transparent)]
    Admin(#[from] ReadyError),
    #[error("cannot ask {address} to upgrade: {why}")]
    Unreachable { address: String, why: String },
    #[error("{0}")]
    Failed(String),
}

/// `vipgate upgrade`: asks the running vipgate (its admin endpoint:
/// `admin`, or the one in the configuration at `config`, whose token it
/// reads) to start the binary now at its path and hand over to it; waits
/// for the answer. Returns what to print when it worked.
pub fn upgrade(
    admin: Option<&str>,
    config: &Path,
    timeout: std::time::Duration,
) -> Result<String, UpgradeCommandError> {
    let address = admin_address(admin, config)?;
    let token = config::load(config)
        .ok()
        .and_then(|plan| crate::admin::token(&plan.admin).ok().flatten());
    let (status, body) = call_admin(address, http::Method::POST, "/upgrade", token, timeout)
        .map_err(|why| UpgradeCommandError::Unreachable {
            address: address.to_string(),
            why,
        })?;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match status {
        200 => Ok(format!(
            "vipgate at {address} upgraded: process {} serves now and took {} TCP connections over in {} ms; the old one drains the rest (TLS ended there, HTTP) and exits",
            answer["successor_pid"], answer["connections_moved"], answer["took_ms"]
        )),
        _ => Err(UpgradeCommandError::Failed(
            answer["error"]
                .as_str()
                .map_or_else(|| format!("status {status}"), str::to_string),
        )),
    }
}

/// The admin endpoint to ask: `admin` (`127.0.0.1:9100` or
/// `http://...`), or the one the configuration at `config` names; a
/// wildcard listener is asked on loopback.
fn admin_address(admin: Option<&str>, config: &Path) -> Result<std::net::SocketAddr, ReadyError> {
    let address = match admin {
        Some(text) => {
            let text = text.trim_start_matches("http://").trim_end_matches('/');
            text.parse::<std::net::SocketAddr>()
                .map_err(|_| ReadyError::Address(text.to_string()))?
        }
        None => match config::load(config)?.admin {
            config::Admin::On { listen, .. } => listen,
            config::Admin::Off => return Err(ReadyError::NoAdmin(config.display().to_string())),
        },
    };
    if !address.ip().is_unspecified() {
        return Ok(address);
    }
    let loopback: std::net::IpAddr = if address.is_ipv4() {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        std::net::Ipv6Addr::LOCALHOST.into()
    };
    Ok(std::net::SocketAddr::new(loopback, address.port()))
}

/// One call to an admin endpoint, within `timeout`: status and body.
fn call_admin(
    address: std::net::SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<String>,
    timeout: std::time::Duration,
) -> Result<(u16, bytes::Bytes), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(crate::admin::client::call(
        address,
        method,
        path,
        token.as_deref(),
        bytes::Bytes::new(),
        timeout,
    ))
}
