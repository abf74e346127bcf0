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
//! Where they run: by default (`settings.cpu_affinity = "spread"`) the
//! kernel places them and a busy worker that finds another busy worker on
//! its CPU moves itself to a free one ([`spread`]); `"auto"` pins one per
//! CPU, a list pins them to those CPUs, `"off"` leaves it all to the
//! kernel. See `config::settings` for what each costs.
//!
//! Everything else (health probes, the admin endpoint, reloads, signals)
//! runs on the runtime that started the server.

mod cpu_idle;
mod spread;

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::config::CpuAffinity;

thread_local! {
    /// This thread's worker index, if it is a worker.
    static INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    /// This worker's part in spreading, if it spreads (`"spread"` with
    /// more than one worker, where CPU idle time can be read).
    static SPREAD: std::cell::OnceCell<(Arc<spread::Spread>, usize)> =
        const { std::cell::OnceCell::new() };
}

/// Lets a spreading worker report where it runs and move if it shares a
/// CPU with another busy worker (see [`spread`]). Called after each wait
/// for events, per new connection, per HTTP request and at each log flush:
/// a busy worker may not wait for events for a long time, having always
/// more ready work. Costs one clock read when it reported within the last
/// millisecond; nothing on other threads.
pub(crate) fn check_placement() {
    SPREAD.with(|cell| {
        if let Some((spread, index)) = cell.get() {
            spread.check(*index);
        }
    });
}

/// The worker the calling thread is, or 0 on any other thread (a test's
/// runtime, the control thread): per-worker state is indexed by this.
pub(crate) fn current() -> usize {
    INDEX.with(std::cell::Cell::get).unwrap_or(0)
}

/// Makes the calling thread count as worker `index`, as a test of
/// per-worker state needs.
#[cfg(test)]
pub(crate) fn set_current_for_test(index: usize) {
    INDEX.with(|cell| cell.set(Some(index)));
}

/// How often a worker hands its gathered log lines to the writer: 100 ms.
pub const LOG_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Hands this worker's log lines over [`LOG_FLUSH_INTERVAL`] after the
/// first line of each batch (and whenever a batch fills, see logging).
///
/// Not on every park of the runtime, as first tried: a worker below full
/// load parks several times per connection, and each hand-over wakes the
/// writer thread. Measured on TLS handshakes (wrk, 50 clients): 3.6
/// context switches per connection instead of 2.5, and 15% fewer
/// handshakes per second. Nor on a fixed 100 ms tick, as next: an idle
/// worker then woke ten times a second to flush nothing and, with
/// `cpu_affinity = "spread"`, read the CPUs' idle counters each time
/// (7.5 ms of CPU a second for an idle vipgate in the held-agents
/// benchmark, where HAProxy spent none).
async fn flush_logs_now_and_then(first_line: std::rc::Rc<tokio::sync::Notify>) {
    loop {
        first_line.notified().await;
        tokio::time::sleep(LOG_FLUSH_INTERVAL).await;
        crate::logging::flush_thread();
        check_placement();
    }
}

/// The CPUs this process may run on (its affinity mask: what `taskset`,
/// a cgroup cpuset or systemd's `CPUAffinity=` left it), ascending.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain bits; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it, and CPU_ISSET reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// A `settings.cpu_affinity` list that names CPUs this process may not
/// run on (a host fact, so `config` does not check it).
#[derive(Debug, thiserror::Error)]
#[error("settings.cpu_affinity: {problems} (hint: list CPUs from {allowed}, each once, or say \"auto\")")]
pub struct AffinityError {
    problems: String,
    allowed: String,
}

