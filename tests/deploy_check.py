"""Checks that the manifests under deploy/ fit together, beyond what Kubernetes' schemas say.

Run by tests/deploy.rs with the project venv's Python (PyYAML comes with kubernetes-validate):

    python tests/deploy_check.py deploy/

Prints one JSON object for the Rust side to finish the checks it can do better (the server's
own flag parser, its exported metric names):

    {"deployments": {"<file>": ["serve", "--host", ...]}, "metrics": ["vllm_...", ...],
     "adapter_series": {"vllm_...": "vllm:..."}}

and exits 1, after listing every problem on stderr, when something does not fit.
"""

import json
import os
import re
import sys

import yaml

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def load(root):
    """Every YAML document under root, as (relative path, document)."""
    docs = []
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if not name.endswith((".yaml", ".yml")):
                problem(rel, "not a YAML file: deploy/ holds manifests only")
                continue
            with open(path) as f:
                try:
                    for doc in yaml.safe_load_all(f):
                        if doc is not None:
                            docs.append((rel, doc))
                except yaml.YAMLError as e:
                    problem(rel, f"not valid YAML: {e}")
    return docs


def kustomizations(root, docs):
    for rel, doc in docs:
        if doc.get("kind") != "Kustomization":
            continue
        base = os.path.dirname(os.path.join(root, rel))
        for res in doc.get("resources", []):
            target = os.path.normpath(os.path.join(base, res))
            if os.path.isdir(target):
                if not os.path.isfile(os.path.join(target, "kustomization.yaml")):
                    problem(rel, f"resource {res} is a folder without a kustomization.yaml")
            elif not os.path.isfile(target):
                problem(rel, f"resource {res} does not exist")


