#!/usr/bin/env bash
# Offline batch against online serving, same requests, same run: `sluice bench
# --write-batch` writes the requests it would send; `sluice run-batch` runs that file, then
# `sluice serve` gets the same requests from `sluice bench` at high concurrency.
#   benches/batch.sh [N] [CONCURRENCY]      (defaults: 256 requests, concurrency 64)
# PROMPT (words, ~tokens) and OUT (output tokens, ignore_eos) set the request shape;
# ENDPOINT chat (default) or completions the API.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
N="${1:-256}"; C="${2:-64}"; PROMPT="${PROMPT:-200}"; OUT="${OUT:-64}"; THREADS="${THREADS:-2}"; ENDPOINT="${ENDPOINT:-chat}"
MODEL="HuggingFaceTB/SmolLM2-135M-Instruct"
DIR="$(mktemp -d)"; trap 'rm -rf "$DIR"' EXIT

# Busy and total CPU time of the machine so far, in clock ticks.
ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

"$BIN" bench --model "$MODEL" --endpoint "$ENDPOINT" --requests "$N" --prompt-tokens "$PROMPT" --max-tokens "$OUT" \
  --write-batch "$DIR/in.jsonl"
echo "== run-batch: $N $ENDPOINT requests, ~$PROMPT-token prompts, $OUT output tokens, $THREADS threads"
read -r busy0 _ < <(ticks)
TIMEFORMAT="%R %U %S"
{ time "$BIN" run-batch -i "$DIR/in.jsonl" -o "$DIR/out.jsonl" --threads "$THREADS" 2>"$DIR/log" ; } 2>"$DIR/time"
read -r busy1 _ < <(ticks)
grep -E "done:" "$DIR/log" | sed 's/.*done: //'
read -r wall user sys <"$DIR/time"
hz=$(getconf CLK_TCK)
awk -v b="$((busy1 - busy0))" -v hz="$hz" -v w="$wall" -v u="$user" -v s="$sys" \
  'BEGIN { printf "  CPU (cores of %d): run-batch %.2f (model load included), everything else %.2f\n", 2, (u+s)/w, (b/hz-u-s)/w }'

echo "== serve + bench: concurrency $C"
"$BIN" serve --port 8095 --threads "$THREADS" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 1 120); do curl -sf http://127.0.0.1:8095/health >/dev/null && break; sleep 1; done
"$BIN" bench --base-url http://127.0.0.1:8095 --endpoint "$ENDPOINT" --server-pid "$pid" --concurrency "$C" --requests "$N" \
  --prompt-tokens "$PROMPT" --max-tokens "$OUT"
kill "$pid"; wait "$pid" 2>/dev/null || true
