//! A process-wide monotonic clock in milliseconds (or microseconds), for
//! timestamps that live in atomics (when a member came up, when a warning
//! may be logged again, where a worker was last seen).

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

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The moment [`millis`] and [`micros`] count from: their first call.
fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process.
pub fn millis() -> u64 {
    start().elapsed().as_millis() as u64
}

/// Microseconds since the first call in this process (of this or
/// [`millis`]).
pub fn micros() -> u64 {
    start().elapsed().as_micros() as u64
}
