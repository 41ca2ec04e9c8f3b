//! A wrong pipeline file stops `sluice serve` before it listens, with a message naming the
//! file, the line, the stage and the problem; the shipped file starts.

use std::process::Command;

fn serve_with(test: &str, pipeline: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("sluice-pipeline-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, pipeline).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--port", "0", "--pipeline"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn shipped() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/stages/serve.toml")).unwrap()
}

#[test]
fn unknown_stage_kind() {
    let test = "unknown_stage_kind";
    let (ok, err) = serve_with(test, &shipped().replace("kind = \"tokenize\"", "kind = \"tokenise\""));
    assert!(!ok);
    assert!(err.contains("bad.toml:20: stage 3 (\"tokenise\"): kind: \"tokenise\" is not one of \"decode\", \"render\", \"tokenize\", \"guide\", \"engine\", \"detokenize\", \"stream\""), "{err}");
}

#[test]
fn missing_field() {
    let test = "missing_field";
    let (ok, err) = serve_with(test, &shipped().replacen("workers = 1\nqueue = 1024\n", "queue = 1024\n", 1));
    assert!(!ok);
    assert!(err.contains("bad.toml:9: stage 1 (\"decode\"): \"workers\" is a required property"), "{err}");
}

#[test]
fn bad_number() {
    let test = "bad_number";
    let (ok, err) = serve_with(test, &shipped().replacen("queue = 4096", "queue = -5", 1));
    assert!(!ok);
    assert!(err.contains("bad.toml:37: stage 6 (\"detokenize\"): queue: -5 is less than the minimum of 1"), "{err}");
}

#[test]
fn stages_out_of_order() {
    let test = "stages_out_of_order";
    let text = shipped();
    // Swap render and tokenize.
    let swapped = text
        .replace("kind = \"render\"", "kind = \"@@\"")
        .replace("kind = \"tokenize\"", "kind = \"render\"")
        .replace("kind = \"@@\"", "kind = \"tokenize\"");
    let (ok, err) = serve_with(test, &swapped);
    assert!(!ok);
    assert!(err.contains("stage 2 (\"tokenize\"): \"tokenize\" takes prompts but follows stage \"decode\", which produces requests"), "{err}");
}
