#!/usr/bin/env bash
# Lays out what sluice's container image carries, under OUT, as a tree to copy onto `/`:
#   usage: scripts/image-files.sh BINARY cpu|cuda OUT
#
# - the binary, as OUT/usr/local/bin/sluice;
# - libtorch from the venv the binary links (ldd), at the venv's own path: the binary's rpath and the
#   default models' place are absolute paths into it (build.rs), so nothing needs
#   LD_LIBRARY_PATH or SLUICE_SITE_PACKAGES at run time.
#     cpu:  only the libraries the binary loads (ldd, inside the venv): libtorch_cpu, libc10,
#           libgomp, and the CUDA runtime and CUPTI that PyPI's libtorch_cpu links even when
#           no GPU is used (5 MB); 0.44 GB in all.
#     cuda: all of torch/lib and the nvidia packages beside it: libtorch_cuda.so is loaded at
#           run time when a GPU is present (src/device.rs), and cuBLAS, cuDNN and NCCL load
#           further libraries of their own. 3.7 GB.
# - the default model packages that scripts/setup.sh installs (the list comes from it), with
#   faster-whisper-base's model.bin joined as the setup joins it, and without its two halves:
#   0.4 GB.
# Libraries outside the venv (libc, libstdc++, libgcc_s) come from the runtime image's Debian.
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: $0 BINARY cpu|cuda OUT" >&2; exit 2; }
BIN="$1" VARIANT="$2" OUT="$(mkdir -p "$3" && cd "$3" && pwd)"
case "$VARIANT" in cpu | cuda) ;; *) echo "$0: the variant is cpu or cuda, not '$VARIANT'" >&2; exit 2 ;; esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The venv whose libtorch the binary loads (.venv's, unless the pins changed after the last
# build of torch-sys): its libraries and models are what the image must carry.
LIBTORCH_CPU="$(ldd "$BIN" | awk '$1 ~ /^libtorch_cpu\.so/ && $3 ~ /^\// {print $3}' | xargs -r readlink -f)"
[ -n "$LIBTORCH_CPU" ] || { echo "$0: $BIN does not link libtorch_cpu.so" >&2; exit 1; }
TORCH="$(dirname "$(dirname "$LIBTORCH_CPU")")"   # site-packages/torch
SITE="$(dirname "$TORCH")"
VENV="$(cd "$SITE/../../.." && pwd)"
log() { echo "[image-files] $*" >&2; }

# Copies a file or folder to the same absolute path under OUT.
put() { mkdir -p "$OUT$(dirname "$1")" && cp -a "$1" "$OUT$1"; }

mkdir -p "$OUT/usr/local/bin"
cp "$BIN" "$OUT/usr/local/bin/sluice"

# ldd lists every library the dynamic loader would map, transitively; keep those from the venv.
mapfile -t needed < <(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | xargs -r readlink -f | sort -u)
missing=$(ldd "$BIN" | awk '/not found/ {print $1}')
[ -z "$missing" ] || { log "the binary's libraries are not all found: $missing"; exit 1; }
case "$VARIANT" in
  cpu)
    for lib in "${needed[@]}"; do
      case "$lib" in "$SITE"/*) put "$lib" ;; esac
    done
    ;;
  cuda)
    put "$TORCH/lib"
    [ -d "$SITE/nvidia" ] || { log "$SITE has no nvidia packages: the venv's torch is not a CUDA build"; exit 1; }
    put "$SITE/nvidia"
    ;;
esac
for lib in "${needed[@]}"; do
  case "$lib" in "$SITE"/*) ;; *) log "from the runtime image's system: $lib" ;; esac
done

# The default models: every file their distributions installed, less the halves of a model
# that the setup joined (`*.part1`, `*.part2`) and Python's caches.
mapfile -t dists < <(bash "$ROOT/scripts/setup.sh" --model-packages)
"$VENV/bin/python" -W ignore - "$SITE" "${dists[@]}" <<'PY' | while IFS= read -r f; do put "$f"; done
import importlib.metadata as md, os, sys
site, dists = sys.argv[1], sys.argv[2:]
for name in dists:
    for f in md.distribution(name).files or []:
        path = os.path.realpath(os.path.join(site, f))
        if not path.startswith(site + os.sep) or "__pycache__" in path or "dist-info" in path:
            continue
        if path.endswith((".part1", ".part2")):
            continue
        print(path)
    # The setup's own product: the joined model.bin is beside the first half, and no
    # distribution lists it.
for name in dists:
    folder = os.path.join(site, name.replace("-", "_"), "data")
    joined = os.path.join(folder, "model.bin")
    if os.path.isfile(joined) and os.path.isfile(joined + ".part1"):
        print(joined)
PY
log "$VARIANT: $(du -sh "$OUT" | cut -f1) under $OUT"
