//! Prometheus counters and histograms split into one cell per connection worker (`workers`),
//! each on cache lines of its own, summed only when scraped. A request counts on its own
//! worker's cell: the front door's hot metrics are never written by two cores at once, so no
//! cache line moves between cores per request (prometheus-client's `Histogram` takes a mutex
//! per observation, its `Counter` is one atomic shared by every core).
//!
//! Invariants: a cell is only ever added to (relaxed atomic additions: exact counts, no lost
//! update, also from threads that are not workers, which share cell 0, and from workers that
//! share a cell on machines with more cores than cells); a scrape reads every cell once, so it
//! may see an observation's count without its sum for an instant, never a count that goes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Cells: one per worker plus one (index 0) for every other thread, at most [`MAX_CELLS`].
fn cells() -> usize {
    static CELLS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CELLS.get_or_init(|| (std::thread::available_parallelism().map_or(1, usize::from) + 1).min(MAX_CELLS))
}

/// The most cells a metric has: on a larger machine workers share cells (a series' memory, and
/// a scrape's work, stay bounded: the `code` label of a route's requests is the upstream's).
const MAX_CELLS: usize = 9;

/// This thread's cell among `n`.
fn mine(n: usize) -> usize {
    cell_of(crate::workers::current(), n)
}

/// Worker `w`'s cell among `n` (`w` 0: not a worker): its own, or shared by workers `n - 1`
/// apart; never out of range.
fn cell_of(w: usize, n: usize) -> usize {
    match w {
        0 => 0,
        _ if n < 2 => 0,
        w => (w - 1) % (n - 1) + 1,
    }
}

/// One cache line of values.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line([AtomicU64; 8]);

/// `values` counts per cell, each cell on whole cache lines of its own.
#[derive(Debug)]
struct Cells {
    lines: Box<[Line]>,
    /// Lines per cell.
    per_cell: usize,
}

impl Cells {
    fn new(values: usize) -> Self {
        let per_cell = values.div_ceil(8).max(1);
        Self {
            lines: (0..cells() * per_cell).map(|_| Line::default()).collect(),
            per_cell,
        }
    }

    fn count(&self) -> usize {
        self.lines.len() / self.per_cell
    }

    /// Value `k` of cell `cell`.
    fn value(&self, cell: usize, k: usize) -> &AtomicU64 {
        &self.lines[cell * self.per_cell + k / 8].0[k % 8]
    }

    /// Value `k` of this thread's cell.
    fn mine(&self, k: usize) -> &AtomicU64 {
        self.value(mine(self.count()), k)
    }

    /// Value `k` summed over the cells.
    fn sum(&self, k: usize) -> u64 {
        (0..self.count())
            .map(|c| self.value(c, k).load(Ordering::Relaxed))
            .sum()
    }
}

/// A monotonic counter (`MetricType::Counter`).
#[derive(Debug, Clone)]
pub struct ShardedCounter(Arc<Cells>);

impl Default for ShardedCounter {
    fn default() -> Self {
        Self(Arc::new(Cells::new(1)))
    }
}

impl ShardedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.mine(0).fetch_add(n, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.0.sum(0)
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

/// A classic histogram (`MetricType::Histogram`) with fixed upper bounds. Each cell holds the
/// sum's `f64` bits (value 0, updated by compare-and-swap, uncontended within a worker), the
/// count (1), and each bucket's observations (2…), not cumulative, the last being `+Inf`'s.
#[derive(Debug, Clone)]
pub struct ShardedHistogram {
    /// Upper bounds, ascending, then `+Inf`.
    bounds: Arc<[f64]>,
    cells: Arc<Cells>,
}

const SUM: usize = 0;
const COUNT: usize = 1;
const BUCKETS: usize = 2;

impl ShardedHistogram {
    /// A histogram with these upper bounds (ascending; a bound that is not finite is left out,
    /// as prometheus-client does) and `+Inf`.
    pub fn new(bounds: impl Iterator<Item = f64>) -> Self {
        let bounds: Arc<[f64]> = bounds
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let cells = Arc::new(Cells::new(BUCKETS + bounds.len()));
        Self { bounds, cells }
    }

    /// Records `v` (a NaN counts in `+Inf`, as prometheus-client does).
    pub fn observe(&self, v: f64) {
        let last = self.bounds.len() - 1;
        let i = if v.is_nan() {
            last
        } else {
            self.bounds.iter().position(|b| *b >= v).unwrap_or(last)
        };
        let cells = &self.cells;
        cells.mine(BUCKETS + i).fetch_add(1, Ordering::Relaxed);
        cells.mine(COUNT).fetch_add(1, Ordering::Relaxed);
        let _ = cells.mine(SUM).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            Some((f64::from_bits(s) + v).to_bits())
        });
    }

    /// Sum, count and each bucket's (non-cumulative) count over all cells.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let cells = &self.cells;
        let sum = (0..cells.count())
            .map(|c| f64::from_bits(cells.value(c, SUM).load(Ordering::Relaxed)))
            .sum();
        let buckets = self
            .bounds
            .iter()
            .enumerate()
            .map(|(i, b)| (*b, cells.sum(BUCKETS + i)))
            .collect();
        (sum, cells.sum(COUNT), buckets)
    }

    /// Observations so far (tests).
    pub fn count(&self) -> u64 {
        self.cells.sum(COUNT)
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
    fn every_worker_has_a_cell_in_range() {
        assert_eq!(cell_of(0, 3), 0);
        assert_eq!((1..=4).map(|w| cell_of(w, 3)).collect::<Vec<_>>(), [1, 2, 1, 2]);
        assert_eq!((1..=3).map(|w| cell_of(w, MAX_CELLS)).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(cell_of(MAX_CELLS, MAX_CELLS), 1);
        assert_eq!(cell_of(5, 1), 0);
        assert!((0..200).all(|w| (1..=MAX_CELLS).all(|n| cell_of(w, n) < n)));
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
