//! `--enable-per-request-metrics` against the real server and model: every answer (the
//! last chunk of a stream) carries a `metrics` object naming every stage, with figures
//! that add up; without the flag no answer has one.

#[macro_use]
mod common;


use common::{MODEL, Server, minilm_dir, read_stream_signalling_start};
use serde_json::{Value, json};

const ON: &[&str] = &["--dtype", "float32", "--enable-per-request-metrics"];
const OFF: &[&str] = &["--dtype", "float32"];

/// stages/serve.toml, in order.
const SERVE_STAGES: [&str; 9] = ["decode", "render", "media", "tokenize", "guide", "encode_images", "engine", "detokenize", "stream"];
/// stages/pooling.toml, in order.
const POOLING_STAGES: [&str; 4] = ["pool_decode", "pool_tokenize", "encode", "pool_stream"];
/// Stages that take a request in one item, one after another, before the engine's last
/// token: their times lie inside the request's life without overlapping.
const SEQUENTIAL: [&str; 7] = ["decode", "render", "media", "tokenize", "guide", "encode_images", "engine"];
/// Rounding: every figure is rounded to the microsecond, so a sum of a dozen of them may
/// be off by 0.006 ms. No other slack: every comparison below holds by construction, since
/// the figures are differences of instants on one monotonic clock taken in an order the
/// pipeline fixes (a stage's share ends at the instant it hands the item on, which is the
/// instant the next stage's queue wait starts; the engine's share ends when it hands on the
/// last token, after that token's milestone; the answer's figures are taken when it is
/// written, after all of those). However long a thread is descheduled between two of them,
/// the order holds.
const ROUNDING_MS: f64 = 0.01;

fn events(server: &Server, path: &str, body: &Value) -> Vec<Value> {
    let all = server.post_sse(path, body);
    assert_eq!(all.last().map(String::as_str), Some("[DONE]"));
    all[..all.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

fn num(v: &Value, at: &str) -> f64 {
    v[at].as_f64().unwrap_or_else(|| panic!("{at} is not a number in {v}"))
}

/// Checks a `metrics` object (`preemptions`: how many the request must show): every stage named in order, every figure a number >= 0, the
/// milestones in order, and the stage times within the end-to-end time.
fn check(m: &Value, stages: &[&str], generates: bool) {
    check_preempted(m, stages, generates, 0)
}

fn check_preempted(m: &Value, stages: &[&str], generates: bool, preemptions: u64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let arrival = num(m, "arrival_time");
    assert!(arrival <= now && arrival > now - 600.0, "arrival_time {arrival} is not a recent Unix time: {m}");
    let e2e = num(m, "e2e_ms");
    assert!(e2e > 0.0, "{m}");
    let per_stage = m["stages"].as_object().unwrap_or_else(|| panic!("no stages in {m}"));
    let names: Vec<&str> = per_stage.keys().map(String::as_str).collect();
    assert_eq!(names, stages, "{m}");
    let mut chain = 0.0;
    for (name, s) in per_stage {
        let (q, sv) = (num(s, "queue_ms"), num(s, "service_ms"));
        assert!(q >= 0.0 && sv >= 0.0, "{name}: {s}");
        assert!(s["items"].as_u64().unwrap() >= 1, "{name} saw none of the request's items: {m}");
        assert!(q + sv <= e2e + ROUNDING_MS, "{name}'s time is longer than the request's: {m}");
        if SEQUENTIAL.contains(&name.as_str()) {
            chain += q + sv;
        }
    }
    if generates {
        assert!(chain <= e2e + ROUNDING_MS, "decode..engine add up to {chain} ms, more than e2e: {m}");
        let (queue, ttft, prefill, decode) = (num(m, "queue_ms"), num(m, "ttft_ms"), num(m, "prefill_ms"), num(m, "decode_ms"));
        assert!(queue >= 0.0 && prefill >= 0.0 && decode >= 0.0, "{m}");
        assert!(ttft <= e2e, "ttft after e2e: {m}");
        assert!(queue + prefill <= ttft + ROUNDING_MS, "{m}");
        assert!(ttft + decode <= e2e + ROUNDING_MS, "{m}");
        // The engine's service runs from admission to handing on the last token: its queue,
        // prefill and decode (admission to the last token's milestone), and then the hand-off
        // itself, which the chain above bounds.
        let engine = num(&m["stages"]["engine"], "service_ms");
        assert!(engine + ROUNDING_MS >= queue + prefill + decode, "engine {engine} shorter than its parts: {m}");
        assert_eq!(m["num_preemptions"], preemptions, "{m}");
    } else {
        let total: f64 = per_stage.values().map(|s| num(s, "queue_ms") + num(s, "service_ms")).sum();
        assert!(total <= e2e + ROUNDING_MS, "stages add up to {total} ms, more than e2e: {m}");
        for k in ["queue_ms", "ttft_ms", "prefill_ms", "decode_ms", "num_preemptions"] {
            assert!(m.get(k).is_none(), "a pooling answer has no {k}: {m}");
        }
    }
}

/// The one event of a stream with metrics must be the last before [DONE].
fn only_last_has_metrics(events: &[Value]) -> &Value {
    let (last, rest) = events.split_last().unwrap();
    assert!(rest.iter().all(|e| e.get("metrics").is_none()), "metrics before the last chunk: {events:?}");
    &last["metrics"]
}

#[test]
fn completions_carry_metrics() {
    let s = Server::shared(ON);
    let (status, body) =
        s.post("/v1/completions", &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}));
    assert_eq!(status, 200, "{body}");
    check(&body["metrics"], &SERVE_STAGES, true);
    // Key order: metrics after everything else.
    assert_eq!(body.as_object().unwrap().keys().last().unwrap(), "metrics");

    // Streamed with usage: the usage chunk is last and carries them.
    let ev = events(
        s,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0,
                "stream": true, "stream_options": {"include_usage": true}}),
    );
    let m = only_last_has_metrics(&ev);
    assert!(ev.last().unwrap()["usage"].is_object());
    check(m, &SERVE_STAGES, true);
    // One item per engine step reached detokenize and stream.
    let steps = ev.iter().filter(|e| e["choices"].as_array().is_some_and(|c| !c.is_empty())).count() as u64;
    assert_eq!(m["stages"]["stream"]["items"].as_u64().unwrap(), steps, "{m}");
}

