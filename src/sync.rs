//! One way to take a lock: a holder that panicked leaves the data behind
//! a poisoned mutex, and what vipgate keeps under its few locks (probe
//! verdicts, reload text) stays valid, so the lock is taken all the same.

use std::sync::{Mutex, MutexGuard};

/// The guard of `mutex`, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
