//! Request latencies with vLLM's metric names and buckets: time to first token, time
//! between tokens, end to end, and its parts (queued, prefill, decode), plus finished
//! requests by reason. The engine marks each request's `Timeline`; the last stage reports
//! the request finished.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::pipeline::{Exposition, LatencyHistogram};

/// When a request reached each milestone, as nanoseconds after its arrival (+1, so that
/// 0 means not yet). Written by the engine thread, read when the request finishes.
#[derive(Debug)]
pub struct Timeline {
    arrived: Instant,
    admitted: AtomicU64,
    scheduled: AtomicU64,
    first_token: AtomicU64,
    last_token: AtomicU64,
    /// Times one of the request's sequences was preempted (and recomputed later).
    preemptions: AtomicU32,
}

/// A request's milestones so far, as time since its arrival.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Milestones {
    pub admitted: Option<Duration>,
    pub scheduled: Option<Duration>,
    pub first_token: Option<Duration>,
    pub last_token: Option<Duration>,
    pub preemptions: u32,
}

impl Timeline {
    pub fn new(arrived: Instant) -> Self {
        Timeline {
            arrived,
            admitted: AtomicU64::new(0),
            scheduled: AtomicU64::new(0),
            first_token: AtomicU64::new(0),
            last_token: AtomicU64::new(0),
            preemptions: AtomicU32::new(0),
        }
    }

    /// When the request arrived.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// One of the request's sequences lost its KV blocks, to be computed again.
    pub fn mark_preempted(&self) {
        self.preemptions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn milestones(&self) -> Milestones {
        Milestones {
            admitted: self.get(&self.admitted),
            scheduled: self.get(&self.scheduled),
            first_token: self.get(&self.first_token),
            last_token: self.get(&self.last_token),
            preemptions: self.preemptions.load(Ordering::Relaxed),
        }
    }

    fn offset(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.arrived).as_nanos() as u64 + 1
    }

    fn get(&self, v: &AtomicU64) -> Option<Duration> {
        match v.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    /// The engine took the request in.
    pub fn mark_admitted(&self, at: Instant) {
        let _ = self.admitted.compare_exchange(0, self.offset(at), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The first time any of the request's sequences is in a step; true if this was it.
    pub fn mark_scheduled(&self, at: Instant) -> bool {
        self.scheduled.compare_exchange(0, self.offset(at), Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// A token came out at `at`. Returns the time since the request's previous token
    /// (None for its first, and for a second choice's token in the same step), and whether
    /// this was the first token.
    pub fn mark_token(&self, at: Instant) -> (Option<Duration>, bool) {
        let now = self.offset(at);
        let first = self.first_token.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        let previous = self.last_token.swap(now, Ordering::Relaxed);
        let gap = (previous != 0 && now > previous).then(|| Duration::from_nanos(now - previous));
        (gap, first)
    }

    pub fn since_arrival(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.arrived)
    }
}

/// How a request ended, as vLLM's `finished_reason` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishedReason {
    Stop,
    Length,
    Abort,
}

impl FinishedReason {
    const ALL: [FinishedReason; 3] = [FinishedReason::Stop, FinishedReason::Length, FinishedReason::Abort];

    pub fn as_str(self) -> &'static str {
        match self {
            FinishedReason::Stop => "stop",
            FinishedReason::Length => "length",
            FinishedReason::Abort => "abort",
        }
    }
}

/// vLLM's buckets, so that dashboards' quantiles line up.
const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
    640.0, 2560.0,
];
const ITL_BUCKETS: [f64; 19] =
    [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const REQUEST_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
    7680.0,
];

#[derive(Debug, Default)]
pub struct RequestLatency {
    pub ttft: LatencyHistogram,
    pub itl: LatencyHistogram,
    pub e2e: LatencyHistogram,
    pub queue: LatencyHistogram,
    pub prefill: LatencyHistogram,
    pub decode: LatencyHistogram,
    /// From admission by the engine to the last token (profiles; not a vLLM metric).
    pub in_engine: LatencyHistogram,
    success: [AtomicU64; 3],
}

impl RequestLatency {
    /// A token of a request came out at `at` (the engine, once per sequence and step).
    pub fn on_token(&self, timeline: &Timeline, at: Instant) {
        let (gap, first) = timeline.mark_token(at);
        if first {
            self.ttft.record(timeline.since_arrival(at));
        }
        if let Some(gap) = gap {
            self.itl.record(gap);
        }
    }

