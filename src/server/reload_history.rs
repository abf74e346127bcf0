//! The record of reloads: how many succeeded and failed, the last error,
//! and the hash of the configuration in force. Apart from `reload`, so
//! that `control` (which starts the record) and `reload` (which adds to
//! it) both read it without depending on each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sync::lock;

/// Reload counters and the configuration in force.
#[derive(Debug, Default)]
pub struct ReloadStats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Unix seconds of the last successful load (the start counts).
    last_success: AtomicU64,
    /// Unix seconds of the first load: when this instance started.
    started_at: AtomicU64,
    config_hash: Mutex<String>,
    last_error: Mutex<Option<String>>,
    /// Binary upgrades the service went through: the predecessor's count
    /// and one, in a process an upgrade started.
    upgrades: AtomicU64,
}

/// A snapshot of [`ReloadStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadCounts {
    pub succeeded: u64,
    pub failed: u64,
    /// Unix seconds of the last successful load (the start counts).
    pub last_success: u64,
    /// SHA-256 of the configuration file in force ("" when not started
    /// from a file).
    pub config_hash: String,
    /// Why the last reload failed, if it did.
    pub last_error: Option<String>,
    /// Unix seconds when this instance first loaded its configuration.
    pub started_at: u64,
    /// Binary upgrades since the service started (carried from process
    /// to process).
    pub upgrades: u64,
}

impl ReloadStats {
    pub fn counts(&self) -> ReloadCounts {
        ReloadCounts {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_success: self.last_success.load(Ordering::Relaxed),
            config_hash: lock(&self.config_hash).clone(),
            last_error: lock(&self.last_error).clone(),
            started_at: self.started_at.load(Ordering::Relaxed),
            upgrades: self.upgrades.load(Ordering::Relaxed),
        }
    }

    /// This process was started by an upgrade of one that had gone through
    /// `before` upgrades.
    pub(super) fn upgraded(&self, before: u64) {
        self.upgrades.store(before + 1, Ordering::Relaxed);
    }

    pub(super) fn loaded(&self, hash: String) {
        *lock(&self.config_hash) = hash;
        *lock(&self.last_error) = None;
        let now = crate::clock::unix_seconds();
        self.last_success.store(now, Ordering::Relaxed);
        // Only the first load sets it: that is the start.
        let _ = self
            .started_at
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(super) fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn failed(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(why);
    }
}

/// SHA-256 of a configuration text, hex.
pub fn config_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
