//! Per-stage latency: how long items wait in a stage's queue and how long the stage works
//! on them, in HDR histograms (nanoseconds, 3 significant digits).

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

const MAX_NS: u64 = 3_600_000_000_000; // one hour

pub struct StageMetrics {
    pub name: String,
    queue: Mutex<Histogram<u64>>,
    service: Mutex<Histogram<u64>>,
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

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
    let ns = (d.as_nanos() as u64).clamp(1, MAX_NS);
    h.lock().unwrap_or_else(|e| e.into_inner()).saturating_record(ns);
}

impl StageMetrics {
    pub fn new(name: &str) -> Self {
        StageMetrics { name: name.to_string(), queue: Mutex::new(histogram()), service: Mutex::new(histogram()) }
    }

    pub fn record_queue(&self, d: Duration) {
        record(&self.queue, d);
    }

    pub fn record_service(&self, d: Duration) {
        record(&self.service, d);
    }

    pub fn queue(&self) -> Histogram<u64> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn service(&self) -> Histogram<u64> {
        self.service.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
