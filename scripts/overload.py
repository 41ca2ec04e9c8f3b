#!/usr/bin/env python3
"""Overload: drive sluice at ten times its capacity and check how the edge holds.

1. Capacity: --clients closed-loop clients send the same completion (--max-tokens
   tokens, ignore_eos) for --measure seconds; capacity is completed requests per second.
2. Overload: requests arrive open-loop (Poisson) at --factor (10) times that rate for
   --seconds. Each is answered, refused, or times out (--timeout).
3. Checks:
   - refusals are 503s in OpenAI's error shape with a Retry-After header, and nothing
     else fails (no other 5xx, no connection error);
   - the latency of admitted requests stays bounded: their p99 over the last third of
     the run is no more than --max-latency-growth (1.5) times the p99 of the middle
     third (a queue that grows without end shows as latency that keeps climbing);
   - resident memory stays bounded: the peak over the last third no more than
     --max-rss-growth (10%) above the peak of the middle third;
   - afterwards the server goes idle: no request running or waiting, no KV block used.

Starts `sluice serve` (default model) itself; --serve-args passes flags, --queue-depth
serves the shipped pipeline with shallower queues (how much backlog the server takes
before refusing: the admitted requests' wait is bounded by it). Exits 1 when a check
fails.

    scripts/overload.py [--seconds 90] [--factor 10] [--bin target/release/sluice]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from soak import free_port, rss_kib  # the same helpers, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def post(port: int, path: str, body: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, buf = b"", rest
        while buf:
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, buf = out + buf[:size], buf[size + 2:]
        rest = out
    return status, headers, rest


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def engine_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(vllm:(?:kv_cache_usage_perc|num_requests_running|num_requests_waiting))(\{[^}]*\})?\s+(\S+)", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def pct(v: list[float], q: float) -> float:
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


async def run(args, port: int, pid: int) -> dict:
    body = json.dumps({"model": args.model, "prompt": "Tell me a story about a lighthouse keeper.",
                       "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0}).encode()

    # 1. Capacity, closed loop.
    done = 0
    lat_closed: list[float] = []
    end = time.time() + args.measure

    async def closed_client():
        nonlocal done
        while time.time() < end:
            t = time.time()
            status, headers, data = await post(port, "/v1/completions", body, args.timeout)
            if status == 503:
                # A burst deeper than the first queue: back off as told, not counted.
                await asyncio.sleep(float(headers.get("retry-after", "1")))
                continue
            if status != 200:
                raise SystemExit(f"capacity run: {status} {data[:200]!r}")
            lat_closed.append(time.time() - t)
            done += 1

    t0 = time.time()
    await asyncio.gather(*(closed_client() for _ in range(args.clients)))
    capacity = done / (time.time() - t0)
    rate = capacity * args.factor
    print(f"capacity: {capacity:.2f} req/s at {args.clients} clients (p50 latency {pct(lat_closed, .5):.2f} s); "
          f"overload at {rate:.1f} req/s for {args.seconds} s", flush=True)

    # 2. Overload, open loop.
    results: list[tuple[float, int, float, dict, bytes]] = []  # (sent at, status, latency, headers, body)
    errors: list[str] = []
    rss: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            r = rss_kib(pid)
            if r is not None:
                rss.append((time.time() - t1, r))
            stop.wait(0.5)

    async def one(sent: float):
        try:
            status, headers, data = await post(port, "/v1/completions", body, args.timeout)
            results.append((sent - t1, status, time.time() - sent, headers, data))
        except asyncio.TimeoutError:
            results.append((sent - t1, -1, time.time() - sent, {}, b"timeout"))
        except OSError as e:
            errors.append(f"{type(e).__name__}: {e}")

    rng = random.Random(args.seed)
    t1 = time.time()
    mon = threading.Thread(target=sample, daemon=True)
    mon.start()
    tasks = []
    next_at = t1
    while next_at < t1 + args.seconds:
        delay = next_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(next_at)))
        next_at += rng.expovariate(rate)
    sent = len(tasks)
    await asyncio.gather(*tasks)
    stop.set()
    mon.join()

    # 3. Idle again.
    idle = {}
    deadline = time.time() + 60
    while True:
        _, text = await get(port, "/metrics")
        idle = engine_metrics(text.decode())
        if all(v == 0 for v in idle.values()) or time.time() > deadline:
            break
        await asyncio.sleep(0.5)

    failures: list[str] = []
    by_status: dict[str, int] = {}
    for _, s, _, _, _ in results:
        by_status[str(s)] = by_status.get(str(s), 0) + 1
    refused = [r for r in results if r[1] == 503]
    for _, _, _, h, data in refused:
        if "retry-after" not in h:
            failures.append("a 503 without Retry-After")
            break
        try:
            err = json.loads(data)["error"]
            assert err["code"] == "overloaded" or err["type"] == "service_unavailable_error"
        except (ValueError, KeyError, AssertionError):
            failures.append(f"a 503 not in OpenAI's error shape: {data[:200]!r}")
            break
    others = {s: n for s, n in by_status.items() if s not in ("200", "503")}
    if others:
        failures.append(f"answers other than 200 and 503: {others}")
    if errors:
        failures.append(f"{len(errors)} connection errors, e.g. {errors[0]}")
    if not refused:
        failures.append("no request was refused: the edge never pushed back")

    third = args.seconds / 3
    admitted = [(t, lat) for t, s, lat, _, _ in results if s == 200]
    mid = [lat for t, lat in admitted if third <= t < 2 * third]
    last = [lat for t, lat in admitted if t >= 2 * third]
    p99_mid, p99_last = pct(mid, .99), pct(last, .99)
    if mid and last and p99_last > args.max_latency_growth * p99_mid:
        failures.append(f"admitted latency kept growing: p99 {p99_mid:.1f} s (middle third) -> {p99_last:.1f} s (last)")
    rss_mid = max((r for t, r in rss if third <= t < 2 * third), default=0)
    rss_last = max((r for t, r in rss if t >= 2 * third), default=0)
    if rss_mid and rss_last > rss_mid * (1 + args.max_rss_growth):
        failures.append(f"RSS kept growing: {rss_mid/1024:.0f} MiB (middle third) -> {rss_last/1024:.0f} MiB (last)")
    for k, v in idle.items():
        if v != 0:
            failures.append(f"{k} is {v} after the run")
    lat_all = [lat for _, lat in admitted]
    retry_after = sorted({h.get("retry-after") for _, _, _, h, _ in refused})
    return {
        "capacity_req_s": round(capacity, 2), "closed_loop_clients": args.clients, "max_tokens": args.max_tokens,
        "offered_req_s": round(rate, 1), "seconds": args.seconds, "sent": sent, "by_status": by_status,
        "refused_share": round(len(refused) / max(1, sent), 3), "retry_after_values": retry_after,
        "admitted_latency_s": {"p50": round(pct(lat_all, .5), 2), "p99": round(pct(lat_all, .99), 2),
                               "max": round(max(lat_all, default=0), 2),
                               "p99_middle_third": round(p99_mid, 2), "p99_last_third": round(p99_last, 2)},
        "refusal_latency_ms_p99": round(1000 * pct([r[2] for r in refused], .99), 1),
        "admitted_per_s": round(len(admitted) / args.seconds, 2),
        "rss_mib": {"start": round(rss[0][1] / 1024, 1) if rss else None, "peak_middle_third": round(rss_mid / 1024, 1),
                    "peak_last_third": round(rss_last / 1024, 1)},
        "metrics_after": idle, "failures": failures,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90, help="length of the overload phase")
    ap.add_argument("--measure", type=float, default=30, help="length of the capacity measurement")
    ap.add_argument("--factor", type=float, default=10, help="offered load as a multiple of capacity")
    ap.add_argument("--clients", type=int, default=16, help="closed-loop clients for the capacity measurement")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=600, help="seconds a client waits for an answer")
    ap.add_argument("--max-latency-growth", type=float, default=1.5)
    ap.add_argument("--max-rss-growth", type=float, default=0.10)
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                  "release", "sluice"))
    ap.add_argument("--serve-args", default="", help="extra flags for `sluice serve`")
    ap.add_argument("--queue-depth", type=int, default=None,
                    help="serve with stages/serve.toml's queues all this deep (the default file holds ~5000 "
                         "requests before the edge refuses, more than a short run at 10x fills)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here as JSON")
    ap.add_argument("--log", default="/tmp/overload-server.log")
    args = ap.parse_args()

    port = free_port()
    extra = args.serve_args.split()
    if args.queue_depth:
        with open(os.path.join(ROOT, "stages", "serve.toml")) as f:
            text = re.sub(r"(?m)^queue = \d+", f"queue = {args.queue_depth}", f.read())
        pipeline = os.path.join(tempfile.mkdtemp(), "serve.toml")
        with open(pipeline, "w") as f:
            f.write(text)
        extra += ["--pipeline", pipeline]
    log = open(args.log, "w")
    proc = subprocess.Popen([args.bin, "serve", "--host", "127.0.0.1", "--port", str(port)] + extra,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"the server exited; see {args.log}")
            try:
                if asyncio.run(get(port, "/health"))[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        report = asyncio.run(run(args, port, proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print("PASS" if not report["failures"] else f"FAIL ({len(report['failures'])} findings)")
    return 0 if not report["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
