"""Mixed text + image chat load against a running server, beside a text-only load.

    python3 benches/vision_load.py --base-url http://127.0.0.1:8000 --concurrency 8

Rounds alternate: a mixed round (every other request carries one of the fixture images as
a data: URL) and a text-only round (the same requests without their images), each
`--requests` chats of `--max-tokens` output tokens (`ignore_eos`) with `--concurrency` in
flight. Prints, per round and as medians, output tokens per second and the p50 latency,
so the text-only figure is the anchor the mixed one is read against (same server, same run).
"""

import argparse
import base64
import json
import os
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "images")
FILES = [("gradient_64x48.png", "image/png"), ("photo_60x90.jpg", "image/jpeg"), ("wide_150x100.png", "image/png"),
         ("lossy_50x70.webp", "image/webp")]


def data_url(name, media):
    with open(os.path.join(IMAGES, name), "rb") as f:
        return f"data:{media};base64,{base64.b64encode(f.read()).decode()}"


def chat(base, model, i, with_image, max_tokens):
    text = {"type": "text", "text": f"Request {i}: describe what you see in a few words."}
    content = [text]
    if with_image:
        name, media = FILES[i % len(FILES)]
        content = [{"type": "image_url", "image_url": {"url": data_url(name, media)}}, text]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0}
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return time.perf_counter() - t0, out["usage"]["completion_tokens"]


def run(base, model, n, concurrency, mixed, max_tokens):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: chat(base, model, i, mixed and i % 2 == 0, max_tokens), range(n)))
    wall = time.perf_counter() - t0
    tokens = sum(r[1] for r in results)
    return tokens / wall, statistics.median(r[0] for r in results) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default=None)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    model = a.model
    if model is None:
        with urllib.request.urlopen(f"{a.base_url}/v1/models") as r:
            model = json.load(r)["data"][0]["id"]
    run(a.base_url, model, a.concurrency, a.concurrency, True, 4)  # warm-up
    figures = {True: [], False: []}
    for k in range(a.rounds):
        for mixed in (True, False):
            tps, p50 = run(a.base_url, model, a.requests, a.concurrency, mixed, a.max_tokens)
            figures[mixed].append((tps, p50))
            print(f"round {k + 1} {'mixed' if mixed else 'text '}: {tps:.1f} out tok/s, latency p50 {p50:.0f} ms")
    for mixed in (True, False):
        tps = statistics.median(f[0] for f in figures[mixed])
        p50 = statistics.median(f[1] for f in figures[mixed])
        print(f"median {'mixed text+image' if mixed else 'text only (anchor)'}: {tps:.1f} out tok/s, latency p50 {p50:.0f} ms")


if __name__ == "__main__":
    main()
