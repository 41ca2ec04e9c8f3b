#!/usr/bin/env bash
# What `--enable-per-request-metrics` costs in throughput. Two servers run side by side, one
# with the flag off and one with it on; only one is driven at a time. Each round sends the
# same streaming workload (`sluice bench`, new prompts each round so neither server's prefix
# cache has seen them) to both, back to back, the order alternating. This machine's speed
# flips between a fast and a slow state every few seconds to tens of seconds; short rounds
# measured seconds apart mostly put both halves of a pair in the same state, so it largely
# cancels out of the on/off ratio, where whole runs a minute apart could not resolve a few
# percent.
# Prints one line per run (output tokens/s, TTFT and ITL p50, the CPU the driven server and
# everything else used, in cores) and, at the end, the on/off ratios: mean over rounds with
# a 95% confidence interval, and median (benches/paired.py).
#   benches/request_metrics.sh [ROUNDS] [REQUESTS] [CONCURRENCY]   (defaults: 60, 16, 16)
# PROMPT (~tokens) and OUT (output tokens, ignore_eos) set the request shape. Two checks on
# the method: ON_FIRST=1 starts the flag-on server first (which server started first can
# matter by about a percent), and AA=1 runs both servers without the flag (an A/A run: the
# ratio it prints is the method's own bias).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
ROUNDS="${1:-60}"; N="${2:-16}"; C="${3:-16}"
PROMPT="${PROMPT:-100}"; OUT="${OUT:-32}"; THREADS="${THREADS:-2}"; PORT="${PORT:-8096}"
declare -A pid port
trap 'for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

start() {
  local mode=$1 flags=()
  [ "$mode" = on ] && [ "${AA:-0}" != 1 ] && flags=(--enable-per-request-metrics)
  port[$mode]=$2
  "$BIN" serve --port "$2" --threads "$THREADS" "${flags[@]}" >/dev/null 2>&1 &
  pid[$mode]=$!
  for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$2/health" >/dev/null && return; sleep 1; done
  echo "the $mode server did not start" >&2; exit 1
}

if [ "${ON_FIRST:-0}" = 1 ]; then
  start on "$PORT"; start off "$((PORT + 1))"
else
  start off "$PORT"; start on "$((PORT + 1))"
fi
# One unrecorded run each first: the servers' first requests pay one-time costs.
for mode in off on; do
  "$BIN" bench --base-url "http://127.0.0.1:${port[$mode]}" --concurrency "$C" --requests "$N" \
    --prompt-tokens "$PROMPT" --max-tokens "$OUT" --warmup 0 --seed 1000000 --json >/dev/null
done
results=$(mktemp)
echo "$N requests per run, concurrency $C, ~$PROMPT-token prompts, $OUT output tokens, $THREADS threads" \
  "$([ "${AA:-0}" = 1 ] && echo '(A/A: the flag is off on both)')"
for r in $(seq 1 "$ROUNDS"); do
  order=(off on)
  [ $((r % 2)) -eq 0 ] && order=(on off)
  for mode in "${order[@]}"; do
    "$BIN" bench --base-url "http://127.0.0.1:${port[$mode]}" --server-pid "${pid[$mode]}" --concurrency "$C" \
      --requests "$N" --prompt-tokens "$PROMPT" --max-tokens "$OUT" --warmup 0 --seed "$r" --json |
      python3 benches/paired.py record "$results" "$r" "$mode"
  done
done
python3 benches/paired.py summary "$results" off on
rm -f "$results"
