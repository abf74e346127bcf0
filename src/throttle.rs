//! Log throttling: a repeated warning (a member refusing, a limit reached,
//! EMFILE) is written at most once per interval, with the number of
//! occurrences it stands for, so a flood of failures cannot flood the log or
//! burn CPU on formatting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default interval between two lines of the same warning.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Lets one event through per interval and counts the rest.
#[derive(Debug)]
pub struct Throttle {
    interval_millis: u64,
    /// Milliseconds since process start at which the next line may be
    /// written.
    next_allowed: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::every(DEFAULT_INTERVAL)
    }
}

impl Throttle {
    /// One line a second; usable in a `static`.
    pub const fn new() -> Throttle {
        Throttle {
            interval_millis: DEFAULT_INTERVAL.as_millis() as u64,
            next_allowed: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    pub fn every(interval: Duration) -> Throttle {
        Throttle {
            interval_millis: interval.as_millis() as u64,
            next_allowed: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many
    /// were held back since the last line; `None` when it should not.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(crate::clock::millis())
    }

    fn allow_at(&self, now: u64) -> Option<u64> {
        let next = self.next_allowed.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_allowed
                .compare_exchange(
                    next,
                    now + self.interval_millis,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let throttle = Throttle::every(Duration::from_millis(1000));
        assert_eq!(throttle.allow_at(0), Some(0));
        assert_eq!(throttle.allow_at(10), None);
        assert_eq!(throttle.allow_at(999), None);
        assert_eq!(throttle.allow_at(1000), Some(2));
        assert_eq!(throttle.allow_at(1500), None);
        assert_eq!(throttle.allow_at(2500), Some(1));
    }
}
