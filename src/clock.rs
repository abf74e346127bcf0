//! A process-wide monotonic clock in milliseconds, for timestamps that live
//! in atomics (when a member came up, when a warning may be logged again).

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call in this process.
pub fn millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
