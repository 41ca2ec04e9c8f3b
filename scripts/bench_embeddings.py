#!/usr/bin/env python3
"""Embeddings per second: sluice over HTTP against sentence-transformers in-process, on
the same machine in the same run, for 1,000 short texts at batch 1 and batch 32.

    python scripts/bench_embeddings.py --sluice target/release/sluice --model MINILM_DIR

Needs a Python with sentence-transformers (the oracle venv has it). sluice is started
once per --dtype on a free port (all at once; an idle server uses no CPU), and stopped
afterwards. The contenders of each setting run in turn, --repeats rounds after a warm-up,
so that other load falls on all alike; each figure is the best of its runs, beside the
CPU other processes used meanwhile. The client keeps one HTTP connection per worker.
"""

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

WORDS = (
    "the a model server text vector search query fast small river city night music data "
    "learns quick brown fox jumps over lazy dog coffee morning rain window train station "
    "paper book reads writes opens closes green blue red old new happy quiet loud market "
    "price rises falls today tomorrow yesterday people children garden tree flower light"
).split()


def short_texts(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "." for _ in range(n)]


def load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def cpu_ticks(own_pids):
    """(CPU ticks used by the whole machine, ticks used by `own_pids`) so far. The
    difference over a window is what other processes used, short-lived ones included."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    machine = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    own = 0
    for pid in own_pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            own += int(parts[11]) + int(parts[12])
        except (OSError, IndexError, ValueError):
            pass
    return machine, own


def interleaved(contenders, repeats, own_pids):
    """Runs each contender once to warm up, then `repeats` rounds of one run each, in turn,
    so that load from other processes falls on all of them alike. Returns, per contender,
    its best rate and the cores other processes used during its runs (on average)."""
    for fn in contenders.values():
        fn()
    rates = {k: [] for k in contenders}
    busy = {k: [0.0, 0.0] for k in contenders}  # other processes' CPU seconds, wall seconds
    for _ in range(repeats):
        for name, fn in contenders.items():
            (m0, o0), t0 = cpu_ticks(own_pids), time.perf_counter()
            rates[name].append(fn())
            (m1, o1), elapsed = cpu_ticks(own_pids), time.perf_counter() - t0
            busy[name][0] += max(0, (m1 - m0) - (o1 - o0)) / os.sysconf("SC_CLK_TCK")
            busy[name][1] += elapsed
    return {k: (max(rates[k]), busy[k][0] / busy[k][1]) for k in contenders}


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def embed(self, texts):
        body = json.dumps({"input": texts, "model": "bench"})
        self.conn.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(data)
        return json.loads(data)["data"]


def run_sluice(port, texts, batch, workers):
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    clients = [Client(port) for _ in range(workers)]
    out = [None] * len(chunks)

    def work(w):
        for k in range(w, len(chunks), workers):
            out[k] = clients[w].embed(chunks[k])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    assert sum(len(o) for o in out) == len(texts)
    return len(texts) / elapsed


def start_sluice(binary, model, dtype, threads):
    args = [binary, "serve", model, "--task", "embed", "--dtype", dtype, "--port", "0", "--served-model-name", "bench"]
    if threads:
        args += ["--threads", str(threads)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if "on http://" in line:
            port = int(line.rsplit(":", 1)[1].strip())
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, port
    raise RuntimeError("sluice did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both (0: all cores)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = short_texts(args.texts)
    st = SentenceTransformer(args.model, device="cpu")
    servers = {dtype: start_sluice(args.sluice, args.model, dtype, args.threads) for dtype in args.dtypes.split(",")}
    skip = {os.getpid()} | {proc.pid for proc, _ in servers.values()}
    rows = []
    try:
        for batch, workers in ((1, 1), (32, 1), (1, 8)):
            contenders = {}
            if workers == 1:
                contenders[("sentence-transformers", "float32")] = (
                    lambda b=batch: args.texts / timed(lambda: st.encode(texts, batch_size=b))
                )
            for dtype, (_, port) in servers.items():
                contenders[("sluice (HTTP)", dtype)] = lambda p=port, b=batch, w=workers: run_sluice(p, texts, b, w)
            for (name, dtype), (rate, busy) in interleaved(contenders, args.repeats, skip).items():
                rows.append((name, dtype, batch, workers, rate, busy))
                print(rows[-1], file=sys.stderr)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()

    print(f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}, texts: {args.texts}, best of {args.repeats}")
    print("| engine | dtype | texts per request | concurrent clients | embeddings/s | other processes' CPU meanwhile (cores) |")
    print("|---|---|---|---|---|---|")
    for name, dtype, batch, workers, rate, busy in rows:
        print(f"| {name} | {dtype} | {batch} | {workers} | {rate:.0f} | {busy:.2f} |")


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
