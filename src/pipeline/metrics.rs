//! Latency histograms: HDR histograms (nanoseconds, 3 significant digits) with an exact
//! sum beside them, for per-stage queue wait and service time and for request latencies.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

const MAX_NS: u64 = 3_600_000_000_000; // one hour

/// One latency distribution. Recording takes a short lock; reading copies.
pub struct LatencyHistogram {
    hist: Mutex<Histogram<u64>>,
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            hist: Mutex::new(Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LatencyHistogram({} values)", self.count())
    }
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let ns = (d.as_nanos() as u64).clamp(1, MAX_NS);
        self.hist.lock().unwrap_or_else(|e| e.into_inner()).saturating_record(ns);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram<u64> {
        self.hist.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn count(&self) -> u64 {
        self.hist.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The exact sum of the recorded values, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Values at or below each bound (seconds, ascending), and the total count: the
    /// cumulative buckets of a Prometheus histogram. Bounds are exact to the histogram's
    /// three significant digits.
    pub fn cumulative(&self, bounds: &[f64]) -> (Vec<u64>, u64) {
        let h = self.snapshot();
        let counts = bounds.iter().map(|b| h.count_between(0, (b * 1e9) as u64)).collect();
        (counts, h.len())
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::of(&self.snapshot());
        s.sum = self.sum_seconds();
        s
    }
}

pub struct StageMetrics {
    pub name: String,
    /// The stage's kind in the pipeline file.
    pub kind: String,
    pub queue: LatencyHistogram,
    pub service: LatencyHistogram,
    /// Items whose handling panicked (the panic was contained; the item's request failed).
    pub panics: AtomicU64,
}

/// A copy of one histogram's figures, in seconds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub count: u64,
    pub sum: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl StageMetrics {
    pub fn new(name: &str, kind: &str) -> Self {
        StageMetrics {
            name: name.to_string(),
            kind: kind.to_string(),
            queue: LatencyHistogram::default(),
            service: LatencyHistogram::default(),
            panics: AtomicU64::new(0),
        }
    }

    pub fn record_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_queue(&self, d: Duration) {
        self.queue.record(d);
    }

    pub fn record_service(&self, d: Duration) {
        self.service.record(d);
    }
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let s = |ns: u64| ns as f64 / 1e9;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            sum: h.mean() * h.len() as f64 / 1e9,
            p50: s(h.value_at_quantile(0.5)),
            p90: s(h.value_at_quantile(0.9)),
            p99: s(h.value_at_quantile(0.99)),
            max: s(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_exact() {
        let h = LatencyHistogram::default();
        for ms in [1, 2, 3, 50, 700] {
            h.record(Duration::from_millis(ms));
        }
        let (counts, total) = h.cumulative(&[0.0025, 0.1, 1.0]);
        assert_eq!(counts, [2, 4, 5]);
        assert_eq!(total, 5);
        assert!((h.sum_seconds() - 0.756).abs() < 1e-12);
        assert_eq!(h.summary().count, 5);
    }
}
