#!/usr/bin/env bash
# What a large GGUF file costs sluice and llama.cpp's llama-server on this machine, one
# server at a time: resident memory once it answers (the load), single-stream decode speed
# (concurrency 1, a short prompt, MAX_TOKENS output tokens), and peak resident memory.
#   LLAMA_SERVER=/path/to/llama-server benches/big_gguf.sh FILE.gguf [sluice flags...]
# benches/make_q4k_8b.py writes a file of Llama-3-8B's shape (random Q4_K_M blocks).
# Both servers get a 2048-token context and THREADS threads (default 2); leave
# LLAMA_SERVER unset to run sluice alone.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
GGUF="$1"; shift
THREADS="${THREADS:-2}"
MAX_TOKENS="${MAX_TOKENS:-32}"
echo "$(basename "$GGUF"): $(du -m "$GGUF" | cut -f1) MiB on disk"

wait_up() { for _ in $(seq 1 900); do curl -sf "$1" >/dev/null && return 0; sleep 1; done; echo "no answer from $1" >&2; return 1; }
mib() { awk -v k="$1" '$1 == k":" { printf "%.0f MiB", $2 / 1024 }' "/proc/$2/status"; }

measure() { # base_url pid label
  echo "== $3"
  echo "RSS once serving: $(mib VmRSS "$2") (peak so far $(mib VmHWM "$2"))"
  "$BIN" bench --base-url "$1" --server-pid "$2" --concurrency 1 --requests 2 --prompt-tokens 32 --max-tokens "$MAX_TOKENS"
  echo "peak RSS: $(mib VmHWM "$2")"
}

if [ -n "${LLAMA_SERVER:-}" ]; then
  "$LLAMA_SERVER" -m "$GGUF" --port 8093 -t "$THREADS" -np 1 -c 2048 >/dev/null 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  wait_up http://127.0.0.1:8093/health
  measure http://127.0.0.1:8093 "$pid" "llama-server ($THREADS threads, 1 slot of 2048 tokens)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

"$BIN" serve "$GGUF" --port 8094 --threads "$THREADS" --max-model-len 2048 --kv-cache-memory 300MiB "$@" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_up http://127.0.0.1:8094/health
measure http://127.0.0.1:8094 "$pid" "sluice --max-model-len 2048 --kv-cache-memory 300MiB $*"
