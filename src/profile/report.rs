//! A profile's figures, read from the pipeline's histograms after a run, and the table
//! `sluice profile` prints.

use std::fmt::Write;

use crate::engine::stats::EngineStats;
use crate::pipeline::{LatencyHistogram, StageMetrics, Summary};

/// One stage's line of the table.
#[derive(Debug, Clone)]
pub struct StageRow {
    pub name: String,
    /// Items the stage handled (the engine: steps).
    pub items: u64,
    pub queue: Summary,
    pub service: Summary,
    /// Mean seconds a request spends here: waiting plus being worked on (the engine: from
    /// admission to its last token, since one step serves many requests).
    pub per_request: f64,
}

/// One part of the engine's steps.
#[derive(Debug, Clone)]
pub struct StepRow {
    pub part: &'static str,
    pub time: Summary,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub requests: u64,
    pub wall: f64,
    pub output_tokens: u64,
    pub e2e: Summary,
    pub stages: Vec<StageRow>,
    /// Empty for pooling models (their encoder has no steps to split).
    pub steps: Vec<StepRow>,
}

impl Report {
    pub fn gather(stages: &[std::sync::Arc<StageMetrics>], stats: &EngineStats, wall: f64, output_tokens: u64) -> Self {
        let e2e = stats.latency.e2e.summary();
        let requests = e2e.count.max(1);
        let in_engine = stats.latency.in_engine.summary();
        let rows = stages
            .iter()
            .map(|m| {
                let (queue, service) = (m.queue.summary(), m.service.summary());
                let per_request = if m.kind == "engine" {
                    (queue.sum + in_engine.sum) / requests as f64
                } else {
                    (queue.sum + service.sum) / requests as f64
                };
                StageRow { name: m.name.clone(), items: service.count, queue, service, per_request }
            })
            .collect();
        let s = &stats.steps;
        let parts: [(&'static str, &LatencyHistogram); 4] =
            [("schedule", &s.schedule), ("encode", &s.encode), ("forward", &s.forward), ("sample", &s.sample)];
        let steps = if s.forward.count() > 0 {
            // `encode` only where an encoder-decoder model ran its encoder.
            parts.iter().filter(|(_, h)| h.count() > 0).map(|(part, h)| StepRow { part, time: h.summary() }).collect()
        } else {
            Vec::new()
        };
        Report { requests: e2e.count, wall, output_tokens, e2e, stages: rows, steps }
    }

    /// The share of a request's end-to-end time a stage accounts for.
    pub fn share(&self, row: &StageRow) -> f64 {
        if self.e2e.count == 0 || self.e2e.sum == 0.0 { 0.0 } else { row.per_request / (self.e2e.sum / self.e2e.count as f64) }
    }

    pub fn table(&self) -> String {
        let ms = |s: f64| format!("{:.3}", s * 1e3);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{} requests in {:.2} s: {:.2} requests/s, {:.1} output tokens/s; end to end p50 {} ms, p99 {} ms",
            self.requests,
            self.wall,
            self.requests as f64 / self.wall.max(1e-9),
            self.output_tokens as f64 / self.wall.max(1e-9),
            ms(self.e2e.p50),
            ms(self.e2e.p99),
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<12} {:>7} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} | {:>10} {:>6}",
            "stage", "items", "queue p50", "p90", "p99", "max", "serve p50", "p90", "p99", "max", "ms/request", "e2e %"
        );
        for r in &self.stages {
            let (q, s) = (&r.queue, &r.service);
            let _ = writeln!(
                t,
                "{:<12} {:>7} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} | {:>10} {:>6.1}",
                r.name,
                r.items,
                ms(q.p50),
                ms(q.p90),
                ms(q.p99),
                ms(q.max),
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max),
                ms(r.per_request),
                100.0 * self.share(r)
            );
        }
        let _ = writeln!(t, "(times in ms; stages overlap, since detokenize and stream work while the engine steps)");
        if !self.steps.is_empty() {
            let total: f64 = self.steps.iter().map(|s| s.time.sum).sum();
            let _ = writeln!(t);
            let _ = writeln!(t, "{:<12} {:>7} | {:>9} {:>9} {:>9} {:>9} | {:>7}", "engine step", "steps", "p50", "p90", "p99", "max", "step %");
            for s in &self.steps {
                let h = &s.time;
                let _ = writeln!(
                    t,
                    "{:<12} {:>7} | {:>9} {:>9} {:>9} {:>9} | {:>7.1}",
                    s.part,
                    h.count,
                    ms(h.p50),
                    ms(h.p90),
                    ms(h.p99),
                    ms(h.max),
                    if total > 0.0 { 100.0 * h.sum / total } else { 0.0 }
                );
            }
        }
        t
    }
}
