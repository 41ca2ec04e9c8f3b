//! Shutdown as vLLM's `--shutdown-timeout` defines it, on the real binary over loopback:
//! the first SIGTERM or SIGINT turns /health and new requests to 503, lets requests in
//! flight finish for up to the timeout (0: aborts them at once: a stream ends with a
//! `finish_reason: "abort"` chunk and `[DONE]`, a whole answer is an error), then exits 0;
//! a second signal exits at once. `run-batch` stops taking lines on a signal, keeps what
//! it wrote, and `--resume` finishes the file.
//!
//! Engine steps are slowed by an injected fault (`engine:step:sleep`), so that a stream
//! is still open when the signal comes, however fast the machine.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{MODEL, Server, read_stream_signalling_start};
use serde_json::{Value, json};

/// Each engine step takes 40 ms longer: 25 tokens a second at most.
const SLOW: (&str, Option<&str>) = ("SLUICE_FAULTS", Some("engine:step:sleep:ms=40"));

fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "temperature": 0,
        "stream": stream,
    })
}

/// Starts a stream and returns once its first bytes have come, with the thread reading
/// the rest (its whole text when joined).
fn open_stream(server: &Server, body: Value) -> std::thread::JoinHandle<String> {
    let url = server.url("/v1/chat/completions");
    let (started, first) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let r = Server::client().post(url).json(&body).send().expect("request");
        assert_eq!(r.status().as_u16(), 200);
        read_stream_signalling_start(r, &started)
    });
    first.recv_timeout(Duration::from_secs(120)).expect("the stream started");
    reader
}

/// The `data:` payloads of an SSE text.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap_or(e).to_string()).collect()
}

fn finish_reason(event: &str) -> Value {
    let v: Value = serde_json::from_str(event).unwrap_or_else(|_| panic!("not JSON: {event}"));
    v["choices"][0]["finish_reason"].clone()
}

#[test]
fn sigterm_with_timeout_0_aborts_a_stream_and_a_whole_answer_then_exits_0() {
    let mut server = Server::start_env(&["--dtype", "float32"], &[SLOW]);
    // A whole answer in flight beside the stream.
    let url = server.url("/v1/chat/completions");
    let whole = std::thread::spawn(move || {
        let r = Server::client().post(url).json(&chat(2000, false)).send().expect("request");
        (r.status().as_u16(), r.json::<Value>().expect("a JSON body"))
    });
    let stream = open_stream(&server, chat(2000, true));
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("vllm:num_requests_running") < 2.0 {
        assert!(Instant::now() < deadline, "both requests should be running");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    let text = stream.join().unwrap();
    let ev = events(&text);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert_eq!(finish_reason(&ev[ev.len() - 2]), "abort", "{text}");
    // Nothing but content and the abort: no error event, no other finish.
    assert!(ev[..ev.len() - 2].iter().all(|e| finish_reason(e).is_null()), "{text}");
    let (status, body) = whole.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "aborted", "{body}");
    assert_eq!(body["error"]["type"], "service_unavailable_error", "{body}");
    let exit = server.wait_exit(Duration::from_secs(30)).expect("the server exited");
    assert_eq!(exit.code(), Some(0), "{}", server.log.lock().unwrap());
    // 2000 tokens at 25 a second would take 80 s: the abort did not wait for them.
    assert!(t0.elapsed() < Duration::from_secs(30));
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("SIGTERM received: shutting down"), "{log}");
    assert!(log.contains("2 requests in flight are aborted now (--shutdown-timeout 0)"), "{log}");
}