    /// A request is complete (its answer is out) at `at`.
    pub fn on_finished(&self, timeline: &Timeline, reason: FinishedReason, at: Instant) {
        self.e2e.record(timeline.since_arrival(at));
        let scheduled = timeline.get(&timeline.scheduled);
        let first = timeline.get(&timeline.first_token);
        let last = timeline.get(&timeline.last_token);
        if let Some(s) = scheduled {
            self.queue.record(s);
            if let Some(f) = first {
                self.prefill.record(f.saturating_sub(s));
            }
        }
        if let (Some(f), Some(l)) = (first, last) {
            self.decode.record(l.saturating_sub(f));
        }
        if let (Some(a), Some(l)) = (timeline.get(&timeline.admitted), last) {
            self.in_engine.record(l.saturating_sub(a));
        }
        self.success[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests finished for `reason`.
    pub fn finished(&self, reason: FinishedReason) -> u64 {
        self.success[reason as usize].load(Ordering::Relaxed)
    }

    pub fn write(&self, out: &mut Exposition, model: &str) {
        let m = [("model_name", model)];
        let hists: [(&str, &str, &LatencyHistogram, &[f64]); 6] = [
            ("vllm:time_to_first_token_seconds", "Time from arrival to the first generated token.", &self.ttft, &TTFT_BUCKETS),
            ("vllm:inter_token_latency_seconds", "Time between successive tokens of a request.", &self.itl, &ITL_BUCKETS),
            ("vllm:e2e_request_latency_seconds", "Time from arrival to the complete answer.", &self.e2e, &REQUEST_BUCKETS),
            ("vllm:request_queue_time_seconds", "Time from arrival until first scheduled in a step.", &self.queue, &REQUEST_BUCKETS),
            ("vllm:request_prefill_time_seconds", "Time from first scheduled to the first token.", &self.prefill, &REQUEST_BUCKETS),
            ("vllm:request_decode_time_seconds", "Time from the first token to the last.", &self.decode, &REQUEST_BUCKETS),
        ];
        for (name, help, h, bounds) in hists {
            out.header(name, "histogram", help);
            out.histogram(name, &m, h, bounds);
        }
        let name = "vllm:request_success_total";
        out.header(name, "counter", "Requests finished, by why they finished.");
        for r in FinishedReason::ALL {
            out.sample(name, &[("model_name", model), ("finished_reason", r.as_str())], self.finished(r) as f64);
        }
    }
}

/// Where the engine's steps spend their time, for profiles.
#[derive(Debug, Default)]
pub struct StepLatency {
    pub schedule: LatencyHistogram,
    /// Encoder-decoder models: encoder runs (steps that started windows).
    pub encode: LatencyHistogram,
    pub forward: LatencyHistogram,
    pub sample: LatencyHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_timeline_feeds_every_histogram() {
        let t0 = Instant::now();
        let tl = Timeline::new(t0);
        let lat = RequestLatency::default();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(tl.mark_scheduled(ms(10)));
        assert!(!tl.mark_scheduled(ms(20)));
        lat.on_token(&tl, ms(50));
        lat.on_token(&tl, ms(50)); // a second choice in the same step: no gap
        lat.on_token(&tl, ms(70));
        lat.on_token(&tl, ms(100));
        lat.on_finished(&tl, FinishedReason::Length, ms(105));
        let near = |h: &LatencyHistogram, s: f64| (h.sum_seconds() - s).abs() < 1e-3;
        assert_eq!(lat.ttft.count(), 1);
        assert!(near(&lat.ttft, 0.050));
        assert_eq!(lat.itl.count(), 2);
        assert!(near(&lat.itl, 0.050));
        assert!(near(&lat.e2e, 0.105) && near(&lat.queue, 0.010) && near(&lat.prefill, 0.040) && near(&lat.decode, 0.050));
        assert_eq!(lat.finished(FinishedReason::Length), 1);
        assert_eq!(lat.finished(FinishedReason::Stop), 0);
    }
}
