//! The `metrics` object that answers carry with `--enable-per-request-metrics`: when the
//! request arrived, how its time split between waiting, prefill and decode, and what each
//! pipeline stage spent on it. All durations are milliseconds.
//!
//! For the stages that work item by item, `service_ms` sums the time the stage spent on
//! this request's items (decode, render, tokenize, guide: one; detokenize and stream: one
//! per engine step, so their time overlaps the engine's). The batching stages measure
//! themselves: the engine's `service_ms` runs from its admission of the request to its
//! last token (scheduler wait, prefill and decode: the top-level `queue_ms`, `prefill_ms`
//! and `decode_ms`), the encoder's is the time of the forward passes that carried the
//! request's inputs. The stage that writes the answer counts up to that moment.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::latency::Timeline;
use crate::pipeline::StageTrace;

#[derive(Debug, Clone, Serialize)]
pub struct RequestMetrics {
    /// Unix seconds when the request arrived.
    pub arrival_time: f64,
    /// Arrival to the complete answer (for a stream: to its last chunk).
    pub e2e_ms: f64,
    /// Waiting in the scheduler: admission by the engine to the first step it ran in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    /// Arrival to the first generated token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// First scheduled to the first token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_ms: Option<f64>,
    /// First token to the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_ms: Option<f64>,
    /// Times a sequence of the request lost its KV blocks and was computed again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_preemptions: Option<u32>,
    /// Per stage, in pipeline order: `{queue_ms, service_ms, items}`.
    pub stages: Map<String, Value>,
}

fn ms(d: Duration) -> f64 {
    // Microsecond resolution is all the clocks here are worth.
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl RequestMetrics {
    /// A traced request's figures up to `now`: its stage trace, its milestones, when it
    /// arrived (Unix seconds) and whether it generates text.
    pub fn of(trace: &StageTrace, timeline: &Timeline, arrival_time: f64, generates: bool, now: Instant) -> RequestMetrics {
        let m = timeline.milestones();
        let between = |a: Option<Duration>, b: Option<Duration>| Some(ms(b?.saturating_sub(a?)));
        let stages = trace
            .snapshot(now)
            .into_iter()
            .map(|(name, t)| {
                let v = serde_json::json!({"queue_ms": ms(t.queue), "service_ms": ms(t.service), "items": t.items});
                (name, v)
            })
            .collect();
        RequestMetrics {
            arrival_time,
            e2e_ms: ms(timeline.since_arrival(now)),
            queue_ms: between(m.admitted, m.scheduled),
            ttft_ms: m.first_token.map(ms),
            prefill_ms: between(m.scheduled, m.first_token),
            decode_ms: between(m.first_token, m.last_token),
            num_preemptions: generates.then_some(m.preemptions),
            stages,
        }
    }

    /// Adds `"metrics"` as the last key of a JSON object already written out.
    pub fn append_to(&self, body: &mut String) {
        let json = serde_json::to_string(self).expect("metrics serialize");
        match body.rfind('}') {
            Some(end) => {
                let empty = body[..end].trim_end().ends_with('{');
                body.truncate(end);
                if !empty {
                    body.push(',');
                }
                body.push_str("\"metrics\":");
                body.push_str(&json);
                body.push('}');
            }
            None => debug_assert!(false, "an answer is a JSON object"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traced_request_reports_milestones_and_every_stage() {
        let names: std::sync::Arc<[String]> = vec!["decode".to_string(), "engine".to_string()].into();
        let t0 = Instant::now();
        let timeline = Timeline::new(t0);
        let trace = StageTrace::new(names);
        let at = |n| t0 + Duration::from_millis(n);
        timeline.mark_admitted(at(2));
        timeline.mark_scheduled(at(5));
        timeline.mark_token(at(20));
        timeline.mark_token(at(30));
        trace.queued(0, Duration::from_micros(100));
        trace.begin(0, t0);
        trace.end(0, Duration::from_micros(1500));
        let m = RequestMetrics::of(&trace, &timeline, 1.5, true, at(31));
        assert_eq!(m.arrival_time, 1.5);
        assert_eq!((m.queue_ms, m.ttft_ms, m.prefill_ms, m.decode_ms), (Some(3.0), Some(20.0), Some(15.0), Some(10.0)));
        assert_eq!(m.e2e_ms, 31.0);
        assert_eq!(m.num_preemptions, Some(0));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["stages"]["decode"], serde_json::json!({"queue_ms": 0.1, "service_ms": 1.5, "items": 1}));
        assert_eq!(v["stages"]["engine"]["items"], 0);
        let keys: Vec<&String> = v["stages"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["decode", "engine"]);

        // schemas/openapi.json describes every field, and no other.
        let doc: Value = serde_json::from_str(include_str!("../../schemas/openapi.json")).unwrap();
        let mut described: Vec<&String> = doc["components"]["schemas"]["RequestMetrics"]["properties"].as_object().unwrap().keys().collect();
        let mut sent: Vec<&String> = v.as_object().unwrap().keys().collect();
        described.sort();
        sent.sort();
        assert_eq!(sent, described);

        let mut body = r#"{"object":"list","data":[]}"#.to_string();
        m.append_to(&mut body);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["metrics"]["e2e_ms"], 31.0);
        assert_eq!(parsed["object"], "list");
    }
}
