//! The data path's threads: `settings.worker_threads` of them, each
//! running its own single-threaded tokio runtime, each with its own
//! listening socket per virtual (SO_REUSEPORT: the kernel spreads new
//! clients across them).
//!
//! Why: a connection then lives on the thread that accepted it. Its two
//! legs, its timers, the HTTP member connections it uses and its HTTP/2
//! streams (`tokio::spawn` from a worker lands on that worker) all wake
//! each other without a futex or a cache line moving to the other core,
//! and no task migrates. This is how HAProxy, nginx and Sozu keep a
//! connection on one thread. What workers share is read-mostly: the live
//! snapshot (one `ArcSwap`) and counters (atomics).
//!
//! Everything else (health probes, the admin endpoint, reloads, signals)
//! runs on the runtime that started the server.

use std::io;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    /// This thread's worker index, if it is a worker.
    static INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The worker the calling thread is, or 0 on any other thread (a test's
/// runtime, the control thread): per-worker state is indexed by this.
pub(crate) fn current() -> usize {
    INDEX.with(std::cell::Cell::get).unwrap_or(0)
}

/// How often a worker hands its gathered log lines to the writer: 100 ms.
pub const LOG_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Hands this worker's log lines over every [`LOG_FLUSH_INTERVAL`] (and
/// whenever a batch fills, see logging).
///
/// Not on every park of the runtime, as first tried: a worker below full
/// load parks several times per connection, and each hand-over wakes the
/// writer thread. Measured on TLS handshakes (wrk, 50 clients): 3.6
/// context switches per connection instead of 2.5, and 15% fewer
/// handshakes per second.
async fn flush_logs_now_and_then() {
    let mut ticks = tokio::time::interval(LOG_FLUSH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        crate::logging::flush_thread();
    }
}

/// The data path's worker threads; they stop when this is dropped (or
/// [`Workers::stop`]).
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub(crate) fn start(count: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("vipgate-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|cell| cell.set(Some(index)));
                    crate::logging::buffer_this_thread();
                    runtime.block_on(async {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = flush_logs_now_and_then() => {}
                        }
                    });
                    // Tasks still here (idle member connections) are
                    // dropped with the runtime; the drain is over by now.
                    drop(runtime);
                    crate::logging::flush_thread();
                })?;
        }
        Ok(Workers { handles, stop })
    }

    /// How many workers there are.
    pub(crate) fn count(&self) -> usize {
        self.handles.len()
    }

    /// The runtime of worker `index` (modulo the count).
    pub(crate) fn handle(&self, index: usize) -> &Handle {
        &self.handles[index % self.handles.len()]
    }

    /// Stops every worker; tasks still on them are dropped.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_worker_runs_its_tasks_on_its_own_thread() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.count(), 2);
        let tasks = tokio_util::task::TaskTracker::new();
        let (sender, mut receiver) = tokio::sync::mpsc::channel(4);
        for index in 0..2 {
            let sender = sender.clone();
            tasks.spawn_on(
                async move {
                    // A task spawned from a worker stays on it.
                    let inner = tokio::spawn(async { (current(), std::thread::current().id()) });
                    let (inner_index, inner_thread) = inner.await.unwrap();
                    assert_eq!(inner_thread, std::thread::current().id());
                    sender.send((index, current(), inner_index)).await.unwrap();
                },
                workers.handle(index),
            );
        }
        tasks.close();
        tasks.wait().await;
        let mut seen = Vec::new();
        while let Ok(found) = receiver.try_recv() {
            seen.push(found);
        }
        seen.sort();
        assert_eq!(seen, vec![(0, 0, 0), (1, 1, 1)]);
        assert_eq!(current(), 0, "not a worker: index 0");
        workers.stop();
    }
}
