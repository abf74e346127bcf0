//! How long each CPU has been idle, for [`super::spread`]: the kernel's
//! cpuidle counters (microseconds) where a cpuidle driver runs, else
//! `/proc/stat` (clock ticks, usually 10 ms).

use std::fs;

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
    /// read.
    pub(super) fn idle_micros(&self, cpu: usize) -> Option<u64> {
        match self {
            IdleClock::CpuIdle => {
                let mut total = 0u64;
                for state in 0.. {
                    let path =
                        format!("/sys/devices/system/cpu/cpu{cpu}/cpuidle/state{state}/time");
                    let Ok(text) = fs::read_to_string(path) else {
                        break;
                    };
                    total = total.saturating_add(text.trim().parse().ok()?);
                }
                Some(total)
            }
            IdleClock::ProcStat { tick_micros } => {
                let text = fs::read_to_string("/proc/stat").ok()?;
                idle_ticks(&text, cpu).map(|ticks| ticks.saturating_mul(*tick_micros))
            }
        }
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
}
