//! More requests than the server can hold: the edge refuses the excess with a 503 in
//! OpenAI's shape and a Retry-After header, everything admitted is answered, and the
//! engine goes idle afterwards. Shallow queues and a two-sequence batch make "more than
//! it can hold" a few dozen requests (scripts/overload.py measures the same at scale).

mod common;

use std::sync::{Arc, Barrier};

use common::{MODEL, Server};
use serde_json::{Value, json};

#[test]
fn past_capacity_the_edge_answers_503_with_retry_after() {
    let shipped = std::fs::read_to_string(format!("{}/stages/serve.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let shallow = shipped.replace("queue = 1024", "queue = 2").replace("queue = 4096", "queue = 8");
    assert_ne!(shallow, shipped, "the shipped pipeline's queue depths changed; update this test");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shallow.toml");
    std::fs::write(&path, shallow).unwrap();
    let server = Arc::new(Server::start(&["--max-num-seqs", "2", "--pipeline", path.to_str().unwrap()]));

    // Before the fix the engine took every request that arrived into its waiting list:
    // the queues never filled, nothing was refused, and waits grew without end.
    const CLIENTS: usize = 40;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let answers: Vec<(u16, Option<String>, Value)> = (0..CLIENTS)
        .map(|i| {
            let (server, barrier) = (server.clone(), barrier.clone());
            std::thread::spawn(move || {
                let body = json!({"model": MODEL, "prompt": format!("Story number {i}:"), "max_tokens": 48, "ignore_eos": true});
                barrier.wait();
                let r = Server::client().post(server.url("/v1/completions")).json(&body).send().expect("request");
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (status, retry, r.json::<Value>().unwrap())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();

    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    let served: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 200).collect();
    assert_eq!(refused.len() + served.len(), CLIENTS, "only 200s and 503s: {answers:?}");
    assert!(!refused.is_empty(), "nothing was refused at {CLIENTS} concurrent requests over a capacity of ~14");
    assert!(served.len() >= 2, "the server kept serving: {} answered", served.len());
    for (_, retry, body) in &refused {
        assert_eq!(retry.as_deref(), Some("1"), "a 503 without Retry-After");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        assert_eq!(body["error"]["type"], "service_unavailable_error", "{body}");
    }
    for (_, _, body) in &served {
        assert_eq!(body["usage"]["completion_tokens"], 48, "{body}");
    }
    // Everything admitted has left the engine.
    assert_eq!(server.metric("vllm:num_requests_waiting"), 0.0);
    assert_eq!(server.metric("vllm:num_requests_running"), 0.0);
    assert_eq!(server.metric("vllm:kv_cache_usage_perc"), 0.0);
}
