//! `settings.cpu_affinity = "spread"` (the default): busy workers on CPUs
//! of their own, without pinning them.
//!
//! Why: where other busy threads share the cores (the benchmark runs wrk
//! and nginx beside two workers on two cores; a production host has its
//! own daemons and interrupt work), the kernel at times leaves both
//! workers on one core for seconds while the other core has idle time.
//! Its load balancer does not move a task whose load is larger than the
//! other core's spare capacity, so nothing undoes it. The two workers then
//! take turns in scheduler slices of about 4.5 ms, and every connection of
//! the waiting worker waits with it: HTTP p99 went from 1.1 ms to 3-4.5 ms
//! (`perf sched`: the workers waited up to 8 ms for their core while wrk
//! and nginx waited at most 0.4). Pinning (`"auto"`) avoids it, but a
//! pinned worker cannot leave a core another busy thread needs, which
//! cost the benchmark's TLS handshake and bulk rows 19-33%.
//!
//! So the kernel places the workers, and this undoes only that one case.
//! Each worker reports the CPU it runs on (when its runtime wakes from
//! waiting for events, per new connection, per HTTP request and at each
//! log flush), at most once a millisecond; a worker reported within the
//! last 2 ms is busy there. A worker that finds another busy worker on its
//! own CPU, and that CPU idle less than 10% of the time lately (measured
//! over 10 ms or more, 200 ms where only `/proc/stat` tells; see
//! [`super::cpu_idle`]), moves itself to an allowed CPU with no busy
//! worker: its affinity becomes that CPU alone, which makes the kernel
//! migrate it before the call returns, and at once the whole allowed set
//! again, so the kernel stays free to place it from then on. A worker
//! looks at most once per 10 ms, so should the kernel keep moving it back,
//! the two trade places no faster than that. What it costs: a clock read
//! per report attempt, and while busy a reading of its CPU's idle time
//! every 10 ms (a few small files, about 10 us).
//!
//! Why the idle test: two workers on one CPU only wait for each other if
//! that CPU is full. In the benchmark's TLS handshake row, wrk (one
//! thread) kept one core busy and both workers shared the other with 20%
//! of it idle; moving a worker onto wrk's core there cost 12-15% of the
//! handshakes. In the slow HTTP case the workers' core was never idle.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::cpu_idle::IdleClock;

/// A worker reports where it runs at most this often: 1 ms.
const REPORT_INTERVAL_MICROS: u64 = 1_000;

/// A worker reported on a CPU within this long is busy there: 2 ms.
const BUSY_WITHIN_MICROS: u64 = 2_000;

/// A worker looks for a CPU to move to at most this often: 10 ms.
const MOVE_INTERVAL_MICROS: u64 = 10_000;

/// Two workers on a CPU idle less than this share of the time (percent)
/// wait for each other: 10.
const FULL_BELOW_PERCENT: u64 = 10;

/// A reading of a CPU's idle time older than this is not judged by: 1 s.
const MAX_WINDOW_MICROS: u64 = 1_000_000;

/// Bits of a report that hold the time; the CPU number sits above them.
/// 2^48 microseconds is almost nine years of uptime.
const TIME_BITS: u32 = 48;

/// What one worker last reported. Each on its own cache line: a worker
/// writes its own every millisecond while busy and only reads the others'.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Report {
    /// CPU and [`crate::clock::micros`] of the last report, packed (see
    /// [`pack`]); 0 before the first.
    seen: AtomicU64,
    /// When this worker last looked for a CPU to move to; 0 never.
    looked: AtomicU64,
    /// Its readings of each CPU's idle time, by CPU number (one every
    /// 10 ms while busy). Only its own thread takes the lock, at most once
    /// a millisecond.
    readings: Mutex<Vec<Reading>>,
}

/// A CPU's idle time (microseconds) as read at `at`; `at` 0: none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Reading {
    at: u64,
    idle: u64,
}

/// The reports of one set of workers, and how often one of them moved.
#[derive(Debug)]
pub(crate) struct Spread {
    reports: Box<[Report]>,
    moves: Arc<AtomicU64>,
    idle: IdleClock,
}

impl Spread {
    /// For `workers` workers; every move adds one to `moves`. `None`
    /// (said once in the log) where no CPU's idle time can be read: then
    /// nothing could tell a full CPU, and the workers need not report at
    /// all.
    pub(crate) fn new(workers: usize, moves: Arc<AtomicU64>) -> Option<Spread> {
        let Some(idle) = IdleClock::detect() else {
            tracing::info!("settings.cpu_affinity = \"spread\": no CPU idle time can be read here (no cpuidle driver in /sys, /proc/stat hidden, as by systemd's ProcSubset=pid), so workers will not move; the kernel alone places them");
            return None;
        };
        Some(Spread {
            reports: (0..workers).map(|_| Report::default()).collect(),
            moves,
            idle,
        })
    }

