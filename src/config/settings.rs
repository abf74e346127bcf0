//! `settings.cpu_affinity`: which CPU each worker thread runs on. Its plan
//! type, its raw type, then its part of the validation.
//!
//! Why: with two workers, a client generator and a member on two cores
//! (the benchmark), the kernel sometimes leaves both workers on one core
//! for seconds while the other core has idle time; each worker then waits
//! a scheduler slice (about 4.5 ms here) for the other, and p99 latency of
//! an HTTP virtual went from 1.1 ms to 3-4.5 ms. Pinned workers never
//! share a core, but cannot move away from other busy threads either,
//! which cost the benchmark's TLS handshake and bulk rows 19-33%
//! (docs/performance.md). The default, `"spread"`, leaves placement to the
//! kernel and only undoes that one case: a worker that finds another busy
//! worker on its core, and that core full, moves itself to an allowed core
//! with none (`workers::spread`).

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Checker;

/// The highest CPU number a CPU set holds (`CPU_SETSIZE` - 1).
pub const MAX_CPU: usize = 1023;

/// Which CPU each worker thread runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CpuAffinity {
    /// When there is exactly one worker per CPU this process may use (the
    /// default `worker_threads`), worker i runs only on the i-th of those
    /// CPUs. With fewer or more workers than CPUs, as on a host vipgate
    /// shares, the kernel places them.
    Auto,
    /// The default: the kernel places the workers, except that a busy
    /// worker sharing a CPU with another busy worker, that CPU idle less
    /// than 10% of the time, moves itself to an allowed CPU where no
    /// worker is busy (checked at most every millisecond, a move at most
    /// every 10 ms per worker).
    #[default]
    Spread,
    /// The kernel alone places the workers.
    Off,
    /// Worker i runs only on CPU `cpus[i % cpus.len()]`; never empty.
    Cpus(Vec<usize>),
}

impl CpuAffinity {
    /// The CPU worker `index` of `workers` runs on, given the CPUs this
    /// process may use (ascending); `None`: the kernel chooses.
    pub fn cpu_of(&self, index: usize, workers: usize, allowed: &[usize]) -> Option<usize> {
        match self {
            CpuAffinity::Spread | CpuAffinity::Off => None,
            CpuAffinity::Auto if workers == allowed.len() => allowed.get(index).copied(),
            CpuAffinity::Auto => None,
            CpuAffinity::Cpus(cpus) => cpus.get(index % cpus.len().max(1)).copied(),
        }
    }
}

impl fmt::Display for CpuAffinity {
    /// As it is written in the file: `"spread"`, `"auto"`, `"off"`, `[0, 1]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuAffinity::Spread => f.write_str("\"spread\""),
            CpuAffinity::Auto => f.write_str("\"auto\""),
            CpuAffinity::Off => f.write_str("\"off\""),
            CpuAffinity::Cpus(cpus) => {
                let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
                write!(f, "[{}]", list.join(", "))
            }
        }
    }
}

/// `cpu_affinity` as written: `"spread"`, `"auto"`, `"off"` or a list of
/// CPU numbers.
#[derive(Debug)]
pub enum RawCpuAffinity {
    Word(String),
    Cpus(Vec<i64>),
}

