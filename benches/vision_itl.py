"""Inter-token latency of a streamed text chat while large images are being admitted, for two
servers of the same vision model (say, two builds), in paired, interleaved rounds.

    sluice serve tests/fixtures/tiny-qwen2-vl --dtype float32 --port 8001 &   # build A
    sluice serve tests/fixtures/tiny-qwen2-vl --dtype float32 --port 8002 &   # build B
    python3 benches/vision_itl.py --arm A=http://127.0.0.1:8001 --arm B=http://127.0.0.1:8002 --rounds 6

Each round runs every arm once (the order alternates from round to round). `--image-clients`
clients send image chats back to back, each with a fresh `--width`×`--height` noise image
(a PNG data URL; fresh, so the encoder-output cache never answers), `max_tokens` 1 and
`mm_processor_kwargs.max_pixels` `--max-pixels` (Qwen2-VL's default bound, 28²·1280: a
1280×960 image becomes 1230 image tokens, where the tiny fixture's own bound would make it 64);
`--lead` seconds after they start, streamed text chats of `--stream-tokens` tokens each
(`ignore_eos`, greedy) run one after another beside them for `--seconds`, and then the image
clients stop. The gaps between a stream's chunks, as the client reads them, are its
inter-token latencies: per round and arm, their p50, p99 and max over every stream of the
run, the text tokens per second, and how many image chats finished meanwhile. (The tiny
model steps in about a millisecond, so chunks often arrive together and the p50 is near
zero: read the p99 and the max.) The load average before each run is printed beside it.
With `--anchor` each round also runs every arm without the image clients (arm
`NAME/text`): the same streams on the same servers at the same minutes, the anchor the image
runs are read against. At the end, per arm, the medians over rounds, and B over A round by
round.
"""

import argparse
import base64
import json
import os
import random
import statistics
import struct
import threading
import time
import urllib.request
import zlib


def png(width, height, seed):
    """A PNG of random RGB noise (no two seeds alike)."""
    rnd = random.Random(seed)
    raw = b"".join(b"\x00" + rnd.randbytes(width * 3) for _ in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def post(base, body, timeout=600):
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)


def model_of(base):
    with urllib.request.urlopen(f"{base}/v1/models") as r:
        return json.load(r)["data"][0]["id"]


def stream_times(base, model, max_tokens):
    """Arrival times of the stream's content chunks."""
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a long story about a river."}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True}
    times = []
    with post(base, body) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                times.append(time.perf_counter())
    return times


def send_images(base, model, images, max_pixels, stop, done):
    k = 0
    while not stop.is_set():
        url = "data:image/png;base64," + base64.b64encode(images[k % len(images)]).decode()
        body = {"model": model, "max_tokens": 1, "temperature": 0, "mm_processor_kwargs": {"max_pixels": max_pixels},
                "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]}]}
        with post(base, body) as r:
            r.read()
        done.append(time.perf_counter())
        k += 1


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def one_run(base, model, images, max_pixels, seconds, stream_tokens, clients, lead):
    stop, done = threading.Event(), []
    senders = [threading.Thread(target=send_images, args=(base, model, images[i::clients], max_pixels, stop, done)) for i in range(clients)]
    for t in senders:
        t.start()
    gaps, tokens, streams = [], 0, 0
    try:
        time.sleep(lead)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            times = stream_times(base, model, stream_tokens)
            gaps += [(b - a) * 1e3 for a, b in zip(times, times[1:])]
            tokens += len(times)
            streams += 1
        t1 = time.perf_counter()
    finally:
        stop.set()
        for t in senders:
            t.join()
    return {"p50": percentile(gaps, 50), "p99": percentile(gaps, 99), "max": max(gaps), "tokens": tokens, "streams": streams,
            "tok_s": tokens / (t1 - t0), "images": sum(1 for t in done if t0 <= t <= t1), "wall": t1 - t0,
            "img_s": sum(1 for t in done if t0 <= t <= t1) / (t1 - t0)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", action="append", required=True, help="NAME=BASE_URL (two of them)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the text streams run in each run")
    ap.add_argument("--stream-tokens", type=int, default=32)
    ap.add_argument("--image-clients", type=int, default=2)
    ap.add_argument("--lead", type=float, default=0.5, help="seconds the image clients run before the stream starts")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=960)
    ap.add_argument("--max-pixels", type=int, default=28 * 28 * 1280)
    ap.add_argument("--anchor", action="store_true", help="each round also runs every arm without images")
    ap.add_argument("--out", help="append each run as a JSON line to this file")
    a = ap.parse_args()
    arms = [tuple(s.split("=", 1)) for s in a.arm]
    models = {name: model_of(base) for name, base in arms}
    for name, base in arms:  # warm-up: a short stream with one image beside it
        one_run(base, models[name], [png(a.width, a.height, -1 - i) for i in range(a.image_clients)], a.max_pixels, 0.1, 8, a.image_clients, 0.1)
    seed = 0
    # With --anchor each round also runs every arm without the image clients: the same
    # streams on the same servers, the same minutes of the machine's load.
    kinds = [("", a.image_clients)] + ([("/text", 0)] if a.anchor else [])
    runs = {name + suffix: [] for name, _ in arms for suffix, _ in kinds}
    for r in range(a.rounds):
        order = [(name, base, suffix, clients) for suffix, clients in kinds for name, base in arms]
        if r % 2:
            order.reverse()
        for name, base, suffix, clients in order:
            # Images never seen by either server: a cache hit would hide the encoder.
            images = [png(a.width, a.height, seed + i) for i in range(24)] if clients else []
            seed += 24
            load = os.getloadavg()[0]
            run = one_run(base, models[name], images, a.max_pixels, a.seconds, a.stream_tokens, clients, a.lead)
            run.update(round=r + 1, arm=name + suffix, load=load)
            runs[name + suffix].append(run)
            print(f"round {r + 1} {name + suffix:>11}: ITL p50 {run['p50']:7.1f} ms  p99 {run['p99']:7.1f} ms  max {run['max']:7.1f} ms  "
                  f"{run['tok_s']:6.1f} tok/s ({run['streams']} streams, {run['wall']:.1f} s)  {run['images']} image chats done  load {load:.1f}", flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(run) + "\n")
    for name, rs in runs.items():
        print(f"median {name:>11}: ITL p50 {statistics.median(x['p50'] for x in rs):.1f} ms  "
              f"p99 {statistics.median(x['p99'] for x in rs):.1f} ms  max {statistics.median(x['max'] for x in rs):.1f} ms  "
              f"{statistics.median(x['tok_s'] for x in rs):.0f} tok/s  image chats {statistics.median(x['img_s'] for x in rs):.2f}/s")
    if len(arms) == 2:
        (base_name, _), (other, _) = arms
        for key in ("p50", "p99", "max", "tok_s"):
            ratios = [b[key] / a_[key] for a_, b in zip(runs[base_name], runs[other]) if a_[key]]
            print(f"{other}/{base_name} {key}: median ratio {statistics.median(ratios):.3f} "
                  f"(rounds where {other} is lower: {sum(x < 1 for x in ratios)}/{len(ratios)})")


if __name__ == "__main__":
    main()