    /// Called on worker `index`'s own thread: reports where it runs and,
    /// if another busy worker shares that CPU and it is full, moves to an
    /// allowed CPU where no worker is busy. Returns the CPU it moved to.
    pub(crate) fn check(&self, index: usize) -> Option<usize> {
        // Never 0, which means "no report yet".
        let now = crate::clock::micros().max(1);
        self.check_at(index, now, current_cpu, |cpu| self.idle.idle_micros(cpu))
    }

    /// [`Spread::check`] at time `now`, on the CPU `cpu` says, with the
    /// idle times `idle_of` reads.
    fn check_at(
        &self,
        index: usize,
        now: u64,
        cpu: impl FnOnce() -> Option<usize>,
        idle_of: impl Fn(usize) -> Option<u64>,
    ) -> Option<usize> {
        let mine = self.reports.get(index)?;
        if let Some((_, at)) = unpack(mine.seen.load(Relaxed)) {
            if now.saturating_sub(at) < REPORT_INTERVAL_MICROS {
                return None;
            }
        }
        let cpu = cpu()?;
        mine.seen.store(pack(cpu, now), Relaxed);
        let others = self
            .reports
            .iter()
            .enumerate()
            .filter(move |&(other, _)| other != index)
            .filter_map(|(_, report)| unpack(report.seen.load(Relaxed)));
        let min_window = self.idle.min_window_micros();
        if !crowded(cpu, others.clone(), now) {
            // Keep a recent reading of this CPU's idle time, so that once
            // it is crowded, whether it is full can be told at once.
            let mut readings = mine.readings.lock().ok()?;
            if reading_due(&readings, cpu, now, min_window) {
                if let Some(idle) = idle_of(cpu) {
                    record(&mut readings, cpu, Reading { at: now, idle });
                }
            }
            return None;
        }
        let looked = mine.looked.load(Relaxed);
        if looked != 0 && now.saturating_sub(looked) < MOVE_INTERVAL_MICROS {
            return None;
        }
        mine.looked.store(now, Relaxed);
        let idle = idle_of(cpu)?;
        let full = {
            let mut readings = mine.readings.lock().ok()?;
            is_full(&mut readings, cpu, now, idle, min_window)
        };
        if !full {
            return None;
        }
        // Read now rather than at start: an operator may have narrowed the
        // set since (taskset, a cgroup), and the move must not widen it.
        let allowed = super::allowed_cpus().ok()?;
        let target = free_cpus(cpu, others, now, &allowed).next()?;
        match move_to(target, &allowed) {
            Ok(()) => {
                self.moves.fetch_add(1, Relaxed);
                Some(target)
            }
            Err(error) => {
                tracing::debug!(
                    "worker {index} could not move from CPU {cpu} to {target}: {error}"
                );
                None
            }
        }
    }
}

/// A report of `cpu` at `micros`.
fn pack(cpu: usize, micros: u64) -> u64 {
    (cpu as u64) << TIME_BITS | (micros & ((1 << TIME_BITS) - 1))
}

/// The CPU and time of a report; `None` for "no report yet".
fn unpack(report: u64) -> Option<(usize, u64)> {
    (report != 0).then_some((
        (report >> TIME_BITS) as usize,
        report & ((1 << TIME_BITS) - 1),
    ))
}

/// Whether one of `others` (CPU, time of report) is busy on `cpu`.
fn crowded(cpu: usize, mut others: impl Iterator<Item = (usize, u64)>, now: u64) -> bool {
    others.any(|(other_cpu, at)| other_cpu == cpu && busy(at, now))
}

/// The allowed CPUs other than `cpu` where none of the `others` (CPU,
/// time of report) is busy.
fn free_cpus<'a>(
    cpu: usize,
    others: impl Iterator<Item = (usize, u64)> + Clone + 'a,
    now: u64,
    allowed: &'a [usize],
) -> impl Iterator<Item = usize> + 'a {
    allowed
        .iter()
        .copied()
        .filter(move |&candidate| candidate != cpu && !crowded(candidate, others.clone(), now))
}

/// Whether `cpu`, idle `idle` microseconds in all as read at `now`, was
/// idle less than [`FULL_BELOW_PERCENT`] of the time since the earlier
/// reading in `readings`. That reading must be at least `min_window` old
/// (else it is kept for a later look and the answer is no) and at most
/// [`MAX_WINDOW_MICROS`]; `now`'s reading replaces it.
fn is_full(readings: &mut Vec<Reading>, cpu: usize, now: u64, idle: u64, min_window: u64) -> bool {
    if !reading_due(readings, cpu, now, min_window) {
        return false;
    }
    let earlier = readings.get(cpu).copied().unwrap_or_default();
    let window = now.saturating_sub(earlier.at);
    record(readings, cpu, Reading { at: now, idle });
    earlier.at != 0
        && window <= MAX_WINDOW_MICROS
        && idle.saturating_sub(earlier.idle).saturating_mul(100)
            < window.saturating_mul(FULL_BELOW_PERCENT)
}

