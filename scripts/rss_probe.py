#!/usr/bin/env python3
"""Resident memory of a generation server fed steps of many different token counts.

Starts `sluice serve` (the default model, bfloat16 on the CPU unless --serve-args says
otherwise), then sends --requests completions from --clients threads: each a distinct
prompt of 2 to 400 words and 1 to 8 generated tokens, so that the engine's steps carry
token counts of every size (one prompt's chunk, several prompts, decodes beside them).
Prints the server's resident memory (/proc/PID/status) every 50 requests and at the end.

With several --bin, the servers run one after the other, in turn, --rounds times, so
that builds compare paired on the same machine state:

    scripts/rss_probe.py --bin before/sluice --bin after/sluice --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak import Server, distinct_text, request, rss_kib  # noqa: E402


def probe(binary: str, args, seed: int) -> dict:
    server = Server(binary, None, os.path.join(args.logs, "rss-probe.log"), args.serve_args.split())
    try:
        server.wait_ready()
        _, models = request(server.port, "GET", "/v1/models", None)
        model = json.loads(models)["data"][0]["id"]
        start = rss_kib(server.proc.pid)
        rng = random.Random(seed)
        bodies = [json.dumps({"model": model, "prompt": distinct_text(rng) + " " + distinct_text(rng) * rng.randint(1, 3),
                              "max_tokens": rng.randint(1, 8), "temperature": 0}).encode()
                  for _ in range(args.requests)]
        lock = threading.Lock()
        done = [0]
        marks: list[tuple[int, int]] = []
        failures: list[str] = []

        def client() -> None:
            while True:
                with lock:
                    if not bodies:
                        return
                    body = bodies.pop()
                status, data = request(server.port, "POST", "/v1/completions", body)
                with lock:
                    if status != 200:
                        failures.append(f"{status}: {data[:200]!r}")
                    done[0] += 1
                    if done[0] % 50 == 0:
                        marks.append((done[0], rss_kib(server.proc.pid) // 1024))

        t0 = time.time()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"bin": binary, "start_mib": start // 1024, "marks": marks, "end_mib": rss_kib(server.proc.pid) // 1024,
                "seconds": round(time.time() - t0, 1), "failures": failures}
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True, help="a sluice binary (repeat to compare builds)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--serve-args", default="--kv-cache-memory 64MiB --max-model-len 2048")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logs", default="/tmp")
    args = ap.parse_args()
    failed = False
    for r in range(args.rounds):
        for b in args.bin:
            out = probe(b, args, args.seed + r)
            failed |= bool(out["failures"])
            print(json.dumps(out), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
