//! A process-wide monotonic clock in milliseconds, for timestamps that live
//! in atomics (when a member came up, when a warning may be logged again).

use std::sync::OnceLock;
use std::time::Instant;

/// Seconds since the Unix epoch (0 if the clock is set before it): for
/// cookie expiry and reload timestamps, which other instances and tools
/// read.
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Milliseconds since the first call in this process.
pub fn millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
