#!/usr/bin/env python3
"""A bounded soak of a running sluice: mixed load with disconnects and bad requests.

Starts `sluice serve` with the default model (chat, completions, structured outputs)
and, unless --no-embeddings, a second server with the default embedding model, then
drives them with --clients threads for --minutes:

- chat and completions, streamed and not; structured outputs (`response_format`
  json_schema, whose answers must parse as JSON when they finish with "stop");
  embeddings of distinct texts of random lengths on the second server;
- a third of the clients drop the connection at a random point: while sending the body,
  right after it, or after a random number of streamed chunks;
- about one request in ten is a bad one (broken JSON, wrong types, out-of-range fields,
  an unknown model), which must get a 4xx.

Every few seconds it samples each server's resident memory from /proc/PID/status. Before
the load, the embedding server gets one request per row count its encoder can run
(see `warm_embedding_shapes`). At the end it waits for the servers to go idle and checks:

- no 5xx (and no connection error) to any well-formed request that was not dropped;
- `vllm:kv_cache_usage_perc` 0 and no request running or waiting, per /metrics;
- resident memory after warm-up flat: the median of the last minute's samples no more
  than --max-growth (5%) above the median of the first minute after warm-up.

Exits 1 when a check fails. Figures are printed, and written as JSON with --json.

    scripts/soak.py [--minutes 10] [--clients 12] [--bin target/release/sluice]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}

PROMPTS = [
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "List three colours.",
    "Explain recursion in one sentence.",
    "Count from one to ten.",
    "Tell me a fact about cats.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Server:
    def __init__(self, binary: str, model: str | None, log_path: str, extra: list[str]):
        self.port = free_port()
        args = [binary, "serve"] + ([model] if model else []) + ["--host", "127.0.0.1", "--port", str(self.port)] + extra
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.name = model or "default"

    def wait_ready(self, timeout: float = 300) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"server {self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                status, _ = request(self.port, "GET", "/health", None, timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"server {self.name} did not become ready in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def request(port: int, method: str, path: str, body: bytes | None, timeout: float = 300) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def metrics(port: int) -> dict[str, float]:
    _, text = request(port, "GET", "/metrics", None, timeout=30)
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        m = re.match(r"^(vllm:(?:kv_cache_usage_perc|num_requests_running|num_requests_waiting))(\{[^}]*\})?\s+(\S+)", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


# --- requests -------------------------------------------------------------------------

WORDS = ("the quick brown fox jumps over a lazy dog while seven tired engineers measure how much "
         "memory a server keeps after every request it answered").split()


def distinct_text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 120))) + f" {rng.randint(0, 10**9)}"


# The embedding server's limits, passed as flags so that the shape warm-up below knows them.
EMBED_BATCH_TOKENS = 2048
EMBED_MAX_LEN = 256


def warm_embedding_shapes(port: int) -> int:
    """Sends one request for every multiple of 16 tokens up to what one forward pass takes.

    The encoder runs its dense layers on a row count rounded up to one of a few multiples
    of 16 (`token_rows` in the BERT model), and libtorch keeps compiled matrix-product
    kernels per shape it meets: resident memory rises as new shapes arrive and stays level
    once each has been seen. Random traffic meets the larger ones only now and then, so
    without this the memory check would read their first arrival as growth. Token-id
    inputs make each request's total exact; each is alone in the encoder (sent in turn)
    and split into at most 256-token inputs that one forward pass takes whole.
    Returns the number of requests."""
    n = 0
    for total in range(16, EMBED_BATCH_TOKENS + 1, 16):
        parts = -(-total // EMBED_MAX_LEN)
        lengths = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
        body = {"input": [[1000 + (i + j) % 997 for j in range(l)] for i, l in enumerate(lengths)]}
        status, data = request(port, "POST", "/v1/embeddings", json.dumps(body).encode())
        if status != 200:
            raise SystemExit(f"shape warm-up: {total} tokens got {status}: {data[:200]!r}")
        n += 1
    return n


def good_request(rng: random.Random, model: str, embeddings: bool) -> tuple[str, str, dict, bool]:
    """(kind, path, body, streamed)."""
    kinds = ["chat", "chat_stream", "completion", "completion_stream", "structured", "structured_stream"]
    if embeddings:
        kinds.append("embeddings")
    kind = rng.choice(kinds)
    prompt = rng.choice(PROMPTS)
    max_tokens = rng.randint(4, 48)
    if kind.startswith("chat"):
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": rng.choice([0, 0.7, 1.0])}
        path = "/v1/chat/completions"
    elif kind.startswith("completion"):
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": rng.choice([0, 0.8]),
                "stop": rng.choice([None, ["\n\n"], ["."]])}
        path = "/v1/completions"
    elif kind.startswith("structured"):
        body = {"model": model, "messages": [{"role": "user", "content": "Give a person as JSON."}],
                "max_tokens": 64, "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}}
        path = "/v1/chat/completions"
    else:
        # Distinct texts of random lengths: each request a new batch shape, as real
        # traffic is (a server that kept something per distinct input would grow here).
        texts = [distinct_text(rng) for _ in range(rng.randint(1, 8))]
        body = {"input": texts if len(texts) > 1 else texts[0]}
        path = "/v1/embeddings"
    streamed = kind.endswith("_stream")
    if streamed:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return kind, path, body, streamed


def bad_request(rng: random.Random, model: str) -> tuple[str, bytes]:
    """A malformed request (path, raw body): each must be a 4xx."""
    choices = [
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}'),
        ("/v1/chat/completions", json.dumps({"model": model, "messages": "hello"}).encode()),
        ("/v1/chat/completions", json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}],
                                             "temperature": -3}).encode()),
        ("/v1/completions", json.dumps({"model": model, "prompt": "x", "max_tokens": -1}).encode()),
        ("/v1/completions", json.dumps({"model": "no-such-model", "prompt": "x"}).encode()),
        ("/v1/completions", json.dumps({"model": model, "prompt": "x", "n": "two"}).encode()),
        ("/v1/chat/completions", json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}],
                                             "response_format": {"type": "json_schema", "json_schema": {
                                                 "name": "x", "schema": {"type": "nonsense"}}}}).encode()),
        ("/v1/completions", bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))),
        ("/v1/completions", b"[]"),
    ]
    return rng.choice(choices)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: Counter = Counter()
        self.status: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[str] = []

    def add(self, key: str, status: str, failure: str | None = None) -> None:
        with self.lock:
            self.count[key] += 1
            self.status[key][status] += 1
            if failure and len(self.failures) < 50:
                self.failures.append(failure)


def drop_at_random(rng: random.Random, port: int, path: str, body: bytes, streamed: bool) -> str:
    """Sends the request and hangs up at a random point; returns where."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        where = rng.choice(["body", "sent", "reading"])
        if where == "body":
            s.sendall(head + body[: rng.randint(0, max(0, len(body) - 1))])
            time.sleep(rng.uniform(0, 0.2))
            return "mid-body"
        s.sendall(head + body)
        if where == "sent":
            time.sleep(rng.uniform(0, 0.5))
            return "after-send"
        # Read a random amount of the answer (for streams: a few chunks), then go.
        want = rng.randint(1, 2000 if streamed else 200)
        got = 0
        while got < want:
            chunk = s.recv(min(256, want - got))
            if not chunk:
                break
            got += len(chunk)
        return "mid-answer"
    finally:
        # An abortive close (RST), as a killed client leaves it, or an orderly one.
        if rng.random() < 0.5:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()


