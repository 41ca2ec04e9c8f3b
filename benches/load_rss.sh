#!/usr/bin/env bash
# Peak resident memory of `sluice serve` while it loads a model: starts the server with a
# 16 MiB KV cache, waits until it listens, and reads VmHWM (the process's peak RSS so far:
# the load, the KV cache and the start-up) and VmRSS from /proc before stopping it.
# Decoders need a short --max-model-len for the small cache (e.g. --max-model-len 1024).
# Prints one line:
#   MODEL  peak_rss_mb  rss_after_load_mb  swapped_mb  load_s
# Usage: benches/load_rss.sh MODEL [serve flags...]
# (benches/make_rss_models.py makes ~1 GB random-weight models of real shapes to load.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${SLUICE_BIN:-$root/target/release/sluice}"
model="$1"; shift
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$bin" serve "$model" --port 0 --kv-cache-memory 16MiB "$@" 2>"$log" &
pid=$!
for _ in $(seq 1 1200); do
  if grep -q "on http://" "$log"; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$log" >&2; exit 1; fi
  sleep 0.1
done
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
swap=$(awk '/VmSwap/ {print $2}' "/proc/$pid/status")
load=$(grep -o "loaded in [0-9.]*s" "$log" | head -1 | grep -o "[0-9.]*")
kill "$pid"; wait "$pid" 2>/dev/null || true
printf '%s\t%.0f\t%.0f\t%.0f\t%s\n' "$(basename "$model")" "$(echo "$hwm/1024" | bc -l)" "$(echo "$rss/1024" | bc -l)" "$(echo "$swap/1024" | bc -l)" "$load"
