//! Counters and histograms with a share per worker thread, summed when
//! read.
//!
//! A counter every worker bumps is one cache line every core writes: on
//! each request of an HTTP virtual the line moves to the core at hand
//! before the add can happen, which in a profile showed as the costliest
//! instructions of the request handler (the request, persistence and
//! status counters, and the four atomics of a Prometheus histogram
//! observation). Here each worker writes only its own share, on lines no
//! other worker writes; a scrape or a status page adds the shares up.
//! Threads that are not workers (the control thread, a test's runtime)
//! share worker 0's.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;

/// Keeps a worker's share on cache lines of its own (128 bytes: adjacent
/// lines are fetched in pairs on common x86 parts).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Share<T>(T);

/// `N` counters, one share of each per worker.
#[derive(Debug)]
pub struct WorkerCounters<const N: usize> {
    shares: Box<[Share<[AtomicU64; N]>]>,
}

impl<const N: usize> WorkerCounters<N> {
    /// Counters for `workers` worker threads (at least one share).
    pub fn new(workers: usize) -> WorkerCounters<N> {
        WorkerCounters {
            shares: (0..workers.max(1))
                .map(|_| Share(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// Adds `value` to counter `index` (out of range: ignored).
    pub fn add(&self, index: usize, value: u64) {
        if let Some(counter) = share_of(&self.shares).0.get(index) {
            counter.fetch_add(value, Ordering::Relaxed);
        }
    }

    /// Counter `index` over every worker.
    pub fn sum(&self, index: usize) -> u64 {
        self.shares
            .iter()
            .filter_map(|share| share.0.get(index))
            .map(|counter| counter.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// The calling worker's share: its own, or (a thread that is not a
/// worker, or more workers than shares) one it shares.
fn share_of<T>(shares: &[T]) -> &T {
    let worker = crate::workers::current();
    // A division per count only off the common path.
    match shares.get(worker) {
        Some(share) => share,
        None => &shares[worker % shares.len()],
    }
}

/// A Prometheus histogram with one share per worker, exported as one.
#[derive(Debug)]
pub struct WorkerHistogram {
    /// Each a histogram of its own (its own allocation, so its own lines).
    shares: Box<[prometheus::Histogram]>,
}

impl WorkerHistogram {
    /// A histogram for `workers` worker threads.
    pub fn new(
        options: prometheus::HistogramOpts,
        workers: usize,
    ) -> prometheus::Result<WorkerHistogram> {
        let shares = (0..workers.max(1))
            .map(|_| prometheus::Histogram::with_opts(options.clone()))
            .collect::<prometheus::Result<_>>()?;
        Ok(WorkerHistogram { shares })
    }

    /// Records one sample on the calling worker's share.
    pub fn observe(&self, value: f64) {
        share_of(&self.shares).observe(value);
    }

    /// The shares added up: one family with one histogram, as a plain
    /// Prometheus histogram would export.
    pub fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.shares[0].collect();
        let Some(metric) = families
            .first_mut()
            .and_then(|family| family.mut_metric().first_mut())
        else {
            return families;
        };
        let mut merged = metric.get_histogram().clone();
        let mut count = merged.get_sample_count();
        let mut sum = merged.get_sample_sum();
        let mut buckets = merged.get_bucket().to_vec();
        for share in &self.shares[1..] {
            for family in share.collect() {
                for other in family.get_metric() {
                    let other = other.get_histogram();
                    count += other.get_sample_count();
                    sum += other.get_sample_sum();
                    // Same options, so the same bounds in the same order.
                    for (bucket, add) in buckets.iter_mut().zip(other.get_bucket()) {
                        bucket.set_cumulative_count(
                            bucket.cumulative_count() + add.cumulative_count(),
                        );
                    }
                }
            }
        }
        merged.set_sample_count(count);
        merged.set_sample_sum(sum);
        merged.set_bucket(buckets);
        metric.set_histogram(merged);
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `work` as worker `index` would.
    fn as_worker(index: usize, work: impl FnOnce() + Send) {
        std::thread::scope(|scope| {
            scope.spawn(|| {
                crate::workers::set_current_for_test(index);
                work();
            });
        });
    }

    #[test]
    fn counters_add_up_every_workers_share() {
        let counters = WorkerCounters::<3>::new(2);
        counters.add(1, 5);
        as_worker(1, || counters.add(1, 2));
        // A worker beyond the count shares another's; nothing is lost.
        as_worker(2, || counters.add(1, 1));
        as_worker(1, || counters.add(7, 1));
        assert_eq!(counters.sum(1), 8);
        assert_eq!(counters.sum(0), 0);
        assert_eq!(counters.sum(7), 0);
    }

    #[test]
    fn a_histogram_exports_its_shares_as_one() {
        let options = prometheus::HistogramOpts::new("t_seconds", "test")
            .const_label("virtual", "web")
            .buckets(vec![0.1, 1.0]);
        let histogram = WorkerHistogram::new(options, 2).unwrap();
        histogram.observe(0.05);
        as_worker(1, || {
            histogram.observe(0.5);
            histogram.observe(5.0);
        });
        let families = histogram.collect();
        assert_eq!(families.len(), 1);
        let metrics = families[0].get_metric();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].get_label()[0].value(), "web");
        let merged = metrics[0].get_histogram();
        assert_eq!(merged.get_sample_count(), 3);
        assert!((merged.get_sample_sum() - 5.55).abs() < 1e-9);
        let cumulative: Vec<u64> = merged
            .get_bucket()
            .iter()
            .map(|bucket| bucket.cumulative_count())
            .collect();
        assert_eq!(cumulative, [1, 2]);
    }
}
