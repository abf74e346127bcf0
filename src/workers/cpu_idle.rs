//! How long each CPU has been idle, for [`super::spread`]: the kernel's
//! cpuidle counters (microseconds) where a cpuidle driver runs, else
//! `/proc/stat` (clock ticks, usually 10 ms).

use std::cell::RefCell;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;

/// Where idle time is read from; chosen once.
#[derive(Debug)]
pub(super) enum IdleClock {
    /// `/sys/devices/system/cpu/cpuN/cpuidle/stateK/time`, microseconds
    /// spent in each idle state.
    CpuIdle,
    /// The `idle` and `iowait` columns of `/proc/stat`, in clock ticks of
    /// `tick_micros`.
    ProcStat { tick_micros: u64 },
}

impl IdleClock {
    /// The finer source this machine has; `None` if neither can be read
    /// (no cpuidle driver, and `/proc/stat` hidden, as systemd's
    /// `ProcSubset=pid` does).
    pub(super) fn detect() -> Option<IdleClock> {
        if fs::read_to_string("/sys/devices/system/cpu/cpu0/cpuidle/state0/time").is_ok() {
            return Some(IdleClock::CpuIdle);
        }
        if !fs::read_to_string("/proc/stat").is_ok_and(|text| idle_ticks(&text, 0).is_some()) {
            return None;
        }
        // SAFETY: sysconf has no memory effects.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tick_micros = u64::try_from(ticks_per_second)
            .ok()
            .filter(|&ticks| ticks > 0)
            .map_or(10_000, |ticks| 1_000_000 / ticks);
        Some(IdleClock::ProcStat { tick_micros })
    }

    /// Microseconds `cpu` has been idle since boot; `None` if it cannot be
    /// read. Reads through files this thread keeps open (see
    /// [`OpenCounters`]).
    pub(super) fn idle_micros(&self, cpu: usize) -> Option<u64> {
        OPEN_COUNTERS.with_borrow_mut(|open| match self {
            IdleClock::CpuIdle => {
                let files = open.cpu_idle(cpu);
                let mut total = 0u64;
                for file in files.iter() {
                    let mut buffer = [0u8; 32];
                    let length = file.read_at(&mut buffer, 0).ok()?;
                    let text = std::str::from_utf8(buffer.get(..length)?).ok()?;
                    total = total.saturating_add(text.trim().parse().ok()?);
                }
                (!files.is_empty()).then_some(total)
            }
            IdleClock::ProcStat { tick_micros } => {
                let text = open.proc_stat()?;
                idle_ticks(text, cpu).map(|ticks| ticks.saturating_mul(*tick_micros))
            }
        })
    }

    /// The shortest time over which two readings tell a CPU's idle share
    /// to within about 5%: 10 ms for cpuidle's microseconds, 20 ticks
    /// (200 ms) for `/proc/stat`.
    pub(super) fn min_window_micros(&self) -> u64 {
        match self {
            IdleClock::CpuIdle => 10_000,
            IdleClock::ProcStat { tick_micros } => 20 * tick_micros,
        }
    }
}

thread_local! {
    static OPEN_COUNTERS: RefCell<OpenCounters> = RefCell::default();
}

/// The idle counters one worker thread reads, opened once. A busy worker
/// reads its CPU's every 10 ms; opening each file every time cost an
/// `openat`, a `statx` and a `close` per file, about 1% of the CPU of a
/// reconnect storm. Reading a sysfs or proc file again from offset 0
/// makes the kernel write it afresh, so an open file stays current.
#[derive(Debug, Default)]
struct OpenCounters {
    /// By CPU number: that CPU's `cpuidle/stateK/time` files, in order.
    cpu_idle: Vec<Option<Vec<File>>>,
    /// `/proc/stat` and the buffer its text is read into (a few KB, kept).
    proc_stat: Option<(File, Vec<u8>)>,
}

impl OpenCounters {
    /// The idle-state files of `cpu`, opened on first use (empty if it has
    /// none).
    fn cpu_idle(&mut self, cpu: usize) -> &[File] {
        if self.cpu_idle.len() <= cpu {
            self.cpu_idle.resize_with(cpu + 1, || None);
        }
        self.cpu_idle[cpu].get_or_insert_with(|| {
            (0..)
                .map_while(|state| {
                    File::open(format!(
                        "/sys/devices/system/cpu/cpu{cpu}/cpuidle/state{state}/time"
                    ))
                    .ok()
                })
                .collect()
        })
    }

