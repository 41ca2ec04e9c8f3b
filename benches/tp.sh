#!/usr/bin/env bash
# Tensor parallelism on the CPU: TP=1 (one process of 2 threads, and of 1) against TP=2 (two
# processes of one thread each, over Gloo on loopback), on the random-weight ~0.44B Llama
# that benches/make_tp_model.py writes, in bfloat16. Paired, interleaved rounds: each round
# runs the three at concurrency 1, then at concurrency 16, each on a fresh server.
# Prints one line per run: tp, concurrency, output tok/s, ITL p50 (a decode step), TTFT
# p50, the 1-minute load average before the run, and for TP=2 rank 0's mean forward pass
# and the share of it spent in collectives (the server's log line at its stop).
#
#   .venv/bin/python benches/make_tp_model.py /tmp/sluice-tp-llama
#   ROUNDS=3 benches/tp.sh /tmp/sluice-tp-llama
set -euo pipefail

MODEL="${1:-/tmp/sluice-tp-llama}"
ROUNDS="${ROUNDS:-3}"
CORES="${CORES:-2}"
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}"
MAX_TOKENS="${MAX_TOKENS:-16}"
PROMPT_TOKENS="${PROMPT_TOKENS:-32}"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() {
  local tp=$1 threads=$2 conc=$3 round=$4 port pid
  port="$(free_port)"
  "$BIN" serve "$MODEL" --dtype bfloat16 --tensor-parallel-size "$tp" --threads "$threads" \
    --served-model-name m --port "$port" --kv-cache-memory 1GiB >"$LOG" 2>&1 &
  pid=$!
  for _ in $(seq 3000); do grep -q "on http://" "$LOG" && break; sleep 0.1; done
  local load
  load="$(cut -d' ' -f1 /proc/loadavg)"
  local out
  out="$("$BIN" bench --base-url "http://127.0.0.1:$port" --model m --concurrency "$conc" \
    --requests $((conc < 2 ? 2 : conc)) --max-tokens "$MAX_TOKENS" --prompt-tokens "$PROMPT_TOKENS" \
    --seed "$round$conc" --warmup 0 --json 2>/dev/null)"
  kill -TERM "$pid"
  wait "$pid" || true
  # A run with errors keeps its server's log.
  if python3 -c 'import json,sys; sys.exit(json.loads(sys.argv[1])["errors"] == 0)' "$out"; then
    cp "$LOG" "tp-bench-failed-$tp-$conc-$round.log"
  fi
  local split
  split="$(grep -o '[0-9.]* ms per forward pass on rank 0, [0-9.]*% of it in collectives' "$LOG" || echo '-')"
  python3 - "$tp" "$threads" "$conc" "$round" "$load" "$split" "$out" <<'PY'
import json, sys
tp, threads, conc, rnd, load, split, out = sys.argv[1:]
r = json.loads(out)
print(f"round {rnd} tp {tp} × {threads} thread(s) conc {conc:>2}: {r['output_tokens_per_s']:7.2f} out tok/s, ITL p50 {r['itl_ms']['p50']:7.2f} ms, "
      f"TTFT p50 {r['ttft_ms']['p50']:8.1f} ms, errors {r['errors']}, load {load}, {split}", flush=True)
PY
}

for round in $(seq "$ROUNDS"); do
  for conc in 1 16; do
    for config in "1 $CORES" "1 1" "2 $((CORES / 2))"; do
      # shellcheck disable=SC2086
      run $config "$conc" "$round"
    done
  done
done
