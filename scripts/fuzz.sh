#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ for a bounded time each and prints, per target,
# the executions, the time and the corpus size; a crash stops that target, leaves its
# input under fuzz/artifacts/<target>/ and makes the script exit 1.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default 120 s, every target)
#
# cargo-fuzz (`cargo install cargo-fuzz`) drives the build. It needs nightly-only rustc
# flags (sanitizer coverage); on the stable toolchain RUSTC_BOOTSTRAP=1 allows them.
# Built without a sanitizer (`-s none`): the code under test is safe Rust, and libtorch's
# C++ is not instrumented anyway; overflow checks and debug assertions are on.
# The committed seeds (fuzz/corpus/<target>/) are read, never written: what the fuzzer
# finds goes to a scratch corpus (FUZZ_WORK, default a temporary folder).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-120}"
shift || true
cd "$ROOT/fuzz"
export RUSTC_BOOTSTRAP=1
# The fuzz build instruments every crate: keep it apart from the normal build's target.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/fuzz/target}"
# The main crate's build script gives its own binaries an rpath to libtorch; these are
# another crate's, so they find it through the loader's path.
export LD_LIBRARY_PATH="$(readlink -f "$ROOT/.venv/libtorch")/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cargo fuzz list)
fi
WORK="${FUZZ_WORK:-$(mktemp -d)}"
cargo fuzz build -s none
status=0
printf '%-22s %12s %8s %10s %8s  %s\n' target execs seconds execs/s corpus result
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t" "artifacts/$t"
  log="$WORK/$t.log"
  start=$(date +%s)
  # -rss_limit_mb: an input that makes a reader allocate without bound is a finding.
  if cargo fuzz run -s none "$t" "$WORK/$t" "corpus/$t" -- \
      -max_total_time="$SECS" -rss_limit_mb=3072 -max_len=65536 -timeout=20 -print_final_stats=1 \
      >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see $log, fuzz/artifacts/$t/)"
    status=1
  fi
  secs=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(find "$WORK/$t" -type f | wc -l)
  rate=$(( ${execs:-0} / (secs > 0 ? secs : 1) ))
  printf '%-22s %12s %8s %10s %8s  %s\n' "$t" "${execs:-?}" "$secs" "$rate" "$corpus" "$result"
done
exit $status
