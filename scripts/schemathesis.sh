#!/usr/bin/env bash
# Schemathesis against a running sluice's /openapi.json: generated requests, valid and
# not, for every operation the document lists; every answer must be no 5xx, carry a status
# the document lists for the operation, the content type it declares, and a body that
# matches its schema.
#
#   scripts/schemathesis.sh [SECONDS] [MODEL]     (default 300 s, the default model)
#
# Starts `sluice serve MODEL` on a free loopback port (with --max-model-len 256, which
# bounds how long one generated request can run) and stops it at the end. Schemathesis
# lives in its own venv (SCHEMATHESIS_VENV, default ~/.cache/sluice/schemathesis-venv),
# made here on first use; the project's venv is not touched. Reports: REPORT_DIR
# (default a temporary folder): JUnit XML and an NDJSON log of every case.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-300}"
MODEL="${2:-}"
VENV="${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/schemathesis-venv}"
BIN="${SLUICE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice}"
REPORT_DIR="${REPORT_DIR:-$(mktemp -d)}"
mkdir -p "$REPORT_DIR"

if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==4.32.5"
fi
[ -x "$BIN" ] || { echo "no sluice binary at $BIN (cargo build --release)" >&2; exit 2; }

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
LOG="$REPORT_DIR/server.log"
"$BIN" serve $MODEL --host 127.0.0.1 --port "$PORT" --max-model-len 256 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "the server exited; see $LOG" >&2; exit 2; }
  sleep 0.5
done

set +e
# Schemathesis keeps a cache folder where it runs: there, not in the checkout.
cd "$REPORT_DIR"
# Most generated bodies name the served model (see schemathesis_hooks.py).
SERVED="$(curl -sf "http://127.0.0.1:$PORT/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')"
export SCHEMATHESIS_MODEL="$SERVED" SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
"$VENV/bin/schemathesis" run "http://127.0.0.1:$PORT/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-time "$SECS" --workers 2 --request-timeout 300 --seed "${SEED:-1}" \
  --generation-database none --no-color \
  --report junit,ndjson --report-dir "$REPORT_DIR"
rc=$?
set -e
echo "reports: $REPORT_DIR (server log: $LOG)"
if ! kill -0 $SERVER 2>/dev/null; then
  echo "the server died during the run" >&2
  exit 1
fi
exit $rc
