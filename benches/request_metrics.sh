#!/usr/bin/env bash
# What `--enable-per-request-metrics` costs in throughput. Two servers run side by side, one
# with the flag off and one with it on; only one is driven at a time. Each round sends the
# same streaming workload (`sluice bench`, new prompts each round so neither server's prefix
# cache has seen them) to both, back to back, the order alternating. This machine's speed
# drifts between a fast and a slow state every few tens of seconds; short rounds measured
# seconds apart put both halves of a pair in the same state, so the drift cancels out of
# the on/off ratio where whole runs a minute apart could not resolve a few percent.
# Prints one line per run (output tokens/s, TTFT and ITL p50, the CPU the driven server and
# everything else used, in cores) and, at the end, the on/off throughput ratio: mean and
# median over rounds, with a 95% confidence interval for the mean.
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
      python3 -c '
import json, sys
o = json.load(sys.stdin)
c = o.get("cpu", {})
r, mode = sys.argv[1], sys.argv[2]
tok, ttft, itl, errs = o["output_tokens_per_s"], o["ttft_ms"]["p50"], o["itl_ms"]["p50"], o["errors"]
srv, oth = c.get("server_cores_used", 0), c.get("others_cores_used", 0)
print(f"round {r:>2} metrics {mode:3}: {tok:7.1f} out tok/s  TTFT p50 {ttft:7.1f} ms  ITL p50 {itl:6.1f} ms  "
      f"errors {errs}  CPU server {srv:.2f} others {oth:.2f}")
' "$r" "$mode" | tee -a "$results"
  done
done
python3 - "$results" <<'EOF'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"round\s+(\d+) metrics (\w+)\s*:\s+([\d.]+)", line)
    runs.setdefault(int(m[1]), {})[m[2]] = float(m[3])
ratios = [r["on"] / r["off"] for r in runs.values() if "on" in r and "off" in r]
off = statistics.mean(r["off"] for r in runs.values())
on = statistics.mean(r["on"] for r in runs.values())
mean = statistics.mean(ratios)
# Student's t, two-sided 95%, by degrees of freedom (beyond 30: the normal value).
t = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
     11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 16: 2.12, 17: 2.11, 18: 2.10, 19: 2.09,
     20: 2.09, 25: 2.06, 30: 2.04}
df = len(ratios) - 1
tv = t[max(k for k in t if k <= df)] if 0 < df <= 30 else 1.96
half = tv * statistics.stdev(ratios) / len(ratios) ** 0.5 if df else float("nan")
print(f"mean out tok/s: off {off:.1f}, on {on:.1f}")
print(f"on/off over {len(ratios)} rounds: mean {mean:.4f} (95% CI {mean - half:.4f} to {mean + half:.4f}), "
      f"median {statistics.median(ratios):.4f}, range {min(ratios):.3f} to {max(ratios):.3f}")
EOF
rm -f "$results"
