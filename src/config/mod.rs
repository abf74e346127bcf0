//! Configuration: `vipgate.toml` -> `raw` serde types -> one validation
//! pass (`validate`) that collects every problem with its TOML path, line,
//! column and a hint -> a [`Plan`] with every default filled in.
//!
//! A configuration with any problem is refused whole: either all of it is
//! valid and becomes a plan, or the operator gets the complete list of what
//! to fix.
//!
//! Layout: the core (settings, pools, members, virtuals) is split into
//! `raw` (the whole file as written), `plan` and `validate` (the
//! `Checker` that collects problems, and the order of the pass). Each
//! other concern, `admin`, `http`, `monitors`, `persistence`, `settings`
//! (CPU affinity), `snat` and `tls`, is one file in the same shape: its
//! plan types, its raw types, then its part of the validation. `describe`
//! prints a plan for `vipgate check`; `paths` resolves file names against
//! the configuration's folder.

mod admin;
mod balance;
mod describe;
mod http;
mod monitors;
mod paths;
mod persistence;
mod plan;
mod raw;
mod redirect;
mod settings;
mod snat;
mod tls;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use admin::{Admin, AdminAuth, DEFAULT_ADMIN_LISTEN};
pub use balance::{Rebalance, DEFAULT_LIFETIME_RATE, DEFAULT_REBALANCE_RATE, DEFAULT_TOLERANCE};
pub use http::{
    is_managed_header, HttpPlan, DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_HEADER_SIZE, HTTP_ALPN,
};
pub use monitors::{
    MonitorPlan, MonitorRule, MonitorType, NodePlan, Probe, ProbePort, StatusMatch,
    DEFAULT_MONITOR_INTERVAL, DEFAULT_MONITOR_TIMEOUT,
};
pub use persistence::{
    CookieAttributes, CookieLifetime, CookieSecure, Persistence, SameSite, SourcePersistence,
    DEFAULT_SOURCE_TIMEOUT, MIN_SECRET_BYTES,
};
pub use plan::{
    AdminState, Algorithm, ConnectionLimit, Keepalive, MemberPlan, Mode, Plan, PoolPlan, RateLimit,
    ServiceDownAction, Settings, VirtualMode, VirtualPlan, DEFAULT_BACKLOG,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_PERSISTENCE_RECORDS, DEFAULT_UPGRADE_DRAIN_TIMEOUT,
};
pub use redirect::{Redirect, Scheme};
pub use settings::{CpuAffinity, MAX_CPU};
pub use snat::{ProxyProtocol, Snat, SnatPoolPlan, SnatShare};
pub use tls::{
    CertFiles, ClientAuth, MemberVerification, Reencrypt, SessionTickets, SniRoute, Terminate, Tls,
    TlsMode, DEFAULT_HANDSHAKE_TIMEOUT,
};

/// Why a configuration could not become a [`Plan`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {error}")]
    Read {
        path: PathBuf,
        /// Shown in the message; not chained, so it is not printed twice.
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape (an
    /// unknown key, a string where a number belongs).
    #[error("{source_name}:{location}: {message}")]
    Syntax {
        source_name: String,
        location: Location,
        message: String,
    },
    /// The node's `--snat-share` does not fit a SNAT pool.
    #[error("--snat-share {share}: {message}")]
    SnatShare { share: SnatShare, message: String },
    /// The file parsed but its content does not hold together.
    #[error("{}", Problems { source_name, problems })]
    Invalid {
        source_name: String,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Every problem found, for callers that want them one by one.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// One thing wrong in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the TOML tree, e.g. `virtuals.vsCSP.pool`.
    pub key: String,
    /// Line and column of the offending value, when known.
    pub location: Option<Location>,
    /// What is wrong.
    pub message: String,
    /// What to do about it, when there is something useful to say.
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The line and column of byte `offset` in `text`.
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let before = &text.as_bytes()[..offset.min(text.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        Location { line, column }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

struct Problems<'a> {
    source_name: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(
            f,
            "{} has {count} {noun}; nothing was applied:",
            self.source_name
        )?;
        for problem in self.problems {
            match problem.location {
                Some(location) => write!(f, "\n  {}:{location}: {problem}", self.source_name)?,
                None => write!(f, "\n  {}: {problem}", self.source_name)?,
            }
        }
        Ok(())
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Plan, ConfigError> {
    load_with_text(path).map(|(_, plan)| plan)
}

/// [`load`], then this node's `share` of every SNAT pool, if it has one.
pub fn load_shared(path: &Path, share: Option<SnatShare>) -> Result<(String, Plan), ConfigError> {
    let (text, mut plan) = load_with_text(path)?;
    if let Some(share) = share {
        plan.take_snat_share(share)
            .map_err(|message| ConfigError::SnatShare { share, message })?;
    }
    Ok((text, plan))
}

/// [`load`], also returning the file's text (for its hash, say). Files the
/// configuration names by a relative path are found next to it.
pub fn load_with_text(path: &Path) -> Result<(String, Plan), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let mut plan = parse(&text, &path.display().to_string())?;
    plan.resolve_paths(path.parent().unwrap_or_else(|| Path::new("")));
    Ok((text, plan))
}

/// Validates configuration `text`; `source_name` names it in messages (a
/// file path, or something like `<demo>`). Relative paths in it stay
/// relative to the working directory; [`load`] resolves them against the
/// file's folder.
pub fn parse(text: &str, source_name: &str) -> Result<Plan, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
        source_name: source_name.to_string(),
        location: Location::of_offset(text, error.span().map_or(0, |span| span.start)),
        message: error.message().trim_end().to_string(),
    })?;
    validate::validate(raw, text).map_err(|problems| ConfigError::Invalid {
        source_name: source_name.to_string(),
        problems,
    })
}
