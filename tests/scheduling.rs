//! Scheduling over HTTP against the real model: priorities (a more urgent request
//! preempts a running one, which then finishes with the same greedy output), the prefix
//! cache, and cancellation, observed through `/metrics`.

mod common;

use std::io::Read;
use std::time::Instant;

use common::{MODEL, Server, read_stream_signalling_start};
use serde_json::{Value, json};

/// One sequence at a time, so that the order of service is visible.
const PRIORITY: &[&str] = &["--dtype", "float32", "--scheduling-policy", "priority", "--max-num-seqs", "1"];

fn completion(prompt: &str, max_tokens: usize, priority: i64) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
           "ignore_eos": true, "priority": priority})
}

/// Streams a request to its end and returns the text and when it ended; `started` is told
/// when the first chunk has arrived.
fn stream_text(s: &Server, body: &Value, started: std::sync::mpsc::Sender<()>) -> (String, Instant) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let r = Server::client().post(s.url("/v1/completions")).json(&body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = read_stream_signalling_start(r, &started);
    let ended = Instant::now();
    let mut out = String::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").unwrap();
        if data != "[DONE]" {
            let v: Value = serde_json::from_str(data).unwrap();
            out.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        }
    }
    (out, ended)
}

#[test]
fn an_urgent_request_preempts_and_the_preempted_one_loses_nothing() {
    let s = Server::shared(PRIORITY);
    let long_prompt = "Write a long story about a lighthouse keeper.";
    let (status, alone) = s.post("/v1/completions", &completion(long_prompt, 120, 5));
    assert_eq!(status, 200, "{alone}");

    let (tx, rx) = std::sync::mpsc::channel();
    let body = completion(long_prompt, 120, 5);
    let low = std::thread::spawn(move || stream_text(Server::shared(PRIORITY), &body, tx));
    rx.recv().unwrap(); // the low-priority request is running
    let (status, urgent) = s.post("/v1/completions", &completion("The capital of France is", 4, -5));
    let urgent_done = Instant::now();
    assert_eq!(status, 200, "{urgent}");
    let (low_text, low_done) = low.join().unwrap();

    assert!(urgent_done < low_done, "the urgent request waited for the running one");
    assert_eq!(low_text, alone["choices"][0]["text"].as_str().unwrap(), "preemption changed the output");
}

#[test]
fn priority_needs_the_priority_policy() {
    let s = Server::shared(&["--dtype", "float32", "--max-num-seqs", "1"]);
    let (status, r) = s.post("/v1/completions", &completion("Hi", 2, 1));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "priority");
    let (status, _) = s.post("/v1/completions", &completion("Hi", 2, 0));
    assert_eq!(status, 200);
}

/// A prompt of about 300 tokens that no other test sends.
fn long_prompt(topic: &str) -> String {
    let mut p = format!("Notes on {topic}. ");
    for i in 0..40 {
        p.push_str(&format!("Point {i}: the {topic} matters for reason {i}. "));
    }
    p
}

