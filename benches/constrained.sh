#!/usr/bin/env bash
# What a structured-output constraint costs a batch: one server, short rounds of 16
# concurrent streaming chat requests, plain and JSON-schema-constrained in turn (the order
# alternating, fresh prompts for every run so the prefix cache never answers a prefill).
# The constraint is benches/list_schema.json: a list of at least 64 short strings, without
# optional whitespace, so every request runs the full OUT tokens either way (greedy,
# ignore_eos). Prints one line per run and, at the end, the constrained/plain ratios: mean
# over rounds with a 95% confidence interval, and median (benches/paired.py).
#   benches/constrained.sh [ROUNDS] [REQUESTS] [CONCURRENCY]   (defaults: 20, 16, 16)
# PROMPT (~tokens) and OUT (output tokens) set the request shape; ENDPOINT=completions sends
# prompts instead of chat messages.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
ROUNDS="${1:-20}"; N="${2:-16}"; C="${3:-16}"
PROMPT="${PROMPT:-200}"; OUT="${OUT:-128}"; THREADS="${THREADS:-2}"; PORT="${PORT:-8932}"
"$BIN" serve --port "$PORT" --threads "$THREADS" >/dev/null 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done

bench() { # ARM SEED
  local arm=$1 seed=$2 extra=()
  [ "$arm" = schema ] && extra=(--extra-body @benches/list_schema.json)
  "$BIN" bench --base-url "http://127.0.0.1:$PORT" --server-pid "$pid" --endpoint "${ENDPOINT:-chat}" --concurrency "$C" \
    --requests "$N" --prompt-tokens "$PROMPT" --max-tokens "$OUT" --warmup 0 --seed "$seed" "${extra[@]}" --json
}

# One unrecorded run of each first: the first constrained request builds the token trie.
bench plain 1000000 >/dev/null
bench schema 1000001 >/dev/null
results=$(mktemp)
echo "${ENDPOINT:-chat}: $N requests per run, concurrency $C, ~$PROMPT-token prompts, $OUT output tokens, $THREADS threads"
for r in $(seq 1 "$ROUNDS"); do
  order=(plain schema)
  [ $((r % 2)) -eq 0 ] && order=(schema plain)
  for arm in "${order[@]}"; do
    # Each run its own seed: the two arms of a round must not share prompts either.
    seed=$((2 * r)); [ "$arm" = schema ] && seed=$((2 * r + 1))
    bench "$arm" "$seed" | python3 benches/paired.py record "$results" "$r" "$arm"
  done
done
python3 benches/paired.py summary "$results" plain schema
rm -f "$results"