// By hand rather than `untagged`, so that a wrong type gets an error that
// says what is expected instead of "did not match any variant".
impl<'de> Deserialize<'de> for RawCpuAffinity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawCpuAffinity;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"spread\", \"auto\", \"off\" or a list of CPU numbers such as [0, 1]")
            }
            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<RawCpuAffinity, E> {
                Ok(RawCpuAffinity::Word(word.to_string()))
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut items: S,
            ) -> Result<RawCpuAffinity, S::Error> {
                let mut cpus = Vec::new();
                while let Some(cpu) = items.next_element::<i64>()? {
                    cpus.push(cpu);
                }
                Ok(RawCpuAffinity::Cpus(cpus))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Checker<'_> {
    /// `settings.cpu_affinity` as the file says it: a known word, or CPU
    /// numbers each listed once. Whether this host has those CPUs is the
    /// workers' question at start (`workers::check_affinity`), so a file
    /// gets the same verdict wherever it is checked.
    pub(super) fn cpu_affinity(&mut self, raw: Option<&Spanned<RawCpuAffinity>>) -> CpuAffinity {
        const KEY: &str = "settings.cpu_affinity";
        let Some(raw) = raw else {
            return CpuAffinity::default();
        };
        let span: Range<usize> = raw.span();
        match raw.get_ref() {
            RawCpuAffinity::Word(word) if word == "spread" => CpuAffinity::Spread,
            RawCpuAffinity::Word(word) if word == "auto" => CpuAffinity::Auto,
            RawCpuAffinity::Word(word) if word == "off" => CpuAffinity::Off,
            RawCpuAffinity::Word(word) => {
                self.report(
                    KEY,
                    Some(span),
                    format!("unknown value {word:?}"),
                    Some(
                        "\"spread\", \"auto\", \"off\" or a list of CPU numbers such as [0, 1]"
                            .into(),
                    ),
                );
                CpuAffinity::default()
            }
            RawCpuAffinity::Cpus(numbers) => {
                let mut cpus = Vec::with_capacity(numbers.len());
                let mut problems = Vec::new();
                for &number in numbers {
                    match usize::try_from(number).ok().filter(|&cpu| cpu <= MAX_CPU) {
                        None => problems.push(format!("CPU {number} is out of range")),
                        Some(cpu) if cpus.contains(&cpu) => {
                            problems.push(format!("CPU {cpu} is listed twice"))
                        }
                        Some(cpu) => cpus.push(cpu),
                    }
                }
                if numbers.is_empty() {
                    problems.push("the list is empty".into());
                }
                if problems.is_empty() {
                    return CpuAffinity::Cpus(cpus);
                }
                self.report(
                    KEY,
                    Some(span),
                    problems.join("; "),
                    Some(format!(
                        "list CPU numbers from 0 to {MAX_CPU}, each once, or say \"auto\""
                    )),
                );
                CpuAffinity::Off
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, ConfigError, Problem};

    fn with_affinity(value: &str) -> String {
        format!(
            "[settings]\ncpu_affinity = {value}\n[pools.p]\nmembers = [ {{ address = \"127.0.0.11:1\" }} ]\n[virtuals.v]\nlisten = \"127.0.0.100:1\"\npool = \"p\"\n"
        )
    }

    fn problem_of(value: &str) -> Problem {
        match parse(&with_affinity(value), "t") {
            Err(ConfigError::Invalid { mut problems, .. }) if problems.len() == 1 => {
                problems.remove(0)
            }
            other => panic!("expected one problem for {value}, got {other:?}"),
        }
    }

    #[test]
    fn the_four_forms_parse_and_spread_is_the_default() {
        let plan = |value: &str| parse(&with_affinity(value), "t").unwrap().settings;
        assert_eq!(plan("\"spread\"").cpu_affinity, CpuAffinity::Spread);
        assert_eq!(plan("\"auto\"").cpu_affinity, CpuAffinity::Auto);
        assert_eq!(plan("\"off\"").cpu_affinity, CpuAffinity::Off);
        assert_eq!(plan("[1, 0]").cpu_affinity, CpuAffinity::Cpus(vec![1, 0]));
        let without = with_affinity("\"off\"").replace("cpu_affinity = \"off\"\n", "");
        assert_eq!(
            parse(&without, "t").unwrap().settings.cpu_affinity,
            CpuAffinity::Spread
        );
        assert_eq!(CpuAffinity::Spread.to_string(), "\"spread\"");
        assert_eq!(CpuAffinity::Cpus(vec![3, 1]).to_string(), "[3, 1]");
    }

    #[test]
    fn bad_values_name_the_key_and_what_to_write() {
        let problem = problem_of("\"sometimes\"");
        assert_eq!(problem.key, "settings.cpu_affinity");
        assert_eq!(problem.message, "unknown value \"sometimes\"");
        assert!(problem
            .hint
            .unwrap()
            .contains("\"spread\", \"auto\", \"off\""));

        let problem = problem_of("[]");
        assert_eq!(problem.message, "the list is empty");

        let problem = problem_of("[0, -1, 0, 1024]");
        assert_eq!(
            problem.message,
            "CPU -1 is out of range; CPU 0 is listed twice; CPU 1024 is out of range"
        );
        assert!(problem
            .hint
            .unwrap()
            .starts_with("list CPU numbers from 0 to 1023"));

        // Whether this host has the CPU is not the file's question: the
        // same file passes here and on a host with 1024 CPUs.
        assert_eq!(
            parse(&with_affinity("[1023]"), "t")
                .unwrap()
                .settings
                .cpu_affinity,
            CpuAffinity::Cpus(vec![1023])
        );

        let error = parse(&with_affinity("2"), "t").unwrap_err().to_string();
        assert!(
            error.contains(
                "expected \"spread\", \"auto\", \"off\" or a list of CPU numbers such as [0, 1]"
            ),
            "{error}"
        );
    }

    #[test]
    fn auto_pins_only_with_one_worker_per_cpu() {
        let allowed = [2, 3, 5];
        let auto = CpuAffinity::Auto;
        let pinned: Vec<_> = (0..3).map(|i| auto.cpu_of(i, 3, &allowed)).collect();
        assert_eq!(pinned, vec![Some(2), Some(3), Some(5)]);
        assert_eq!(auto.cpu_of(0, 2, &allowed), None, "fewer workers than CPUs");
        assert_eq!(auto.cpu_of(0, 4, &allowed), None, "more workers than CPUs");
        assert_eq!(CpuAffinity::Off.cpu_of(0, 3, &allowed), None);
    }

    #[test]
    fn a_list_is_used_round_robin() {
        let list = CpuAffinity::Cpus(vec![1, 0]);
        let pinned: Vec<_> = (0..5).map(|i| list.cpu_of(i, 5, &[0, 1])).collect();
        assert_eq!(pinned, vec![Some(1), Some(0), Some(1), Some(0), Some(1)]);
    }
}
