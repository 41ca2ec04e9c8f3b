//! Tensor parallelism (`--tensor-parallel-size`) through the server over loopback HTTP:
//! every rank a process of one thread, meeting over Gloo. On the tiny float32 Llama (4
//! heads, 2 KV heads): at TP=2 greedy tokens equal TP=1's and transformers', logprobs
//! within 1e-4, alone and all at once; TP=4 (KV heads replicated) the same; seeded sampling
//! and a structured-output choice draw what TP=1 draws; a size that does not split the
//! model stops start-up naming the sizes that do; a rank killed mid-request gets the
//! request an error answer and the server a non-zero exit, without a hang; two "nodes" on
//! loopback (`--nnodes 2`) serve the same tokens.

mod common;

use std::time::Duration;

use common::greedy::{check_model_item, generate, paired};
use common::{Server, fixture, start_fails};
use serde_json::{Value, json};

const TOL: f64 = 1e-4;

macro_rules! tiny_args {
    ($($extra:literal),*) => {
        &[concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-llama"), "--dtype", "float32",
          "--served-model-name", "tiny", "--threads", "1" $(, $extra)*]
    };
}

const TP1: &[&str] = tiny_args!();
const TP2: &[&str] = tiny_args!("-tp", "2");
const TP4: &[&str] = tiny_args!("--tensor-parallel-size", "4");

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("reference/{name}"))).unwrap()).unwrap()
}

fn prompts() -> Vec<Value> {
    serde_json::from_value(load("tiny_prompts.json")).unwrap()
}

/// Greedy answers equal transformers' (ids, logprobs and top-5 within `TOL`), one request
/// at a time and all at once, and equal the one-process server's.
fn matches_reference_and_tp1(args: &'static [&'static str]) {
    let server = Server::shared(args);
    let single = Server::shared(TP1);
    let reference = load("tiny_llama_f32_greedy.json");
    let prompts = prompts();
    for (prompt, item) in paired(&prompts, &reference) {
        check_model_item(server, "tiny", prompt, item, false, false, TOL);
        let name = item["id"].as_str().unwrap();
        let n = item["output_token_ids"].as_array().unwrap().len();
        let (a, b) = (generate(server, "tiny", prompt, name, n, false), generate(single, "tiny", prompt, name, n, false));
        let ids = |x: &common::greedy::Answer| x.tokens.iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "{name}: tokens differ from --tensor-parallel-size 1");
        for (i, (x, y)) in a.tokens.iter().zip(&b.tokens).enumerate() {
            assert!((x.1 - y.1).abs() < TOL, "{name}: logprob {i}: {} vs {} at TP=1", x.1, y.1);
        }
    }
    // Batched steps (and prefix-cache hits on the repeats) change nothing.
    std::thread::scope(|s| {
        for (prompt, item) in paired(&prompts, &reference) {
            s.spawn(move || check_model_item(server, "tiny", prompt, item, true, false, TOL));
        }
    });
}

#[test]
fn two_ranks_match_one_and_transformers() {
    matches_reference_and_tp1(TP2);
}

/// 4 ranks over 2 KV heads: each KV head is held by the two ranks whose queries read it.
#[test]
fn four_ranks_replicate_kv_heads_and_match() {
    matches_reference_and_tp1(TP4);
}

fn completion(server: &Server, extra: Value) -> Value {
    let mut body = json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 24});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, resp) = server.post("/v1/completions", &body);
    assert_eq!(status, 200, "{resp}");
    resp
}