/// Whether `readings` has no reading of `cpu` or one at least
/// `min_window` old at `now`.
fn reading_due(readings: &[Reading], cpu: usize, now: u64, min_window: u64) -> bool {
    readings
        .get(cpu)
        .is_none_or(|earlier| earlier.at == 0 || now.saturating_sub(earlier.at) >= min_window)
}

/// Keeps `reading` as the latest of `cpu`.
fn record(readings: &mut Vec<Reading>, cpu: usize, reading: Reading) {
    if readings.len() <= cpu {
        readings.resize(cpu + 1, Reading::default());
    }
    readings[cpu] = reading;
}

fn busy(at: u64, now: u64) -> bool {
    now.saturating_sub(at) < BUSY_WITHIN_MICROS
}

/// The CPU the calling thread runs on (glibc reads it from the thread's
/// rseq area: no system call).
fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments; returns -1 on failure.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Moves the calling thread to `target`, then lets it run on `allowed`
/// again.
fn move_to(target: usize, allowed: &[usize]) -> io::Result<()> {
    set_affinity(&[target])?;
    set_affinity(allowed).inspect_err(|error| {
        // Left pinned to `target`: it still runs, but the kernel can no
        // longer move it. Say so, once per occurrence (rare: the set was
        // just read).
        tracing::warn!("a worker could not be given back CPUs {allowed:?} after moving to CPU {target}: {error}");
    })
}