/// Checks that every CPU `affinity` names is one this process may run on;
/// `vipgate run` refuses to start otherwise, and `vipgate check` says the
/// same. Where the allowed set cannot be read, nothing is refused.
pub fn check_affinity(affinity: &CpuAffinity) -> Result<(), AffinityError> {
    let CpuAffinity::Cpus(cpus) = affinity else {
        return Ok(());
    };
    let Ok(allowed) = allowed_cpus() else {
        return Ok(());
    };
    let allowed_text = describe_cpus(&allowed);
    let problems: Vec<String> = cpus
        .iter()
        .filter(|cpu| !allowed.contains(cpu))
        .map(|cpu| format!("CPU {cpu} is not one this process may run on ({allowed_text})"))
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(AffinityError {
        problems: problems.join("; "),
        allowed: allowed_text,
    })
}

/// "CPUs 0-3, 6", for messages that say which CPUs a process may use.
pub fn describe_cpus(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        return format!("0 to {}", crate::config::MAX_CPU);
    }
    let mut ranges: Vec<String> = Vec::new();
    let mut start = cpus[0];
    let mut end = start;
    for &cpu in &cpus[1..] {
        if cpu == end + 1 {
            end = cpu;
            continue;
        }
        ranges.push(range_text(start, end));
        (start, end) = (cpu, cpu);
    }
    ranges.push(range_text(start, end));
    format!("CPUs {}", ranges.join(", "))
}

fn range_text(start: usize, end: usize) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// Lets the thread `thread` run on `cpu` only.
fn pin(thread: &std::thread::JoinHandle<()>, cpu: usize) -> io::Result<()> {
    // SAFETY: as above; the pthread_t is alive, its JoinHandle is borrowed.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::pthread_setaffinity_np(
            thread.as_pthread_t(),
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        )
    };
    match result {
        0 => Ok(()),
        error => Err(io::Error::from_raw_os_error(error)),
    }
}

/// The data path's worker threads; they stop when this is dropped (or
/// [`Workers::stop`]).
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
    /// How often a worker moved itself to a free CPU (`"spread"`).
    cpu_moves: Arc<AtomicU64>,
}

impl Workers {
    /// Starts `count` worker threads (at least one), placed on CPUs as
    /// `affinity` says. Fails if a thread cannot be started or pinned.
    pub(crate) fn start(count: usize, affinity: &CpuAffinity) -> io::Result<Workers> {
        let count = count.max(1);
        check_affinity(affinity)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
        let allowed = allowed_cpus()?;
        let stop = CancellationToken::new();
        let cpu_moves = Arc::new(AtomicU64::new(0));
        // One worker has nobody to share a CPU with.
        let spread = (*affinity == CpuAffinity::Spread && count > 1)
            .then(|| spread::Spread::new(count, Arc::clone(&cpu_moves)))
            .flatten()
            .map(Arc::new);
        let mut handles = Vec::with_capacity(count);
        let mut placement = Vec::with_capacity(count);
        for index in 0..count {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            if spread.is_some() {
                // After each wait for events; without spreading, no hook
                // at all rather than one that finds nothing to do.
                builder.on_thread_unpark(check_placement);
            }
            let runtime = builder.build()?;
            let worker_spread = spread.clone();
            handles.push(runtime.handle().clone());
            let worker_stop = stop.clone();
            let thread = std::thread::Builder::new()
                // Linux keeps 15 bytes of a thread's name: this one keeps
                // its index up to 9999 in `top -H` and /proc.
                .name(format!("vg-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|cell| cell.set(Some(index)));
                    if let Some(spread) = worker_spread {
                        SPREAD.with(|cell| {
                            let _ = cell.set((spread, index));
                        });
                    }
                    let first_line = std::rc::Rc::new(tokio::sync::Notify::new());
                    crate::logging::buffer_this_thread(std::rc::Rc::clone(&first_line));
                    runtime.block_on(async {
                        tokio::select! {
                            () = worker_stop.cancelled() => {}
                            () = flush_logs_now_and_then(first_line) => {}
                        }
                    });
                    // Tasks still here (idle member connections) are
                    // dropped with the runtime; the drain is over by now.
                    drop(runtime);
                    crate::logging::flush_thread();
                })?;
            match affinity.cpu_of(index, count, &allowed) {
                Some(cpu) => {
                    pin(&thread, cpu).map_err(|error| {
                        stop.cancel();
                        io::Error::new(
                            error.kind(),
                            format!("settings.cpu_affinity: cannot pin worker {index} to CPU {cpu}: {error}"),
                        )
                    })?;
                    placement.push(cpu.to_string());
                }
                None => placement.push("any".to_string()),
            }
        }
        tracing::info!(
            "{count} worker threads on CPUs [{}] (settings.cpu_affinity = {affinity}; this process may use {} CPUs)",
            placement.join(", "),
            allowed.len()
        );
        Ok(Workers {
            handles,
            stop,
            cpu_moves,
        })
    }