#[test]
fn with_a_drain_timeout_the_stream_completes_while_health_and_new_requests_get_503() {
    // A drain long enough for any machine: the stream must end by itself.
    let mut server = Server::start_env(&["--dtype", "float32", "--shutdown-timeout", "600"], &[SLOW]);
    assert_eq!(server.get("/health").0, 200);
    // 40 tokens: at least 1.6 s at 25 a second, however fast the machine.
    let stream = open_stream(&server, chat(40, true));
    server.signal(libc::SIGINT);
    assert!(server.wait_log("SIGINT received", Duration::from_secs(10)), "{}", server.log.lock().unwrap());
    // While the stream drains: not ready, and no new work.
    assert_eq!(server.get("/health").0, 503);
    let (status, body) = server.post("/v1/completions", &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2}));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    assert_eq!(body["error"]["type"], "service_unavailable_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("shutting down"), "{body}");
    let text = stream.join().unwrap();
    let exit = server.wait_exit(Duration::from_secs(30));
    let log = server.log.lock().unwrap().clone();
    assert!(exit.is_some_and(|s| s.code() == Some(0)), "{exit:?}\n{log}");
    let ev = events(&text);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert_eq!(finish_reason(&ev[ev.len() - 2]), "length", "the stream ran to its end: {text}\n{log}");
    assert!(log.contains("1 requests in flight get up to 600s to finish"), "{log}");
    assert!(!log.contains("aborting"), "{log}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Server::start_env(&["--dtype", "float32", "--shutdown-timeout", "600"], &[SLOW]);
    let stream = open_stream(&server, chat(2000, true));
    server.signal(libc::SIGTERM);
    assert!(server.wait_log("SIGTERM received", Duration::from_secs(10)), "{}", server.log.lock().unwrap());
    // Draining for up to 600 s: still up.
    assert!(server.wait_exit(Duration::from_millis(500)).is_none(), "the server should still drain");
    let t0 = Instant::now();
    server.signal(libc::SIGINT);
    let exit = server.wait_exit(Duration::from_secs(10)).expect("the second signal ends the server");
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    // 128 + SIGINT.
    assert_eq!(exit.code(), Some(130), "{}", server.log.lock().unwrap());
    // The stream is cut: no [DONE] (or the connection broke while the reader read).
    if let Ok(text) = stream.join() {
        assert!(!text.contains("[DONE]"), "{text}");
    }
}

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-shutdown-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn batch(input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["run-batch", "--dtype", "float32", "-i"]).arg(input).arg("-o").arg(output).args(extra).env("RUST_LOG", "info");
    cmd
}

fn custom_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("whole JSON lines")["custom_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn run_batch_stops_on_a_signal_keeps_what_it_wrote_and_resume_finishes() {
    let d = dir("batch");
    let total = 16;
    let lines: Vec<String> = (0..total)
        .map(|i| {
            let body = json!({"model": MODEL, "messages": [{"role": "user", "content": format!("Count from {i}")}],
                              "max_tokens": 12, "ignore_eos": true, "temperature": 0});
            json!({"custom_id": format!("b{i}"), "method": "POST", "url": "/v1/chat/completions", "body": body}).to_string()
        })
        .collect();
    let input = d.join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = d.join("out.jsonl");
    // Two at a time, slowed: lines finish a pair every half second or so.
    let mut child = batch(&input, &output, &["--max-num-seqs", "2"])
        .env(SLOW.0, SLOW.1.unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while std::fs::read_to_string(&output).map(|t| t.lines().count()).unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "no line was written");
        assert!(child.try_wait().unwrap().is_none(), "run-batch ended before writing anything");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an interrupted run fails: {log}");
    assert!(log.contains("SIGTERM received: taking no more lines"), "{log}");
    assert!(log.contains("run the same command with --resume to finish"), "{log}");
    let kept = custom_ids(&output);
    assert!(!kept.is_empty() && kept.len() < total, "{kept:?}");
    let expected: Vec<String> = (0..total).map(|i| format!("b{i}")).collect();
    assert_eq!(kept, expected[..kept.len()], "a prefix of the input, each line once");

    let out = batch(&input, &output, &["--resume"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&format!("{} skipped as already answered", kept.len())), "{log}");
    assert_eq!(custom_ids(&output), expected, "every line once, in input order");
    let _ = std::fs::remove_dir_all(&d);
}
