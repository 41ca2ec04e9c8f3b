#!/usr/bin/env bash
# Two builds of sluice against each other: both serve the same model side by side, only one
# is driven at a time, and each round sends the same streaming workload (`sluice bench`, new
# prompts each round so no prefix cache has seen them) to both, back to back, the order
# alternating (see benches/request_metrics.sh for why short paired rounds).
# Prints one line per run and, at the end, OTHER over BASE round by round (benches/paired.py).
#   benches/builds.sh BASE_BIN OTHER_BIN [ROUNDS] [REQUESTS] [CONCURRENCY]   (defaults: 10, 16, 16)
# PROMPT (~tokens), OUT (output tokens, ignore_eos), THREADS and ARGS (more `serve` flags)
# set the rest; MODEL the model (default: the default model).
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A bin=([base]="$1" [other]="$2")
ROUNDS="${3:-10}"; N="${4:-16}"; C="${5:-16}"
PROMPT="${PROMPT:-100}"; OUT="${OUT:-32}"; THREADS="${THREADS:-2}"; PORT="${PORT:-8196}"
declare -A pid port
trap 'for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

start() {
  port[$1]=$2
  # shellcheck disable=SC2086
  "${bin[$1]}" serve ${MODEL:-} --port "$2" --threads "$THREADS" ${ARGS:-} >/dev/null 2>&1 &
  pid[$1]=$!
  for _ in $(seq 1 180); do curl -sf "http://127.0.0.1:$2/health" >/dev/null && return; sleep 1; done
  echo "the $1 server did not start" >&2; exit 1
}
run() {
  "${bin[base]}" bench --base-url "http://127.0.0.1:${port[$1]}" --server-pid "${pid[$1]}" --concurrency "$C" \
    --requests "$N" --prompt-tokens "$PROMPT" --max-tokens "$OUT" --warmup 0 --seed "$2" --json
}

start base "$PORT"; start other "$((PORT + 1))"
# One unrecorded run each first: the servers' first requests pay one-time costs.
for arm in base other; do run "$arm" 1000000 >/dev/null; done
results=$(mktemp)
echo "$N requests per run, concurrency $C, ~$PROMPT-token prompts, $OUT output tokens, $THREADS threads, serve ${ARGS:-}"
for r in $(seq 1 "$ROUNDS"); do
  order=(base other)
  [ $((r % 2)) -eq 0 ] && order=(other base)
  for arm in "${order[@]}"; do
    run "$arm" "$r" | python3 benches/paired.py record "$results" "$r" "$arm"
  done
done
python3 benches/paired.py summary "$results" base other
rm -f "$results"