/// Lets the calling thread run on `cpus` only.
fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain bits; CPU_SET writes within it for CPU
    // numbers below CPU_SETSIZE (others are skipped), and
    // sched_setaffinity reads size_of::<cpu_set_t>() bytes of it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus.iter().filter(|&&cpu| cpu < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    #[test]
    fn a_report_keeps_cpu_and_time() {
        assert_eq!(unpack(0), None);
        assert_eq!(unpack(pack(0, 1)), Some((0, 1)));
        assert_eq!(unpack(pack(1023, NOW)), Some((1023, NOW)));
        // Nine years in: the time wraps, the CPU survives.
        assert_eq!(unpack(pack(7, 1 << TIME_BITS | 5)), Some((7, 5)));
    }

    /// `free_cpus` of a worker on CPU 0 when the others were last seen
    /// as `others`.
    fn free(others: &[(usize, u64)], allowed: &[usize]) -> Vec<usize> {
        free_cpus(0, others.iter().copied(), NOW, allowed).collect()
    }

    #[test]
    fn free_cpus_are_the_allowed_ones_no_busy_worker_is_on() {
        assert!(crowded(0, [(0, NOW - 10)].into_iter(), NOW));
        assert!(!crowded(0, [(1, NOW - 10)].into_iter(), NOW));
        assert_eq!(free(&[(0, NOW - 10), (1, NOW - 10)], &[0, 1, 2, 3]), [2, 3]);
        // Only allowed CPUs, never the worker's own.
        assert_eq!(free(&[(0, NOW - 10), (1, NOW - 10)], &[0, 1, 3]), [3]);
        // A worker last seen 2 ms ago or more is waiting for events, not
        // competing: it neither crowds a CPU nor makes one busy.
        assert!(!crowded(
            0,
            [(0, NOW - BUSY_WITHIN_MICROS)].into_iter(),
            NOW
        ));
        assert_eq!(free(&[(0, NOW - 1), (1, NOW - 5_000)], &[0, 1]), [1]);
        // Every CPU busy (three workers on two CPUs), or one CPU allowed.
        assert!(free(&[(0, NOW - 10), (1, NOW - 10)], &[0, 1]).is_empty());
        assert!(free(&[(0, NOW - 10)], &[0]).is_empty());
    }

    #[test]
    fn fullness_is_judged_on_two_readings_far_enough_apart() {
        const WINDOW: u64 = 20_000;
        let mut readings = Vec::new();
        // First reading of CPU 3: a baseline, no verdict.
        assert!(!is_full(&mut readings, 3, NOW, 500_000, WINDOW));
        assert_eq!(
            readings[3],
            Reading {
                at: NOW,
                idle: 500_000
            }
        );
        // Too soon: the baseline is kept.
        assert!(!is_full(&mut readings, 3, NOW + 10_000, 500_000, WINDOW));
        assert_eq!(
            readings[3],
            Reading {
                at: NOW,
                idle: 500_000
            }
        );
        // 20 ms later, idle 1.9 ms of them (9.5%): full.
        assert!(is_full(&mut readings, 3, NOW + 20_000, 501_900, WINDOW));
        // 20 ms more, idle 2 ms (10%): not full.
        assert!(!is_full(&mut readings, 3, NOW + 40_000, 503_900, WINDOW));
        // A baseline older than a second is not judged by, only renewed.
        let late = NOW + 40_000 + MAX_WINDOW_MICROS + 1;
        assert!(!is_full(&mut readings, 3, late, 503_900, WINDOW));
        assert_eq!(
            readings[3],
            Reading {
                at: late,
                idle: 503_900
            }
        );
        // A counter that went back (a CPU taken offline and back) reads as
        // never idle.
        assert!(is_full(&mut readings, 3, late + WINDOW, 0, WINDOW));
    }

    #[test]
    fn moving_puts_the_thread_on_the_cpu_then_frees_it() {
        std::thread::spawn(|| {
            let allowed = crate::workers::allowed_cpus().unwrap();
            for &cpu in &allowed {
                // Pinned, the kernel has no choice: it runs there now.
                set_affinity(&[cpu]).unwrap();
                assert_eq!(current_cpu(), Some(cpu));
                set_affinity(&allowed).unwrap();
            }
            move_to(*allowed.last().unwrap(), &allowed).unwrap();
            assert_eq!(crate::workers::allowed_cpus().unwrap(), allowed);
            // A CPU outside the set is refused, and nothing changes.
            assert!(move_to(libc::CPU_SETSIZE as usize - 1, &allowed).is_err());
            assert_eq!(crate::workers::allowed_cpus().unwrap(), allowed);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_crowded_worker_on_a_full_cpu_moves_itself_and_stays_free_to_roam() {
        // On a thread of its own: its affinity is what changes.
        std::thread::spawn(|| {
            let allowed = crate::workers::allowed_cpus().unwrap();
            assert!(
                allowed.len() >= 2,
                "this test needs two CPUs; this process may use {allowed:?}"
            );
            let (first, second) = (allowed[0], allowed[1]);
            let moves = Arc::new(AtomicU64::new(0));
            let spread = Spread::new(2, Arc::clone(&moves)).expect("idle time readable here");
            let step = spread.idle.min_window_micros().max(MOVE_INTERVAL_MICROS);
            let on_first = || Some(first);
            // The first CPU is never idle.
            let never_idle = |_cpu: usize| Some(0);
            let busy_on_first = |at: u64| spread.reports[1].seen.store(pack(first, at), Relaxed);

            // Alone: reports, stays, and reads its CPU's idle time for
            // later.
            assert_eq!(spread.check_at(0, NOW, on_first, never_idle), None);
            assert_eq!(
                unpack(spread.reports[0].seen.load(Relaxed)),
                Some((first, NOW))
            );
            assert_eq!(spread.reports[0].looked.load(Relaxed), 0);
            let reading = |cpu: usize| spread.reports[0].readings.lock().unwrap()[cpu];
            assert_eq!(reading(first), Reading { at: NOW, idle: 0 });

            // Worker 1 busy on the same CPU, but within the report
            // interval: not looked at.
            busy_on_first(NOW);
            assert_eq!(spread.check_at(0, NOW + 10, on_first, never_idle), None);
            assert_eq!(spread.reports[0].looked.load(Relaxed), 0);

            // A report later: crowded, so it looks, but the reading is too
            // recent to judge by and is kept.
            let mut now = NOW + REPORT_INTERVAL_MICROS;
            busy_on_first(now);
            assert_eq!(spread.check_at(0, now, on_first, never_idle), None);
            assert_eq!(spread.reports[0].looked.load(Relaxed), now);
            assert_eq!(reading(first), Reading { at: NOW, idle: 0 });

            // A window later, the CPU was full: worker 0 goes to the free
            // one and is not pinned there.
            now += step;
            busy_on_first(now);
            assert_eq!(spread.check_at(0, now, on_first, never_idle), Some(second));
            assert_eq!(moves.load(Relaxed), 1);
            assert_eq!(crate::workers::allowed_cpus().unwrap(), allowed);

            // Crowded again at once: no look within the move interval.
            let soon = now + REPORT_INTERVAL_MICROS;
            busy_on_first(soon);
            assert_eq!(spread.check_at(0, soon, on_first, never_idle), None);

            // Two workers on a CPU with time to spare (idle a fifth of the
            // time) do not wait for each other: worker 0 stays however
            // long they share it.
            let spare = |now: u64| move |_cpu: usize| Some(now / 5);
            for _ in 0..3 {
                now += step;
                busy_on_first(now);
                assert_eq!(spread.check_at(0, now, on_first, spare(now)), None);
            }
            assert_eq!(moves.load(Relaxed), 1);
        })
        .join()
        .unwrap();
    }
}