def read_stream(port: int, path: str, body: bytes) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        return r.status, r.getheader("Content-Type", ""), data
    finally:
        conn.close()


def check_stream(data: bytes) -> str | None:
    events = [l[6:] for l in data.decode(errors="replace").splitlines() if l.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return "stream did not end with [DONE]"
    finish = None
    for e in events[:-1]:
        try:
            obj = json.loads(e)
        except ValueError:
            return f"stream event is not JSON: {e[:80]}"
        if "error" in obj:
            return f"stream carried an error: {e[:160]}"
        for c in obj.get("choices", []):
            finish = c.get("finish_reason") or finish
    if finish is None:
        return "stream never gave a finish_reason"
    return None


def structured_content(kind: str, data: bytes) -> tuple[str, str | None]:
    if kind == "structured":
        obj = json.loads(data)
        c = obj["choices"][0]
        return c["message"]["content"] or "", c["finish_reason"]
    text, finish = [], None
    for l in data.decode().splitlines():
        if l.startswith("data: ") and l != "data: [DONE]":
            for c in json.loads(l[6:]).get("choices", []):
                text.append(c.get("delta", {}).get("content") or "")
                finish = c.get("finish_reason") or finish
    return "".join(text), finish


def client(idx: int, args, gen_port: int, emb_port: int | None, deadline: float, stats: Stats, model: str) -> None:
    rng = random.Random(args.seed * 1000 + idx)
    dropper = idx % 3 == 0
    while time.time() < deadline:
        if rng.random() < args.bad_share:
            path, raw = bad_request(rng, model)
            try:
                status, _ = request(gen_port, "POST", path, raw)
                ok = 400 <= status < 500
                stats.add("bad", str(status), None if ok else f"bad request to {path} got {status}: {raw[:80]!r}")
            except OSError as e:
                stats.add("bad", "conn-error", f"bad request to {path}: {e}")
            continue
        kind, path, body, streamed = good_request(rng, model, emb_port is not None)
        port = emb_port if kind == "embeddings" else gen_port
        raw = json.dumps(body).encode()
        if dropper:
            try:
                where = drop_at_random(rng, port, path, raw, streamed)
                stats.add("dropped", where)
            except OSError as e:
                stats.add("dropped", f"error:{type(e).__name__}")
            continue
        try:
            if streamed:
                status, ctype, data = read_stream(port, path, raw)
                failure = None
                if status >= 500:
                    failure = f"{kind}: {status} {data[:200]!r}"
                elif status == 200:
                    failure = check_stream(data)
                    failure = failure and f"{kind}: {failure}"
            else:
                status, data = request(port, "POST", path, raw)
                failure = f"{kind}: {status} {data[:200]!r}" if status >= 500 or status != 200 else None
            if status == 200 and kind.startswith("structured"):
                text, finish = structured_content(kind, data)
                if finish == "stop":
                    try:
                        obj = json.loads(text)
                        if not (isinstance(obj, dict) and set(obj) == {"name", "age"}):
                            failure = f"{kind}: answer does not match the schema: {text[:120]}"
                    except ValueError:
                        failure = f"{kind}: answer is not JSON: {text[:120]}"
            stats.add(kind, str(status), failure)
        except (OSError, http.client.HTTPException) as e:
            stats.add(kind, "conn-error", f"{kind}: {type(e).__name__}: {e}")


def sampler(servers: dict[str, Server], samples: dict[str, list[tuple[float, int]]], stop: threading.Event,
            t0: float, every: float) -> None:
    while not stop.is_set():
        for name, s in servers.items():
            r = rss_kib(s.proc.pid)
            if r is not None:
                samples[name].append((time.time() - t0, r))
        stop.wait(every)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to drive load (default 10)")
    ap.add_argument("--clients", type=int, default=12, help="concurrent clients (a third of them drop)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of warm-up excluded from the memory check (default: a fifth of the run, at most 120)")
    ap.add_argument("--bad-share", type=float, default=0.1, help="share of requests that are malformed")
    ap.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth after warm-up (0.05 = 5%%)")
    ap.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    ap.add_argument("--no-embeddings", action="store_true", help="do not start the embedding server")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                  "release", "sluice"))
    # The KV cache is allocated up front but its pages are first written when a block is
    # first handed out, and free blocks are handed out in turn: with the default budget
    # (2 GiB here) resident memory climbs block by block for as long as unused blocks
    # remain, which reads as growth though nothing leaks. A small cache is cycled through
    # during warm-up, so what the memory check sees after it is the rest of the server.
    ap.add_argument("--serve-args", default="--kv-cache-memory 64MiB --max-model-len 2048",
                    help="extra flags for the generation server (default: a 64 MiB KV cache, see above)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here as JSON")
    ap.add_argument("--logs", default="/tmp", help="folder for the servers' logs")
    args = ap.parse_args()

    servers = {"generate": Server(args.bin, None, os.path.join(args.logs, "soak-generate.log"), args.serve_args.split())}
    if not args.no_embeddings:
        servers["embed"] = Server(args.bin, "sentence-transformers/all-MiniLM-L6-v2",
                                  os.path.join(args.logs, "soak-embed.log"),
                                  ["--max-num-batched-tokens", str(EMBED_BATCH_TOKENS),
                                   "--max-model-len", str(EMBED_MAX_LEN)])
    try:
        for s in servers.values():
            s.wait_ready()
        gen_port = servers["generate"].port
        emb_port = servers["embed"].port if "embed" in servers else None
        _, models = request(gen_port, "GET", "/v1/models", None)
        model = json.loads(models)["data"][0]["id"]

        if emb_port is not None:
            w0 = time.time()
            n = warm_embedding_shapes(emb_port)
            print(f"embedding shape warm-up: {n} requests in {time.time() - w0:.0f} s", flush=True)

        duration = args.minutes * 60
        warmup = args.warmup if args.warmup is not None else min(120.0, duration / 5)
        stats = Stats()
        samples: dict[str, list[tuple[float, int]]] = {n: [] for n in servers}
        stop = threading.Event()
        t0 = time.time()
        deadline = t0 + duration
        mon = threading.Thread(target=sampler, args=(servers, samples, stop, t0, args.sample_every), daemon=True)
        mon.start()
        threads = [threading.Thread(target=client, args=(i, args, gen_port, emb_port, deadline, stats, model), daemon=True)
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        last = t0
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            if time.time() - last >= 60:
                last = time.time()
                done = sum(stats.count.values())
                rss = {n: (v[-1][1] // 1024 if v else None) for n, v in samples.items()}
                print(f"[{int(last - t0)} s] {done} requests, RSS MiB {rss}", flush=True)
        elapsed = time.time() - t0

        # Quiesce: dropped requests must be cancelled and their blocks freed.
        idle = {}
        for name, s in servers.items():
            end = time.time() + 30
            while True:
                m = metrics(s.port)
                if (m.get("vllm:kv_cache_usage_perc", 0) == 0 and m.get("vllm:num_requests_running", 0) == 0
                        and m.get("vllm:num_requests_waiting", 0) == 0) or time.time() > end:
                    break
                time.sleep(0.5)
            idle[name] = m
        stop.set()
        mon.join()
        health = {n: request(s.port, "GET", "/health", None)[0] for n, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()

    failures = list(stats.failures)
    rss_report = {}
    for name, v in samples.items():
        after = [(t, r) for t, r in v if t >= warmup]
        first = [r for t, r in after if t < warmup + 60] or [r for _, r in after[:5]]
        last = [r for t, r in after if t >= after[-1][0] - 60] if after else []
        if not first or not last:
            failures.append(f"{name}: too few RSS samples")
            continue
        base, end = statistics.median(first), statistics.median(last)
        growth = end / base - 1
        rss_report[name] = {"warmup_s": warmup, "after_warmup_mib": round(base / 1024, 1), "end_mib": round(end / 1024, 1),
                            "peak_mib": round(max(r for _, r in v) / 1024, 1), "growth": round(growth, 4),
                            "samples": len(v)}
        if growth > args.max_growth:
            failures.append(f"{name}: RSS grew {growth:.1%} after warm-up ({base/1024:.0f} -> {end/1024:.0f} MiB)")
    for name, m in idle.items():
        if m.get("vllm:kv_cache_usage_perc", 0) != 0:
            failures.append(f"{name}: vllm:kv_cache_usage_perc is {m['vllm:kv_cache_usage_perc']} at the end")
        for k in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            if m.get(k, 0) != 0:
                failures.append(f"{name}: {k} is {m[k]} at the end")
    for name, h in health.items():
        if h != 200:
            failures.append(f"{name}: /health answered {h} at the end")

    total = sum(stats.count.values())
    report = {
        "minutes": round(elapsed / 60, 2), "clients": args.clients, "requests": total,
        "per_kind": {k: dict(stats.status[k]) for k in sorted(stats.status)},
        "metrics_at_end": idle, "rss": rss_report, "failures": failures,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print("PASS" if not failures else f"FAIL ({len(failures)} findings)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
