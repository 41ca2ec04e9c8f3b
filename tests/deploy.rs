//! The deployment files. deploy/'s Kubernetes manifests are checked against Kubernetes' own
//! schemas (PyPI's `kubernetes-validate`, strict: an unknown field is an error), then for
//! fitting together (tests/deploy_check.py: selectors, ports, probes, the shutdown budget,
//! the model cache, the autoscaler's metric and its adapter rule); their server flags go
//! through sluice's own flag parser, and the autoscaler's metric must be one that /metrics
//! exports. The Dockerfile goes through hadolint. The tools come from scripts/setup.sh.

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
