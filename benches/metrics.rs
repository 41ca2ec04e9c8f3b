//! What measuring costs: the work each stage hop adds for its histograms (reading the
//! clock at send, receive and around the work, and two histogram records), and the
//! engine's per-token latency record; and what `--enable-per-request-metrics` adds to a
//! hop (the request's stage trace). Run: `cargo bench --bench metrics`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice::engine::latency::{RequestLatency, Timeline};
use sluice::pipeline::{StageMetrics, StageTrace};

fn per_op(n: u32, mut f: impl FnMut(u32)) -> f64 {
    for i in 0..n / 10 {
        f(i);
    }
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_secs_f64() * 1e9 / n as f64
}

fn main() {
    let n = 2_000_000;
    let clock = per_op(n, |_| {
        black_box(Instant::now());
    });
    let m = StageMetrics::new("bench", "bench");
    let hop = per_op(n, |i| {
        // As the runtime does per item: stamp at send, queue wait at receive, service time.
        let sent = Instant::now();
        m.record_queue(sent.elapsed() + Duration::from_nanos(u64::from(i % 5000)));
        let start = Instant::now();
        black_box(i);
        m.record_service(start.elapsed());
    });
    // With per-request metrics: the same hop also adds its queue wait to the request's
    // trace and opens and closes its service there (one Arc clone, three short locks).
    let names: std::sync::Arc<[String]> = (0..7).map(|i| format!("stage{i}")).collect();
    let trace = std::sync::Arc::new(StageTrace::new(names));
    let traced_hop = per_op(n, |i| {
        let sent = Instant::now();
        let wait = sent.elapsed() + Duration::from_nanos(u64::from(i % 5000));
        m.record_queue(wait);
        trace.queued(5, wait);
        let start = Instant::now();
        let t = trace.clone();
        t.begin(5, start);
        black_box(i);
        let took = start.elapsed();
        m.record_service(took);
        t.end(5, took);
    });
    let lat = RequestLatency::default();
    let timeline = Timeline::new(Instant::now());
    let token = per_op(n, |_| lat.on_token(&timeline, Instant::now()));
    println!("clock read:                         {clock:6.1} ns");
    println!("one stage hop's measuring:          {hop:6.1} ns  (2 clock reads + queue and service records + 2 elapsed)");
    println!("one token's latency record:         {token:6.1} ns  (engine: time to first token / between tokens)");
    // A generated token crosses the engine (one step for the whole batch), detokenize and
    // stream: two per-token hops plus the engine's record.
    let per_token = 2.0 * hop + token;
    println!("measuring per generated token:      {per_token:6.1} ns");
    for tok_s in [100.0, 1000.0, 10000.0] {
        println!("  at {tok_s:>6} output tokens/s: {:.4}% of the time", per_token * tok_s / 1e9 * 100.0);
    }
    let extra = traced_hop - hop;
    println!("one traced hop (per-request metrics): {traced_hop:6.1} ns  ({extra:+.1} ns over an untraced hop)");
    println!("per-request metrics, per generated token: {:+.1} ns", 2.0 * extra);
    for tok_s in [100.0, 1000.0, 10000.0] {
        println!("  at {tok_s:>6} output tokens/s: {:.4}% of the time", 2.0 * extra * tok_s / 1e9 * 100.0);
    }
}