#[test]
fn chats_carry_metrics() {
    let s = Server::shared(ON);
    let (status, body) = s.post(
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    check(&body["metrics"], &SERVE_STAGES, true);

    // Streamed without usage, two choices: the finish of the choice that ends last.
    let ev = events(
        s,
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 1,
                "seed": 3, "n": 2, "stream": true}),
    );
    let m = only_last_has_metrics(&ev);
    assert!(ev.last().unwrap()["choices"][0]["finish_reason"].is_string(), "{:?}", ev.last());
    check(m, &SERVE_STAGES, true);
}

#[test]
fn without_the_flag_no_answer_has_metrics() {
    let s = Server::shared(OFF);
    let (_, body) = s.post("/v1/completions", &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 4}));
    assert!(body.get("metrics").is_none() && body["choices"].is_array(), "{body}");
    let (_, body) = s.post("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}));
    assert!(body.get("metrics").is_none() && body["choices"].is_array(), "{body}");
    for (path, body) in [
        ("/v1/completions", json!({"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}})),
        ("/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true})),
    ] {
        let ev = events(s, path, &body);
        assert!(ev.iter().all(|e| e.get("metrics").is_none()), "{ev:?}");
    }
}

#[test]
fn embeddings_carry_metrics() {
    let dir: &'static str = Box::leak(minilm_dir().into_boxed_str());
    let args: &'static [&'static str] = Box::leak(Box::new([dir, "--task", "embed", "--enable-per-request-metrics"]));
    let s = Server::shared(args);
    let (status, body) = s.post("/v1/embeddings", &json!({"input": ["one sentence", "and another"]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    check(&body["metrics"], &POOLING_STAGES, false);
    let (status, body) = s.post("/score", &json!({"text_1": "a cat", "text_2": ["a dog", "a car"]}));
    assert_eq!(status, 200, "{body}");
    check(&body["metrics"], &POOLING_STAGES, false);
}

#[test]
fn run_batch_answers_carry_metrics() {
    let line = json!({"custom_id": "a", "method": "POST", "url": "/v1/completions",
                      "body": {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0}});
    let (answers, _) = common::run_batch_lines(&["--dtype", "float32", "--enable-per-request-metrics"], &[line]);
    let answer = &answers[0];
    // The batch pipeline names its stages as stages/batch.toml does: the same kinds.
    check(&answer["response"]["body"]["metrics"], &SERVE_STAGES, true);
}

/// One sequence at a time under the priority policy: an urgent request preempts a running
/// one, whose answer then counts the preemption (and the urgent one's does not).
#[test]
fn a_preempted_request_counts_its_preemption() {
    const PRIORITY: &[&str] =
        &["--dtype", "float32", "--scheduling-policy", "priority", "--max-num-seqs", "1", "--enable-per-request-metrics"];
    let s = Server::shared(PRIORITY);
    let body = |prompt: &str, max_tokens: usize, priority: i64| {
        json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true,
               "priority": priority})
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let mut low = body("Write a long story about a lighthouse keeper.", 120, 5);
    low["stream"] = json!(true);
    let low = std::thread::spawn(move || {
        let r = Server::client().post(Server::shared(PRIORITY).url("/v1/completions")).json(&low).send().unwrap();
        read_stream_signalling_start(r, &tx)
    });
    rx.recv().unwrap(); // the low-priority request is running
    let (status, urgent) = s.post("/v1/completions", &body("The capital of France is", 4, -5));
    assert_eq!(status, 200, "{urgent}");
    check_preempted(&urgent["metrics"], &SERVE_STAGES, true, 0);
    let text = low.join().unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    check_preempted(only_last_has_metrics(&events), &SERVE_STAGES, true, 1);
}
