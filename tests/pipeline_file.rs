//! A wrong pipeline file stops `sluice serve` before it listens, with a message naming the
//! file, the line, the stage and the problem; the shipped files start and serve.

mod common;

use common::Server;
use serde_json::{Value, json};

/// Writes `pipeline` to a file of its own and runs `sluice serve --pipeline` on it, which
/// must stop start-up (a file that starts fails the test, see `common::start_fails`).
fn serve_fails_with(test: &str, pipeline: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sluice-pipeline-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, pipeline).unwrap();
    let err = common::start_fails(&["--pipeline", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    err
}

fn shipped_path(name: &str) -> String {
    format!("{}/stages/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn shipped() -> String {
    std::fs::read_to_string(shipped_path("serve.toml")).unwrap()
}

/// `text` with `from` replaced by `to`, `from` found exactly `times` times: an edit of the
/// shipped file that no longer matches it fails here, rather than leaving a valid file.
fn edited(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(text.matches(from).count(), times, "stages/serve.toml changed: {from:?} should occur {times} time(s)");
    text.replace(from, to)
}

#[test]
fn unknown_stage_kind() {
    let err = serve_fails_with("unknown_stage_kind", &edited(&shipped(), "kind = \"tokenize\"", "kind = \"tokenise\"", 1));
    assert!(err.contains("bad.toml:25: stage 4 (\"tokenise\"): kind: \"tokenise\" is not one of \"decode\", \"render\", \"media\", \"tokenize\", \"guide\", \"encode_images\", \"engine\", \"detokenize\", \"stream\""), "{err}");
}

#[test]
fn missing_field() {
    let text = shipped();
    let at = text.find("workers = 1\nqueue = 1024\n").expect("stages/serve.toml changed: no \"workers = 1\" line");
    let text = format!("{}{}", &text[..at], &text[at + "workers = 1\n".len()..]);
    let err = serve_fails_with("missing_field", &text);
    assert!(err.contains("bad.toml:9: stage 1 (\"decode\"): \"workers\" is a required property"), "{err}");
}

#[test]
fn bad_number() {
    let text = shipped();
    assert!(text.contains("queue = 4096"), "stages/serve.toml changed: no \"queue = 4096\"");
    let err = serve_fails_with("bad_number", &text.replacen("queue = 4096", "queue = -5", 1));
    assert!(err.contains("bad.toml:47: stage 8 (\"detokenize\"): queue: -5 is less than the minimum of 1"), "{err}");
}

#[test]
fn stages_out_of_order() {
    // Swap render and tokenize.
    let swapped = edited(&shipped(), "kind = \"render\"", "kind = \"@@\"", 1);
    let swapped = edited(&swapped, "kind = \"tokenize\"", "kind = \"render\"", 1);
    let swapped = edited(&swapped, "kind = \"@@\"", "kind = \"tokenize\"", 1);
    let err = serve_fails_with("stages_out_of_order", &swapped);
    assert!(err.contains("stage 2 (\"tokenize\"): \"tokenize\" takes prompts but follows stage \"decode\", which produces requests"), "{err}");
}

/// The stage kinds a pipeline file lists, in order.
fn kinds(file: &str) -> Vec<String> {
    std::fs::read_to_string(shipped_path(file))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kind = \""))
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect()
}

/// The stages an answer's per-request metrics name, in order.
fn stages_of(answer: &Value) -> Vec<String> {
    let stages = answer["metrics"]["stages"].as_object().unwrap_or_else(|| panic!("no metrics.stages in {answer}"));
    stages.keys().cloned().collect()
}

/// The shipped files, given with --pipeline, start and serve: stages/serve.toml a
/// generation model, stages/pooling.toml a pooling one; each answer's per-request metrics
/// name the file's stages in its order.
#[test]
fn the_shipped_files_start_and_serve() {
    const SERVE: &[&str] = &[
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-llama"),
        "--pipeline",
        concat!(env!("CARGO_MANIFEST_DIR"), "/stages/serve.toml"),
        "--served-model-name",
        "tiny",
        "--enable-per-request-metrics",
    ];
    let s = Server::shared(SERVE);
    let (status, r) = s.post("/v1/completions", &json!({"model": "tiny", "prompt": "Hello", "max_tokens": 3, "temperature": 0, "ignore_eos": true}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], 3, "{r}");
    let serve = kinds("serve.toml");
    assert_eq!(serve.first().map(String::as_str), Some("decode"));
    assert_eq!(stages_of(&r), serve);

    const POOLING: &[&str] = &[
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-llama"),
        "--task",
        "embed",
        "--pipeline",
        concat!(env!("CARGO_MANIFEST_DIR"), "/stages/pooling.toml"),
        "--enable-per-request-metrics",
    ];
    let s = Server::shared(POOLING);
    let (status, r) = s.post("/v1/embeddings", &json!({"input": ["Hello", "world"]}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["data"].as_array().map(Vec::len), Some(2), "{r}");
    let pooling = kinds("pooling.toml");
    assert_eq!(pooling.first().map(String::as_str), Some("pool_decode"));
    assert_eq!(stages_of(&r), pooling);
}