/// Seeded sampling and a structured-output choice draw the same at TP=2 as at TP=1.
#[test]
fn seeded_sampling_and_structured_output_follow_tp1() {
    let (tp2, tp1) = (Server::shared(TP2), Server::shared(TP1));
    let texts = |r: &Value| r["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    for seed in [1, 2, 3] {
        let extra = json!({"temperature": 1.0, "top_p": 0.9, "seed": seed, "n": 2});
        assert_eq!(texts(&completion(tp2, extra.clone())), texts(&completion(tp1, extra)), "seed {seed}");
    }
    let choices = ["red", "green", "blue or violet"];
    for seed in 0..6 {
        let extra = json!({"temperature": 1.0, "seed": seed, "structured_outputs": {"choice": choices}});
        let a = texts(&completion(tp2, extra.clone()));
        assert!(choices.contains(&a[0].as_str()), "{a:?} is not a choice");
        assert_eq!(a, texts(&completion(tp1, extra)), "seed {seed}");
    }
}

/// SmolLM2-135M has 9 heads (3 KV heads): 2 ranks cannot split it.
#[test]
fn a_size_that_does_not_split_the_model_is_refused() {
    let out = start_fails(&["-tp", "2"]);
    assert!(out.contains("--tensor-parallel-size 2 cannot split this model"), "{out}");
    assert!(out.contains("sizes that work: 1, 3"), "{out}");
    let out = start_fails(&["--pipeline-parallel-size", "2"]);
    assert!(out.contains("--pipeline-parallel-size 2"), "{out}");
}

/// The pid of rank `r` as the server logged it when starting it.
fn rank_pid(server: &Server, r: usize) -> i32 {
    let text = format!("started rank {r} (pid ");
    assert!(server.wait_log(&text, Duration::from_secs(30)), "rank {r} was not started");
    let log = server.log.lock().unwrap().clone();
    let at = log.find(&text).unwrap() + text.len();
    log[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// A rank killed while a request runs: the request is answered with an error, the server
/// says which rank ended and exits non-zero, all within seconds.
#[test]
fn a_killed_rank_fails_open_requests_and_stops_the_server() {
    let mut server = Server::start(TP2);
    let pid = rank_pid(&server, 1);
    let answer = std::thread::scope(|s| {
        let req = s.spawn(|| {
            let body = json!({"model": "tiny", "prompt": "Once", "max_tokens": 1900, "ignore_eos": true, "temperature": 0});
            Server::client().post(server.url("/v1/completions")).json(&body).timeout(Duration::from_secs(60)).send()
        });
        // The request is running when the rank dies.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while server.metric("vllm:num_requests_running") < 1.0 {
            assert!(std::time::Instant::now() < deadline, "the request never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: kill(2) on the server's own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        req.join().unwrap()
    });
    match answer {
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().unwrap_or(Value::Null);
            assert_eq!(status, 500, "{body}");
            assert!(body["error"]["message"].is_string(), "{body}");
        }
        // The connection may close with the process once the answer is out; never a hang.
        Err(e) => assert!(!e.is_timeout(), "the request hung: {e}"),
    }
    let status = server.wait_exit(Duration::from_secs(20)).expect("the server did not exit");
    assert!(!status.success(), "{status}");
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains(&format!("tensor-parallel rank 1 (pid {pid}) exited")), "{log}");
}

/// `--nnodes 2` on loopback: node 1 runs rank 1 and serves nothing; node 0 serves the
/// same tokens as transformers.
#[test]
fn two_nodes_on_loopback() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let port: &'static str = Box::leak(port.into_boxed_str());
    let node = |rank: &'static str| -> Vec<&'static str> {
        let mut a = tiny_args!().to_vec();
        a.extend(["-tp", "2", "--nnodes", "2", "--node-rank", rank, "--master-addr", "127.0.0.1", "--master-port", port]);
        a
    };
    let mut other = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    other.arg("serve").args(node("1")).args(["--port", "0"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut other = other.spawn().unwrap();
    let server = Server::start(&node("0"));
    let reference = load("tiny_llama_f32_greedy.json");
    let prompts = prompts();
    let (prompt, item) = paired(&prompts, &reference)[0];
    check_model_item(&server, "tiny", prompt, item, false, false, TOL);
    // Node 0's stop ends node 1's rank.
    server.signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = other.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "node 1 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "node 1: {status}");
}
