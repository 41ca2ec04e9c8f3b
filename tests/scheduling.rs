//! Scheduling over HTTP against the real model: priorities (a more urgent request
//! preempts a running one, which then finishes with the same greedy output).

mod common;

use std::io::Read;
use std::time::Instant;

use common::{MODEL, Server};
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
    let mut r = Server::client().post(s.url("/v1/completions")).json(&body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut told = false;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if !told {
            let _ = started.send(());
            told = true;
        }
    }
    let ended = Instant::now();
    let text = String::from_utf8(raw).unwrap();
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
