//! `/metrics` read by a Prometheus text parser after real requests: vLLM's latency
//! histograms and finished-request counters, and the per-stage histograms, move together
//! and consistently.

mod common;

use common::{MODEL, Server};
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{HistogramValue, MetricsExposition, PrometheusType, PrometheusValue};
use serde_json::json;

type Scrape = MetricsExposition<PrometheusType, PrometheusValue>;

fn scrape(s: &Server) -> Scrape {
    let text = Server::client().get(s.url("/metrics")).send().unwrap().text().unwrap();
    parse_prometheus(&text).unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text: {e}\n{text}"))
}

/// The one series of `name` whose labels include `labels`.
fn series<'a>(m: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a PrometheusValue {
    let family = m.families.get(name).unwrap_or_else(|| panic!("no metric {name}"));
    assert!(!family.help.is_empty(), "{name} has no HELP");
    family
        .iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            labels.iter().all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| &s.value)
        .unwrap_or_else(|| panic!("no series of {name} with {labels:?}"))
}

fn histogram<'a>(m: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a HistogramValue {
    assert_eq!(m.families[name].family_type, PrometheusType::Histogram, "{name}");
    match series(m, name, labels) {
        PrometheusValue::Histogram(h) => {
            // Cumulative buckets, ending in +Inf = count.
            let counts: Vec<f64> = h.buckets.iter().map(|b| b.count.as_f64()).collect();
            assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{name}: buckets not cumulative: {counts:?}");
            let last = h.buckets.last().expect("buckets");
            assert!(last.upper_bound.is_infinite(), "{name}: no +Inf bucket");
            assert_eq!(last.count.as_f64() as u64, h.count.unwrap(), "{name}: +Inf bucket != count");
            h
        }
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

fn count(m: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    histogram(m, name, labels).count.unwrap()
}

fn value(m: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match series(m, name, labels) {
        PrometheusValue::Counter(c) => c.value.as_f64(),
        PrometheusValue::Gauge(g) => g.as_f64(),
        other => panic!("{name}: {other:?}"),
    }
}

const STAGES: [&str; 9] = ["decode", "render", "media", "tokenize", "guide", "encode_images", "engine", "detokenize", "stream"];

#[test]
fn latency_histograms_and_stage_histograms_move_with_requests() {
    let s = Server::start(&["--dtype", "float32"]);
    let m = [("model_name", MODEL)];
    let before = scrape(&s);
    let names = [
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
    ];
    for n in names {
        assert_eq!(count(&before, n, &m), 0, "{n}");
    }

    // Four requests of exactly 5 tokens each (one streamed), and one bad request.
    let tokens = 5;
    for i in 0..3 {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": format!("Count to {i}")}],
                          "max_tokens": tokens, "ignore_eos": true, "temperature": 0});
        let (status, v) = s.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{v}");
    }
    let events = s.post_sse(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Once upon", "max_tokens": tokens, "ignore_eos": true, "stream": true}),
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let (status, _) = s.post("/v1/completions", &json!({"model": MODEL, "prompt": "x", "temperature": -1}));
    assert_eq!(status, 400);

    let after = scrape(&s);
    for n in names {
        assert_eq!(count(&after, n, &m), 4, "{n}");
    }
    // One gap between each pair of successive tokens of a request.
    assert_eq!(count(&after, "vllm:inter_token_latency_seconds", &m), 4 * (tokens - 1));
    let reason = |r| [("model_name", MODEL), ("finished_reason", r)];
    assert_eq!(value(&after, "vllm:request_success_total", &reason("length")), 4.0);
    assert_eq!(value(&after, "vllm:request_success_total", &reason("stop")), 0.0);
    assert_eq!(value(&after, "vllm:request_success_total", &reason("abort")), 0.0);
    assert_eq!(value(&after, "vllm:generation_tokens_total", &m) - value(&before, "vllm:generation_tokens_total", &m), 20.0);

    // The parts of a request add up to no more than the whole.
    let sum = |n| histogram(&after, n, &m).sum.as_ref().unwrap().as_f64();
    let e2e = sum("vllm:e2e_request_latency_seconds");
    let parts = sum("vllm:request_queue_time_seconds") + sum("vllm:request_prefill_time_seconds") + sum("vllm:request_decode_time_seconds");
    assert!(parts > 0.0 && parts <= e2e + 1e-6, "queue + prefill + decode = {parts}, e2e = {e2e}");
    assert!(sum("vllm:time_to_first_token_seconds") <= e2e);

    // Every stage has both histograms; decode saw all five bodies, the engine's steps were
    // timed, the stream stage handled at least one event per request that got to it.
    for stage in STAGES {
        let l = [("stage", stage)];
        let q = count(&after, "sluice_stage_queue_seconds", &l) - count(&before, "sluice_stage_queue_seconds", &l);
        let svc = count(&after, "sluice_stage_service_seconds", &l) - count(&before, "sluice_stage_service_seconds", &l);
        match stage {
            "decode" => assert_eq!((q, svc), (5, 5), "{stage}"),
            "render" | "media" | "tokenize" | "guide" | "encode_images" => assert_eq!((q, svc), (4, 4), "{stage}"),
            "engine" => assert!(q == 4 && svc >= tokens, "{stage}: {q} queued, {svc} steps"),
            _ => assert!(q >= 4 && q == svc, "{stage}: {q} queued, {svc} served"),
        }
    }
}
