//! Prometheus counters and histograms split into one cell per connection worker (`workers`),
//! each on cache lines of its own, summed only when scraped. A request counts on its own
//! worker's cell: the front door's hot metrics are never written by two cores at once, so no
//! cache line moves between cores per request (prometheus-client's `Histogram` takes a mutex
//! per observation, its `Counter` is one atomic shared by every core).
//!
//! Invariants: a cell is only ever added to (relaxed atomic additions: exact counts, no lost
//! update, also from threads that are not workers, which share cell 0); a scrape reads every
//! cell once, so it may see an observation's count without its sum for an instant, never a
//! count that goes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// One cell per worker plus one (index 0) for every other thread.
fn cells() -> usize {
    static CELLS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CELLS.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from) + 1)
}

/// This thread's cell among `n`.
fn mine(n: usize) -> usize {
    let w = crate::workers::current();
    if w < n { w } else { 0 }
}

/// Keeps a cell on cache lines no other cell shares (adjacent-line prefetch included).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A monotonic counter (`MetricType::Counter`).
#[derive(Debug, Clone)]
pub struct ShardedCounter(Arc<[Padded<AtomicU64>]>);

impl Default for ShardedCounter {
    fn default() -> Self {
        Self((0..cells()).map(|_| Padded::default()).collect())
    }
}

impl ShardedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0[mine(self.0.len())].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One cell of a [`ShardedHistogram`].
#[derive(Debug)]
struct HistogramCell {
    /// The sum's `f64` bits (updated by compare-and-swap; uncontended within a worker).
    sum: AtomicU64,
    count: AtomicU64,
    /// Observations per bucket, not cumulative; the last one is `+Inf`'s.
    buckets: Box<[AtomicU64]>,
}

/// A classic histogram (`MetricType::Histogram`) with fixed upper bounds.
#[derive(Debug, Clone)]
pub struct ShardedHistogram {
    /// Upper bounds, ascending, then `+Inf`.
    bounds: Arc<[f64]>,
    cells: Arc<[Padded<HistogramCell>]>,
}

impl ShardedHistogram {
    /// A histogram with these upper bounds (ascending; a bound that is not finite is left out,
    /// as prometheus-client does) and `+Inf`.
    pub fn new(bounds: impl Iterator<Item = f64>) -> Self {
        let bounds: Arc<[f64]> = bounds
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let cells = (0..cells())
            .map(|_| {
                Padded(HistogramCell {
                    sum: AtomicU64::new(0f64.to_bits()),
                    count: AtomicU64::new(0),
                    buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
                })
            })
            .collect();
        Self { bounds, cells }
    }

    /// Records `v` (a NaN counts in `+Inf`, as prometheus-client does).
    pub fn observe(&self, v: f64) {
        let cell = &self.cells[mine(self.cells.len())].0;
        let last = self.bounds.len() - 1;
        let i = if v.is_nan() {
            last
        } else {
            self.bounds.iter().position(|b| *b >= v).unwrap_or(last)
        };
        cell.buckets[i].fetch_add(1, Ordering::Relaxed);
        cell.count.fetch_add(1, Ordering::Relaxed);
        let _ = cell.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            Some((f64::from_bits(s) + v).to_bits())
        });
    }

    /// Sum, count and each bucket's (non-cumulative) count over all cells.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self.bounds.iter().map(|b| (*b, 0)).collect();
        let (mut sum, mut count) = (0.0, 0);
        for cell in self.cells.iter() {
            sum += f64::from_bits(cell.0.sum.load(Ordering::Relaxed));
            count += cell.0.count.load(Ordering::Relaxed);
            for (b, c) in buckets.iter_mut().zip(cell.0.buckets.iter()) {
                b.1 += c.load(Ordering::Relaxed);
            }
        }
        (sum, count, buckets)
    }

    /// Observations so far (tests).
    pub fn count(&self) -> u64 {
        self.snapshot().1
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    use prometheus_client::registry::Registry;

    fn text(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    #[test]
    fn a_sharded_histogram_writes_what_prometheus_clients_histogram_writes() {
        let values = [0.0001, 0.0005, 0.0007, 0.003, 0.02, 1.5, 40.0, f64::NAN, 0.0005];
        let ours = ShardedHistogram::new(exponential_buckets(0.0005, 2.0, 16));
        let theirs = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        for v in values {
            ours.observe(v);
            theirs.observe(v);
        }
        // (a NaN makes the sums NaN on both sides; compared without it below)
        assert_eq!(
            text(|r| r.register("h", "x", ours.clone())),
            text(|r| r.register("h", "x", theirs.clone()))
        );
        let ours = ShardedHistogram::new(exponential_buckets(0.0005, 2.0, 16));
        let theirs = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        for v in values.iter().filter(|v| !v.is_nan()) {
            ours.observe(*v);
            theirs.observe(*v);
        }
        assert_eq!(
            text(|r| r.register("h", "x", ours.clone())),
            text(|r| r.register("h", "x", theirs))
        );
        assert_eq!(ours.count(), 8);
    }

    #[test]
    fn a_sharded_counter_writes_what_prometheus_clients_counter_writes() {
        let ours = ShardedCounter::default();
        let theirs = prometheus_client::metrics::counter::Counter::<u64>::default();
        ours.inc();
        ours.inc_by(41);
        theirs.inc_by(42);
        assert_eq!(
            text(|r| r.register("c", "x", ours)),
            text(|r| r.register("c", "x", theirs))
        );
    }

    #[test]
    fn counts_from_many_threads_are_exact() {
        let c = ShardedCounter::default();
        let h = ShardedHistogram::new([1.0, 2.0].into_iter());
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (c, h) = (c.clone(), h.clone());
                s.spawn(move || {
                    for i in 0..10_000 {
                        c.inc();
                        h.observe(f64::from(i % 3));
                    }
                });
            }
        });
        assert_eq!(c.get(), 40_000);
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 40_000);
        assert_eq!(buckets.iter().map(|b| b.1).collect::<Vec<_>>(), [26_668, 13_332, 0]);
        assert!((sum - 39_996.0).abs() < 1e-6, "{sum}");
    }
}
