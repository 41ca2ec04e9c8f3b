//! Per-request stage times: when a request asks for them (`--enable-per-request-metrics`),
//! its items carry a `StageTrace`, and every stage adds the time each item waited in its
//! queue and the time it spent on it. The histograms in `StageMetrics` say how a stage
//! behaves across requests; a trace says where one request's time went.
//!
//! Items without a trace cost one branch per hop: nothing is allocated or locked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One stage's share of a request: summed over every item of the request it handled.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTime {
    /// Items of the request the stage received.
    pub items: u32,
    /// Time those items waited in the stage's queue.
    pub queue: Duration,
    /// Time the stage spent on them (for a service still running, up to now).
    pub service: Duration,
}

#[derive(Debug, Default)]
struct Slot {
    time: StageTime,
    /// Services begun and not yet ended, and when the first of them began (a request
    /// has one item at a time in a stage, except detokenize and stream, which keep a
    /// request's items on one worker, in order).
    open: u32,
    open_since: Option<Instant>,
}

/// The stage times of one request, by stage position in the pipeline.
#[derive(Debug)]
pub struct StageTrace {
    /// Stage names in pipeline order, shared by every trace of one pipeline.
    names: Arc<[String]>,
    slots: Mutex<Vec<Slot>>,
}

impl StageTrace {
    pub fn new(names: Arc<[String]>) -> Self {
        let slots = names.iter().map(|_| Slot::default()).collect();
        StageTrace { names, slots: Mutex::new(slots) }
    }

    fn with_slot(&self, stage: usize, f: impl FnOnce(&mut Slot)) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get_mut(stage) {
            f(s);
        }
    }

    /// An item of the request reached `stage` after waiting `wait` in its queue.
    pub fn queued(&self, stage: usize, wait: Duration) {
        self.with_slot(stage, |s| {
            s.time.items += 1;
            s.time.queue += wait;
        });
    }

    /// `stage` began working on an item of the request at `at`.
    pub fn begin(&self, stage: usize, at: Instant) {
        self.with_slot(stage, |s| {
            s.open += 1;
            s.open_since.get_or_insert(at);
        });
    }

    /// `stage` finished an item it began (`begin`), after `took`.
    pub fn end(&self, stage: usize, took: Duration) {
        self.with_slot(stage, |s| {
            s.time.service += took;
            s.open = s.open.saturating_sub(1);
            if s.open == 0 {
                s.open_since = None;
            }
        });
    }

    /// Adds service time that a stage measured itself (a batching stage's share).
    pub fn add_service(&self, stage: usize, took: Duration) {
        self.with_slot(stage, |s| s.time.service += took);
    }

    /// Every stage's name and time so far; a service still running counts up to `now`.
    pub fn snapshot(&self, now: Instant) -> Vec<(String, StageTime)> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.names
            .iter()
            .zip(slots.iter())
            .map(|(name, s)| {
                let mut t = s.time;
                if let Some(since) = s.open_since {
                    t.service += now.saturating_duration_since(since);
                }
                (name.clone(), t)
            })
            .collect()
    }
}

/// A service begun on one item: ended by `Inlet::end_service`, which records the stage's
/// histogram and, when the item had a trace, the request's share.
#[must_use = "end the service with Inlet::end_service"]
pub struct Service {
    pub(crate) start: Instant,
    pub(crate) trace: Option<Arc<StageTrace>>,
}

impl Service {
    pub fn start(&self) -> Instant {
        self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_add_up_and_an_open_service_counts_to_now() {
        let t = StageTrace::new(vec!["a".to_string(), "b".to_string()].into());
        let t0 = Instant::now();
        t.queued(0, Duration::from_millis(2));
        t.begin(0, t0);
        t.end(0, Duration::from_millis(5));
        t.queued(0, Duration::from_millis(1));
        t.begin(0, t0);
        t.end(0, Duration::from_millis(3));
        t.queued(1, Duration::from_millis(4));
        t.begin(1, t0);
        let snap = t.snapshot(t0 + Duration::from_millis(7));
        assert_eq!(snap[0].0, "a");
        assert_eq!(snap[0].1, StageTime { items: 2, queue: Duration::from_millis(3), service: Duration::from_millis(8) });
        assert_eq!(snap[1].1, StageTime { items: 1, queue: Duration::from_millis(4), service: Duration::from_millis(7) });
        t.end(1, Duration::from_millis(9));
        assert_eq!(t.snapshot(t0 + Duration::from_secs(1))[1].1.service, Duration::from_millis(9));
        // An unknown stage position is ignored.
        t.queued(5, Duration::from_millis(1));
    }
}
