//! `sluice run-batch` on real files with the real model: good and bad lines, answers the
//! HTTP server would give, input order, resume after an interrupted run, and pooling models.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{MODEL, Server, minilm_dir};
use serde_json::{Value, json};

const ARGS: &[&str] = &["--dtype", "float32"];

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-batch-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn line(custom_id: &str, url: &str, body: Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).to_string()
}

fn chat_line(custom_id: &str, content: &str, max_tokens: u32) -> String {
    line(
        custom_id,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}),
    )
}

fn run_batch(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run-batch")
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(output)
        .args(extra)
        .env("RUST_LOG", "info")
        .output()
        .expect("run sluice run-batch");
    assert!(out.status.success(), "run-batch failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).expect("an output line is JSON")).collect()
}

/// A body without what differs between two answers to the same request.
fn comparable(mut body: Value) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.remove("id");
        o.remove("created");
    }
    body
}

#[test]
fn good_and_bad_lines_answer_as_the_server_would_in_input_order() {
    let d = dir("mixed");
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "temperature": 0});
    let cmpl = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0});
    let bad_body = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": -1});
    let lines = [
        line("chat-1", "/v1/chat/completions", chat.clone()),
        line("cmpl-1", "/v1/completions", cmpl.clone()),
        "{not json".to_string(),
        line("bad-url", "/v1/nothing", json!({})),
        line("bad-body", "/v1/chat/completions", bad_body.clone()),
        line("embed", "/v1/embeddings", json!({"model": MODEL, "input": "x"})),
        line("chat-1", "/v1/chat/completions", chat.clone()),
        String::new(),
        r#"{"custom_id": "get", "method": "GET", "url": "/v1/completions", "body": {}}"#.to_string(),
        chat_line("chat-2", "Count to three", 12),
    ];
    let input = d.join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = d.join("out.jsonl");
    let run = run_batch(&input, &output, ARGS);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(log.contains("custom_id \"chat-1\" is already used by line 1"), "{log}");

    let out = read_lines(&output);
    let ids: Vec<&Value> = out.iter().map(|l| &l["custom_id"]).collect();
    assert_eq!(ids, [&json!("chat-1"), &json!("cmpl-1"), &Value::Null, &json!("bad-url"), &json!("bad-body"), &json!("embed"), &json!("chat-1"), &json!("get"), &json!("chat-2")]);
    let status: Vec<u64> = out.iter().map(|l| l["response"]["status_code"].as_u64().unwrap()).collect();
    assert_eq!(status, [200, 200, 400, 404, 400, 400, 400, 405, 200]);
    for l in &out {
        let ok = l["response"]["status_code"] == 200;
        assert_eq!(l["error"].is_null(), ok, "{l}");
        if !ok {
            assert_eq!(l["response"]["body"]["error"], l["error"], "{l}");
        }
    }
    assert_eq!(out[6]["error"]["code"], "duplicate_custom_id");

    // The same bodies over HTTP get the same answers.
    let server = Server::shared(ARGS);
    for (i, body, path) in [(0, &chat, "/v1/chat/completions"), (1, &cmpl, "/v1/completions"), (4, &bad_body, "/v1/chat/completions")] {
        let (status, http) = server.post(path, body);
        assert_eq!(status as u64, out[i]["response"]["status_code"].as_u64().unwrap());
        assert_eq!(comparable(http), comparable(out[i]["response"]["body"].clone()), "line {}", i + 1);
    }
    let (_, http) = server.post("/v1/embeddings", &json!({"model": MODEL, "input": "x"}));
    assert_eq!(http, out[5]["response"]["body"]);

    snap!("batch_output", out,
        "[].response.request_id" => "[request_id]",
        "[].response.body.id" => "[id]",
        "[].response.body.created" => "[created]");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn resume_after_a_cut_output_runs_only_what_is_missing() {
    let d = dir("cut");
    let lines: Vec<String> = (0..6).map(|i| chat_line(&format!("q{i}"), &format!("Name a number above {i}"), 6)).collect();
    let input = d.join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = d.join("out.jsonl");
    run_batch(&input, &output, ARGS);
    let full = std::fs::read_to_string(&output).unwrap();
    let full_lines: Vec<&str> = full.lines().collect();
    assert_eq!(full_lines.len(), 6);

    // As if the run had stopped while writing the third line.
    let kept = format!("{}\n{}\n{}", full_lines[0], full_lines[1], &full_lines[2][..40]);
    std::fs::write(&output, &kept).unwrap();
    let run = run_batch(&input, &output, &["--dtype", "float32", "--resume"]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(log.contains("dropped a cut-off last line"), "{log}");
    assert!(log.contains("4 lines answered (0 failed), 2 skipped"), "{log}");
    let resumed = std::fs::read_to_string(&output).unwrap();
    assert!(resumed.starts_with(&format!("{}\n{}\n", full_lines[0], full_lines[1])), "the kept lines are untouched");
    let out = read_lines(&output);
    let ids: Vec<String> = out.iter().map(|l| l["custom_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["q0", "q1", "q2", "q3", "q4", "q5"]);
    // Greedy answers do not depend on which run gave them.
    let before: Vec<Value> = full_lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect();
    for (a, b) in before.iter().zip(&out) {
        assert_eq!(a["response"]["body"]["choices"], b["response"]["body"]["choices"]);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn resume_after_the_process_is_killed_mid_run() {
    let d = dir("killed");
    let total = 24;
    let lines: Vec<String> = (0..total).map(|i| chat_line(&format!("k{i}"), &format!("Tell me about the number {i}"), 24)).collect();
    let input = d.join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = d.join("out.jsonl");
    // Two sequences at a time, so the run takes a while and finishes lines one pair at a time.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run-batch", "--dtype", "float32", "--max-num-seqs", "2", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let written = std::fs::read_to_string(&output).map(|t| t.lines().count()).unwrap_or(0);
        if written >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no line was written");
        assert!(child.try_wait().unwrap().is_none(), "run-batch ended before writing anything");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = std::fs::read_to_string(&output).unwrap();
    let done = at_kill.lines().count();
    assert!(done < total, "the run finished before it could be interrupted");

    let run = run_batch(&input, &output, &["--dtype", "float32", "--resume"]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(log.contains(&format!("{} skipped as already answered", at_kill.matches('\n').count())), "{log}");
    let out = read_lines(&output);
    let ids: Vec<String> = out.iter().map(|l| l["custom_id"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = (0..total).map(|i| format!("k{i}")).collect();
    assert_eq!(ids, expected, "every line once, in input order");
    assert!(out.iter().all(|l| l["response"]["status_code"] == 200), "{out:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn http_only_flags_are_refused() {
    let d = dir("flags");
    let input = d.join("in.jsonl");
    std::fs::write(&input, chat_line("a", "hi", 1)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run-batch", "--port", "9000", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(d.join("out.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--port is a flag of `sluice serve`; this command reads a file"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}


/// Equal JSON, numbers within 1e-5; prints where they first differ.
fn close(a: &Value, b: &Value, at: &str) -> bool {
    let same = match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).enumerate().all(|(i, (x, y))| close(x, y, &format!("{at}[{i}]")))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w, &format!("{at}.{k}"))))
        }
        _ => a == b,
    };
    if !same && !matches!(a, Value::Array(_) | Value::Object(_)) {
        eprintln!("{at}: {a} vs {b}");
    }
    same
}

#[test]
fn a_pooling_model_answers_embeddings_score_and_rerank_lines() {
    let d = dir("pooling");
    let model = minilm_dir();
    let embed = json!({"model": "minilm", "input": ["a red apple", "a green pear"]});
    let score = json!({"model": "minilm", "text_1": "fruit", "text_2": ["a red apple", "a car"]});
    let rerank = json!({"model": "minilm", "query": "fruit", "documents": ["a car", "a red apple"]});
    let lines = [
        line("e", "/v1/embeddings", embed.clone()),
        line("s", "/score", score.clone()),
        line("r", "/rerank", rerank.clone()),
        chat_line("c", "hi", 4),
    ];
    let input = d.join("in.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = d.join("out.jsonl");
    let args = ["--model", model.as_str(), "--dtype", "float32", "--served-model-name", "minilm"];
    run_batch(&input, &output, &args);
    let out = read_lines(&output);
    let status: Vec<u64> = out.iter().map(|l| l["response"]["status_code"].as_u64().unwrap()).collect();
    assert_eq!(status, [200, 200, 200, 400]);
    assert!(out[3]["error"]["message"].as_str().unwrap().contains("does not support the Chat Completions API"), "{}", out[3]);

    let server_args: &'static [&'static str] = Box::leak(
        args.iter().skip(1).map(|a| &*Box::leak(a.to_string().into_boxed_str())).collect::<Vec<&'static str>>().into_boxed_slice(),
    );
    let server = Server::shared(server_args);
    // Same answers up to float rounding: which inputs share a forward pass (and its
    // padding) moves the last digits.
    for (i, path, body) in [(0, "/v1/embeddings", &embed), (1, "/score", &score), (2, "/rerank", &rerank)] {
        let (status, http) = server.post(path, body);
        assert_eq!(status, 200, "{http}");
        let batch = comparable(out[i]["response"]["body"].clone());
        assert!(close(&comparable(http), &batch, "$"), "line {}", i + 1);
    }
    let _ = std::fs::remove_dir_all(&d);
}
