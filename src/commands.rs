//! What each `vipgate` subcommand does. `main.rs` parses the command line
//! and calls one of these.

use std::path::Path;

use crate::config::{self, ConfigError, Plan};
use crate::server::{termination_signal, Server, StartError};

/// Why `vipgate run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
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
}

/// `vipgate check`: validates the file, loads the certificates it names,
/// and describes the plan. Returns the text to print on success.
pub fn check(path: &Path) -> Result<String, CheckError> {
    let plan = config::load(path)?;
    crate::server::Snapshot::build(plan.clone(), None)?;
    let mut report = format!("{} is valid.\n\n{plan}", path.display());
    for warning in &plan.warnings {
        report.push_str(&format!("warning: {warning}\n"));
    }
    Ok(report)
}

/// `vipgate run`: serves `path` until SIGTERM/SIGINT, then drains.
pub fn run(path: &Path) -> Result<(), RunError> {
    let (text, plan) = config::load_with_text(path)?;
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    runtime(&plan)?.block_on(async {
        let server = Server::bind(plan)?.reloading_from(path, &text);
        server.run(termination_signal()).await;
        Ok(())
    })
}

/// `vipgate demo`.
pub fn demo() -> Result<(), crate::demo::DemoError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(crate::demo::DemoError::Runtime)?;
    runtime.block_on(crate::demo::run())
}

fn runtime(plan: &Plan) -> Result<tokio::runtime::Runtime, RunError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.settings.worker_threads)
        .thread_name("vipgate-worker")
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