    /// The current text of `/proc/stat`.
    fn proc_stat(&mut self) -> Option<&str> {
        if self.proc_stat.is_none() {
            self.proc_stat = Some((File::open("/proc/stat").ok()?, Vec::new()));
        }
        let (file, buffer) = self.proc_stat.as_mut()?;
        // Read whole in one call from offset 0: the kernel writes the file
        // afresh for every read, so pieces read in two calls could come
        // from two different moments. A buffer the text fills is doubled
        // and the read made again; it keeps the size that fits.
        loop {
            if buffer.is_empty() {
                buffer.resize(16 * 1024, 0);
            }
            let length = file.read_at(buffer, 0).ok()?;
            if length < buffer.len() {
                return std::str::from_utf8(&buffer[..length]).ok();
            }
            let doubled = buffer.len() * 2;
            buffer.resize(doubled, 0);
        }
    }
}

/// The `idle` plus `iowait` ticks of `cpu` in the text of `/proc/stat`
/// (`cpuN user nice system idle iowait ...`).
fn idle_ticks(proc_stat: &str, cpu: usize) -> Option<u64> {
    let label = format!("cpu{cpu}");
    let line = proc_stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(label.as_str()))?;
    let mut columns = line.split_whitespace().skip(4);
    let idle: u64 = columns.next()?.parse().ok()?;
    let iowait: u64 = columns
        .next()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    Some(idle.saturating_add(iowait))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str = "cpu  1290554 439 354237 2956578 6767 0 156019 4402 0 0\n\
        cpu0 616843 223 174755 1510235 1501 0 78426 2241 0 0\n\
        cpu1 673711 216 179482 1446343 5266 0 77593 2161 0 0\n\
        cpu12 1 2 3 4 5 6 7 8 9 10\n\
        intr 1 2 3\n";

    #[test]
    fn proc_stat_gives_idle_and_iowait_of_the_cpu_named() {
        assert_eq!(idle_ticks(PROC_STAT, 0), Some(1510235 + 1501));
        assert_eq!(idle_ticks(PROC_STAT, 1), Some(1446343 + 5266));
        // "cpu1" is not "cpu12", nor the "cpu" total.
        assert_eq!(idle_ticks(PROC_STAT, 12), Some(4 + 5));
        assert_eq!(idle_ticks(PROC_STAT, 2), None);
        // Old kernels without iowait; garbage.
        assert_eq!(idle_ticks("cpu0 1 2 3 40\n", 0), Some(40));
        assert_eq!(idle_ticks("cpu0 1 2 3 x 5\n", 0), None);
        assert_eq!(idle_ticks("", 0), None);
    }

    #[test]
    fn this_machine_reports_idle_time_that_grows() {
        let clock = IdleClock::detect().expect("cpuidle or /proc/stat readable here");
        let cpu = crate::workers::allowed_cpus().unwrap()[0];
        let first = clock.idle_micros(cpu).expect("idle time readable");
        // Idle time never goes back (it may stand still on a busy CPU).
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(clock.idle_micros(cpu).unwrap() >= first);
        assert!(clock.min_window_micros() >= 10_000);
    }

    #[test]
    fn proc_stat_read_through_its_kept_file_stays_current() {
        let clock = IdleClock::ProcStat {
            tick_micros: 10_000,
        };
        let cpus = crate::workers::allowed_cpus().unwrap();
        let kept: Vec<u64> = cpus
            .iter()
            .map(|&cpu| clock.idle_micros(cpu).expect("/proc/stat readable"))
            .collect();
        // Wait until a fresh reading shows one of the CPUs idled since (a
        // loaded machine may take a while), then the kept file must show
        // it too.
        let fresh = |cpu: usize| {
            let text = fs::read_to_string("/proc/stat").unwrap();
            idle_ticks(&text, cpu).unwrap() * 10_000
        };
        let idled = (0..200).find_map(|_| {
            let found = cpus.iter().zip(&kept).find_map(|(&cpu, &kept)| {
                let newer = fresh(cpu);
                (newer > kept).then_some((cpu, newer))
            });
            if found.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            found
        });
        let (cpu, newer) = idled.expect("no CPU of this process idled in 10 s");
        assert!(clock.idle_micros(cpu).unwrap() >= newer);
    }

    #[test]
    fn proc_stat_is_read_whole_however_small_the_buffer_starts() {
        let mut open = OpenCounters {
            proc_stat: Some((File::open("/proc/stat").unwrap(), vec![0; 8])),
            ..OpenCounters::default()
        };
        let text = open.proc_stat().unwrap().to_string();
        assert!(text.starts_with("cpu "), "{text}");
        assert!(text.contains("\nctxt ") && text.ends_with('\n'), "{text}");
        let last = *crate::workers::allowed_cpus().unwrap().last().unwrap();
        assert!(idle_ticks(&text, last).is_some());
    }
}