def flag_value(args, flag):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def deployment(rel, doc, services, claims):
    spec = doc["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    selector = spec["selector"].get("matchLabels", {})
    if any(labels.get(k) != v for k, v in selector.items()):
        problem(rel, f"the selector {selector} does not match the pod labels {labels}")
    for svc_rel, svc in services:
        sel = svc["spec"].get("selector", {})
        if any(labels.get(k) != v for k, v in sel.items()):
            problem(rel, f"{svc_rel}'s selector {sel} does not select these pods ({labels})")
    containers = pod["containers"]
    if len(containers) != 1:
        problem(rel, "one container expected (the server)")
    c = containers[0]
    args = [str(a) for a in c.get("args", [])]
    if not args or args[0] != "serve":
        problem(rel, f"the container's args must start with `serve`: {args}")
    if flag_value(args, "--host") not in ("0.0.0.0", "::"):
        problem(rel, "--host must be 0.0.0.0 (or ::): the default, 127.0.0.1, is unreachable from the Service")
    port_names = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    port = flag_value(args, "--port") or "8000"
    if str(port_names.get("http")) != port:
        problem(rel, f"the container port `http` ({port_names.get('http')}) is not --port {port}")
    for svc_rel, svc in services:
        for p in svc["spec"]["ports"]:
            if p.get("targetPort") not in port_names and p.get("targetPort") not in port_names.values():
                problem(svc_rel, f"targetPort {p.get('targetPort')} is no port of {rel}'s container")
    annotations = spec["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port") != port or annotations.get("prometheus.io/path") != "/metrics":
        problem(rel, "the prometheus.io annotations must name the server's port and /metrics")

    # Probes: readiness on /health (503 while draining), liveness and a start-up allowance.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if c.get(probe, {}).get("httpGet", {}).get("path") != "/health":
            problem(rel, f"{probe} must GET /health")
    # Shutdown: preStop pause + drain must end before the grace period does.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    drain = flag_value(args, "--shutdown-timeout")
    if drain is None:
        problem(rel, "--shutdown-timeout is not set: a replica would not drain")
        drain = 0
    pause = 0
    pre = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        pause = int(pre["sleep"]["seconds"])
    elif pre.get("exec", {}).get("command", [None])[0] == "sleep":
        pause = int(pre["exec"]["command"][1])
    else:
        problem(rel, "no preStop pause: proxies may still send requests after SIGTERM")
    if not grace > int(drain) + pause:
        problem(rel, f"terminationGracePeriodSeconds {grace} is not above preStop {pause} s + --shutdown-timeout {drain} s")

    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for what in ("cpu", "memory"):
            if what not in res.get(kind, {}):
                problem(rel, f"resources.{kind}.{what} is missing")
    threads = flag_value(args, "--threads")
    if threads is not None and str(threads) != str(res.get("requests", {}).get("cpu")):
        problem(rel, f"--threads {threads} differs from the CPU request {res.get('requests', {}).get('cpu')}")
    gpus = int(res.get("limits", {}).get("nvidia.com/gpu", 0))
    tp = int(flag_value(args, "--tensor-parallel-size") or flag_value(args, "--tp") or 1)
    if gpus and tp != gpus:
        problem(rel, f"--tensor-parallel-size {tp} is not the {gpus} GPUs the pod asks for")
    if gpus and flag_value(args, "--device") != "cuda":
        problem(rel, "a pod with GPUs must say --device cuda")

    env = {e["name"]: e for e in c.get("env", [])}
    key = env.get("VLLM_API_KEY", {}).get("valueFrom", {}).get("secretKeyRef")
    if not key or key.get("optional"):
        problem(rel, "VLLM_API_KEY must come from a (required) Secret")
    hf_home = env.get("HF_HOME", {}).get("value")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if hf_home not in mounts:
        problem(rel, f"HF_HOME ({hf_home}) is not a mounted volume")
    else:
        claim = volumes.get(mounts[hf_home], {}).get("persistentVolumeClaim", {}).get("claimName")
        if claim not in claims:
            problem(rel, f"the model cache's claim {claim} is not among the manifests' claims {sorted(claims)}")
    return args


def adapter_rules(docs):
    """The custom-metric names the Prometheus adapter rules produce, with their series."""
    out = {}
    for rel, doc in docs:
        if doc.get("kind") != "ConfigMap" or "prometheus-adapter" not in doc["metadata"]["name"]:
            continue
        config = yaml.safe_load(doc["data"]["config.yaml"])
        for rule in config.get("rules", []):
            series = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", rule["seriesQuery"]).group(1)
            name = rule.get("name", {})
            if name.get("matches") and not re.search(name["matches"], series):
                problem(rel, f"the rule's name pattern {name['matches']} does not match its series {series}")
            overrides = rule.get("resources", {}).get("overrides", {})
            if overrides.get("pod", {}).get("resource") != "pod":
                problem(rel, f"the rule for {series} does not map the `pod` label: no pods metric")
            out[name.get("as") or series] = series
    return out


def main():
    root = sys.argv[1]
    docs = load(root)
    kustomizations(root, docs)
    services = [(r, d) for r, d in docs if d.get("kind") == "Service"]
    claims = {d["metadata"]["name"] for _, d in docs if d.get("kind") == "PersistentVolumeClaim"}
    deployments = {}
    for rel, doc in docs:
        if doc.get("kind") == "Deployment":
            deployments[rel] = deployment(rel, doc, services, claims)
    if not deployments:
        problem(root, "no Deployment")
    names = {d["metadata"]["name"] for _, d in docs if d.get("kind") == "Deployment"}
    adapter = adapter_rules(docs)
    metrics = []
    for rel, doc in docs:
        if doc.get("kind") != "HorizontalPodAutoscaler":
            continue
        target = doc["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in names:
            problem(rel, f"scales {target['kind']}/{target['name']}, which no manifest defines")
        for m in doc["spec"].get("metrics", []):
            if m["type"] != "Pods":
                continue
            name = m["pods"]["metric"]["name"]
            metrics.append(name)
            if name not in adapter:
                problem(rel, f"no Prometheus adapter rule serves the pods metric {name} (rules serve {sorted(adapter)})")
    if not metrics:
        problem(root, "no HorizontalPodAutoscaler scales on a pods metric")
    print(json.dumps({"deployments": deployments, "metrics": metrics, "adapter_series": adapter}))
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


main()
