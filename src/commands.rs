//! What each `vipgate` subcommand does. `main.rs` parses the command line
//! and calls one of these.

use std::path::Path;

use crate::config::{self, ConfigError};
use crate::instance::{Instance, LaunchError};
use crate::server::{termination_signal, ConfigSource, StartError};

/// Why `vipgate run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] LaunchError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
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
    let (text, plan) = config::load_shared(path, share)?;
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
        let instance = Instance::bind(plan, Some(source))?;
        instance.run(stop).await;
        Ok(())
    })
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
pub fn import_f5(path: &Path) -> Result<crate::f5::Imported, ImportF5Error> {
    let bytes = std::fs::read(path).map_err(|error| ImportF5Error::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let source = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(crate::f5::import_bytes(&bytes, &source)?)
}

/// Why `vipgate ready` did not answer "ready".
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} has no [admin] table, and readiness is asked of the admin endpoint: add [admin] listen = \"127.0.0.1:9100\", or give --admin")]
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
    // A wildcard listener is asked on loopback.
    let address = if address.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        std::net::SocketAddr::new(loopback, address.port())
    } else {
        address
    };
    let unreachable = |why: String| ReadyError::Unreachable {
        address: address.to_string(),
        why,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    let (status, body) = runtime
        .block_on(async {
            tokio::time::timeout(timeout, get_ready(address))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {}",
                        humantime::format_duration(timeout)
                    ))
                })
        })
        .map_err(unreachable)?;
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

async fn get_ready(address: std::net::SocketAddr) -> Result<(u16, bytes::Bytes), String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get("/ready")
        .header(http::header::HOST, address.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