fn greedy_ids(s: &Server, prompt: &str, extra: Value) -> Vec<String> {
    let mut body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0,
                          "logprobs": 0, "return_tokens_as_token_ids": true});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, r) = s.post("/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    r["choices"][0]["logprobs"]["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

/// Its own server: the hit counter is the server's, so no other test's requests may land
/// on it while this one reads it (a smaller KV cache keeps the extra server light).
#[test]
fn a_prefix_cache_hit_gives_the_same_greedy_output() {
    let s = Server::shared(&["--dtype", "float32", "--max-model-len", "1024", "--kv-cache-memory", "64MiB"]);
    let prompt = long_prompt("lighthouses");
    let hits = || s.metric("vllm:prefix_cache_hits_total");
    let before = hits();
    let first = greedy_ids(s, &prompt, json!({}));
    let after_first = hits();
    let second = greedy_ids(s, &prompt, json!({}));
    let after_second = hits();
    assert!(after_second - after_first >= 256.0, "the second request reused the first's blocks ({after_first} -> {after_second})");
    assert_eq!(first, second, "a prefix-cache hit changed the output");
    assert!(after_first - before < 256.0, "the first request found its prompt cached already");
    // Another salt shares nothing, and still gives the same output.
    let salted = greedy_ids(s, &prompt, json!({"cache_salt": "tenant-a"}));
    assert_eq!(hits(), after_second, "a salted request hit another salt's blocks");
    assert_eq!(salted, first);
    assert!(s.metric("vllm:prefix_cache_queries_total") >= 3.0 * 256.0);
}

#[test]
fn a_cancelled_stream_frees_its_blocks() {
    let s = Server::shared(&["--dtype", "float32", "--no-enable-prefix-caching"]);
    let body = json!({"model": MODEL, "prompt": long_prompt("tides"), "max_tokens": 2000, "ignore_eos": true,
                      "temperature": 0, "stream": true});
    let mut r = Server::client().post(s.url("/v1/completions")).json(&body).send().unwrap();
    let mut buf = [0u8; 256];
    assert!(r.read(&mut buf).unwrap() > 0, "the stream started");
    assert_eq!(s.metric("vllm:num_requests_running"), 1.0);
    assert!(s.metric("vllm:kv_cache_usage_perc") > 0.0);
    drop(r); // the client goes away
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while s.metric("vllm:kv_cache_usage_perc") > 0.0 {
        assert!(Instant::now() < deadline, "the cancelled sequence still holds blocks");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(s.metric("vllm:num_requests_running"), 0.0);
    assert!(s.metric("vllm:generation_tokens_total") < 2000.0, "it ran to the end instead");
}

/// 32 requests of mixed lengths and kinds (greedy, and seeded sampling at temperature 1
/// with and without filters), alone and all at once. Greedy ones must not change at all.
/// A seeded one may part ways only where the logits themselves differed: float32 matrix
/// products take other kernels for other row counts, and a draw that lands within the
/// resulting ~1e-5 of a token boundary can go either way. Where the logits agree bit for
/// bit, the draw must too, and most seeded requests must come out whole.
#[test]
fn outputs_are_the_same_alone_and_in_a_batch_of_32() {
    let s = Server::shared(&["--dtype", "float32"]);
    let bodies: Vec<Value> = (0..32)
        .map(|i| {
            let words = ["river", "stone", "market", "window", "garden", "letter"];
            let prompt: String = (0..(3 + 7 * (i % 9))).map(|j| words[(i + j) % words.len()]).collect::<Vec<_>>().join(" ");
            let mut b = json!({"model": MODEL, "prompt": format!("Story {i}: {prompt}"), "max_tokens": 8 + (i % 5) * 6,
                               "ignore_eos": true, "logprobs": 20, "return_tokens_as_token_ids": true});
            match i % 3 {
                0 => b["temperature"] = json!(0),
                1 => b.as_object_mut().unwrap().extend(json!({"temperature": 1.0, "seed": i}).as_object().unwrap().clone()),
                _ => b.as_object_mut().unwrap().extend(
                    json!({"temperature": 1.0, "top_p": 0.9, "top_k": 40, "min_p": 0.02, "seed": 1000 + i}).as_object().unwrap().clone(),
                ),
            }
            b
        })
        .collect();
    let run = |b: &Value| -> Value {
        let (status, r) = s.post("/v1/completions", b);
        assert_eq!(status, 200, "{r}");
        r["choices"][0]["logprobs"].clone()
    };
    let alone: Vec<Value> = bodies.iter().map(run).collect();
    let together: Vec<Value> = std::thread::scope(|sc| {
        let handles: Vec<_> = bodies.iter().map(|b| sc.spawn(move || run(b))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut whole = 0;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        if a["tokens"] == t["tokens"] {
            whole += (i % 3 != 0) as usize;
            continue;
        }
        assert!(i % 3 != 0, "greedy request {i} changed in the batch: {} vs {}", a["tokens"], t["tokens"]);
        let at = (0..).find(|&k| a["tokens"][k] != t["tokens"][k]).unwrap();
        let token = a["tokens"][at].as_str().unwrap();
        let (lp_alone, lp_batched) = (a["token_logprobs"][at].as_f64().unwrap(), t["top_logprobs"][at][token].as_f64());
        assert_ne!(Some(lp_alone), lp_batched, "request {i}, token {at}: the same logits drew another token in the batch");
    }
    assert!(whole >= 16, "only {whole} of 21 seeded requests came out the same in the batch");
}
