#!/usr/bin/env bash
# What `--enable-per-request-metrics` costs in throughput: the same streaming workload
# (`sluice bench`) against `sluice serve` with the flag off and on, alternating, ROUNDS
# times, one server at a time. Prints one line per run: output tokens/s, TTFT and ITL p50,
# the CPU the server and everything else used (cores of the machine), and the server's CPU
# time per output token.
#   benches/request_metrics.sh [ROUNDS] [REQUESTS] [CONCURRENCY]   (defaults: 3, 256, 16)
# PROMPT (~tokens) and OUT (output tokens, ignore_eos) set the request shape.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
ROUNDS="${1:-3}"; N="${2:-256}"; C="${3:-16}"
PROMPT="${PROMPT:-100}"; OUT="${OUT:-32}"; THREADS="${THREADS:-2}"; PORT="${PORT:-8096}"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT

run() {
  local flags=()
  [ "$1" = on ] && flags=(--enable-per-request-metrics)
  "$BIN" serve --port "$PORT" --threads "$THREADS" "${flags[@]}" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
  "$BIN" bench --base-url "http://127.0.0.1:$PORT" --server-pid "$pid" --concurrency "$C" --requests "$N" \
    --prompt-tokens "$PROMPT" --max-tokens "$OUT" --warmup "$C" --json
  kill "$pid"; wait "$pid" 2>/dev/null || true
  pid=""
}

echo "$N requests, concurrency $C, ~$PROMPT-token prompts, $OUT output tokens, $THREADS threads"
for r in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    run "$mode" | python3 -c '
import json, sys
o = json.load(sys.stdin)
c = o.get("cpu", {})
r, mode = sys.argv[1], sys.argv[2]
tok, ttft, itl = o["output_tokens_per_s"], o["ttft_ms"]["p50"], o["itl_ms"]["p50"]
srv, oth = c.get("server_cores_used", 0), c.get("others_cores_used", 0)
errs = o["errors"]
# The server CPU time per output token moves less with other load than tokens/s does.
cpu_ms = srv / tok * 1000 if tok else 0
print(f"round {r} metrics {mode:3}: {tok:7.1f} out tok/s  TTFT p50 {ttft:7.1f} ms  ITL p50 {itl:6.1f} ms  "
      f"errors {errs}  CPU server {srv:.2f} others {oth:.2f}  server CPU {cpu_ms:.2f} ms/token")
' "$r" "$mode"
  done
done
