//! Injected faults (`SLUICE_FAULTS`, a switch for tests only): a stage worker that panics
//! fails only the request it was handling, with a 500 in OpenAI's shape, and the stage
//! goes on (counted in /metrics); a failed engine step fails its requests and the engine
//! goes on; a `run-batch` whose output disk fills stops with a clear error, no line is
//! written twice, and `--resume` completes the file.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{MODEL, Server};
use serde_json::{Value, json};

fn completion(max_tokens: u32) -> Value {
    json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": max_tokens, "temperature": 0})
}

fn assert_server_error(status: u16, body: &Value, mentions: &str) {
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no message: {body}"));
    assert!(message.contains(mentions), "{body}");
}

#[test]
fn a_panicking_stage_fails_only_its_request_and_goes_on() {
    let server = Server::start_env(&["--dtype", "float32"], &[("SLUICE_FAULTS", Some("stage:tokenize:panic:nth=2"))]);
    let (status, first) = server.post("/v1/completions", &completion(4));
    assert_eq!(status, 200, "{first}");
    let (status, body) = server.post("/v1/completions", &completion(4));
    assert_server_error(status, &body, "tokenize stage");
    // The same worker serves the next requests, with the same answer as before.
    for _ in 0..2 {
        let (status, again) = server.post("/v1/completions", &completion(4));
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["choices"], first["choices"]);
    }
    assert_eq!(server.get("/health").0, 200);
    let metrics = Server::client().get(server.url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("sluice_stage_panics_total{stage=\"tokenize\"} 1\n"), "{metrics}");
    assert!(metrics.contains("sluice_stage_panics_total{stage=\"render\"} 0\n"), "{metrics}");
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("stage \"tokenize\" panicked on an item"), "{log}");
}

#[test]
fn a_stage_that_keeps_state_panicking_mid_stream_ends_that_stream_with_an_error() {
    // detokenize runs its own loop with per-request state; its third item panics, well
    // after the stream's first chunks have gone (each engine step takes 30 ms longer).
    let faults = "stage:detokenize:panic:nth=3,engine:step:sleep:ms=30";
    let server = Server::start_env(&["--dtype", "float32"], &[("SLUICE_FAULTS", Some(faults))]);
    let mut body = completion(8);
    body["stream"] = json!(true);
    let events = server.post_sse("/v1/completions", &body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    assert!(events.len() >= 3, "a chunk came before the error: {events:?}");
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error", "{events:?}");
    assert!(error["error"]["message"].as_str().unwrap().contains("detokenize stage"), "{events:?}");
    // The stage goes on: the same stream again runs to its end.
    let events = server.post_sse("/v1/completions", &body);
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{events:?}");
    assert_eq!(server.metric("sluice_stage_panics_total{stage=\"detokenize\"}"), 1.0);
}

#[test]
fn a_failed_engine_step_fails_its_requests_and_the_engine_goes_on() {
    let server = Server::start_env(&["--dtype", "float32"], &[("SLUICE_FAULTS", Some("engine:step:panic:nth=3"))]);
    let (status, body) = server.post("/v1/completions", &completion(8));
    assert_server_error(status, &body, "The engine failed while running this request");
    let (status, body) = server.post("/v1/completions", &completion(8));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    // Every block is free again (the figure is published after the step that ends a request).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.metric("vllm:kv_cache_usage_perc") > 0.0 {
        assert!(std::time::Instant::now() < deadline, "KV blocks are still held");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("an engine step failed"), "{log}");
}

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-faults-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_batch(input: &Path, output: &Path, extra: &[&str], faults: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["run-batch", "--dtype", "float32", "-i"]).arg(input).arg("-o").arg(output).args(extra).env("RUST_LOG", "info");
    match faults {
        Some(f) => cmd.env("SLUICE_FAULTS", f),
        None => cmd.env_remove("SLUICE_FAULTS"),
    };
    cmd.output().expect("runs")
}

#[test]
fn a_full_disk_stops_run_batch_clearly_and_resume_completes_the_file() {
    let d = dir("disk");
    let total = 6;
    let lines: Vec<String> = (0..total)
        .map(|i| {
            let body = json!({"model": MODEL, "prompt": format!("Number {i} is"), "max_tokens": 4, "temperature": 0});
            json!({"custom_id": format!("d{i}"), "method": "POST", "url": "/v1/completions", "body": body}).to_string()
        })
        .collect();
    let input = d.join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = d.join("out.jsonl");
    let out = run_batch(&input, &output, &[], Some("batch:write:fail:after=2"));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("writing the output failed after 2 of 6 lines"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("--resume"), "{log}");
    let text = std::fs::read_to_string(&output).unwrap();
    assert_eq!(text.matches('\n').count(), 2, "two whole lines, then part of the third: {text}");
    assert!(!text.ends_with('\n'), "the third line is cut: {text}");

    let out = run_batch(&input, &output, &["--resume"], None);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("dropped a cut-off last line"), "{log}");
    assert!(log.contains("4 lines answered (0 failed), 2 skipped"), "{log}");
    let ids: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("whole JSON lines")["custom_id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..total).map(|i| format!("d{i}")).collect();
    assert_eq!(ids, expected, "every line once, in input order");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_fault_list_naming_no_stage_stops_start_up() {
    let printed = common::start_fails_with(&["--dtype", "float32"], &[("SLUICE_FAULTS", "stage:tokenise:panic")]);
    assert!(printed.contains("SLUICE_FAULTS"), "{printed}");
    assert!(printed.contains("no stage is named \"tokenise\""), "{printed}");
    let printed = common::start_fails_with(&["--dtype", "float32"], &[("SLUICE_FAULTS", "stage:tokenize:explode")]);
    assert!(printed.contains("the action \"explode\" is not one of panic, sleep, fail"), "{printed}");
}