    /// How often a worker has moved itself to a free CPU so far (see
    /// [`spread`]); a counter the metrics read.
    pub(crate) fn cpu_moves(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.cpu_moves)
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
        let workers = Workers::start(2, &CpuAffinity::Off).unwrap();
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

    /// The CPUs each worker may run on, as the kernel sees it from inside.
    async fn cpus_of_each(workers: &Workers) -> Vec<Vec<usize>> {
        let mut seen = Vec::new();
        for index in 0..workers.count() {
            let task = workers
                .handle(index)
                .spawn(async { allowed_cpus().unwrap() });
            seen.push(task.await.unwrap());
        }
        seen
    }

    #[tokio::test]
    async fn workers_run_on_the_cpus_the_affinity_names() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let last = *allowed.last().unwrap();

        let workers = Workers::start(2, &CpuAffinity::Cpus(vec![last])).unwrap();
        assert_eq!(cpus_of_each(&workers).await, vec![vec![last], vec![last]]);
        workers.stop();

        // auto with one worker per CPU: each its own.
        let workers = Workers::start(allowed.len(), &CpuAffinity::Auto).unwrap();
        let each: Vec<Vec<usize>> = allowed.iter().map(|&cpu| vec![cpu]).collect();
        assert_eq!(cpus_of_each(&workers).await, each);
        workers.stop();

        // auto with more workers than CPUs, off and spread: the kernel
        // places them (spread moves a worker, but never pins it).
        for (count, affinity) in [
            (allowed.len() + 1, CpuAffinity::Auto),
            (2, CpuAffinity::Off),
            (2, CpuAffinity::Spread),
        ] {
            let workers = Workers::start(count, &affinity).unwrap();
            assert_eq!(cpus_of_each(&workers).await, vec![allowed.clone(); count]);
            workers.stop();
        }
        // The calling thread is never pinned.
        assert_eq!(allowed_cpus().unwrap(), allowed);
    }

    #[tokio::test]
    async fn a_cpu_that_cannot_be_used_is_an_error_naming_the_setting() {
        // This machine has far fewer than 1024 CPUs.
        let error = Workers::start(1, &CpuAffinity::Cpus(vec![1023])).unwrap_err();
        let text = error.to_string();
        let allowed = describe_cpus(&allowed_cpus().unwrap());
        assert_eq!(
            text,
            format!(
                "settings.cpu_affinity: CPU 1023 is not one this process may run on ({allowed}) \
                 (hint: list CPUs from {allowed}, each once, or say \"auto\")"
            )
        );
        assert_eq!(
            check_affinity(&CpuAffinity::Cpus(vec![1023]))
                .unwrap_err()
                .to_string(),
            text
        );
        let first = allowed_cpus().unwrap()[0];
        assert!(check_affinity(&CpuAffinity::Cpus(vec![first])).is_ok());
        assert!(check_affinity(&CpuAffinity::Spread).is_ok());
    }

    #[test]
    fn cpu_sets_are_described_as_ranges() {
        assert_eq!(describe_cpus(&[0, 1, 2, 3, 6, 8, 9]), "CPUs 0-3, 6, 8-9");
        assert_eq!(describe_cpus(&[4]), "CPUs 4");
        assert_eq!(describe_cpus(&[]), "0 to 1023");
    }
}
