#!/usr/bin/env bash
# The throughput comparison of `cargo xtask bench` on a CUDA host that builds nothing: it runs
# the `fpt` and `xtask` binaries built on a CPU machine (copy target/release/fpt and
# target/release/xtask with the repository) against the host's own torch 2.11 libraries, and
# the PyTorch reference with the host's Python, then prints the same table.
#
# Usage (from anywhere; the repository is this script's parent folder):
#   PYTHON=python3 DEVICE=cuda benches/gpu_check.sh [more `xtask bench` options, e.g. --json out.json]
# Needs on the host: Python with torch==2.11.* (CUDA build) and transformers importable.
# Without a --shapes option it measures mnist, cifar10 and the long shapes t256 and t1024
# (1,024 tokens: libtorch's fused attention with dropout on CUDA, issue 16).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
for bin in fpt xtask; do
    [[ -x "$ROOT/target/release/$bin" ]] || { echo "gpu_check: $ROOT/target/release/$bin is missing (build it on a CPU machine with cargo xtask setup)" >&2; exit 2; }
done
TORCH_LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
    || { echo "gpu_check: $PYTHON cannot import torch" >&2; exit 2; }
VERSION=$("$PYTHON" -c 'import torch; print(torch.__version__)')
case "$VERSION" in
    2.11.*) ;;
    *) echo "gpu_check: the host has torch $VERSION; the fpt binary is built for libtorch 2.11" >&2; exit 2 ;;
esac
"$PYTHON" -c 'import transformers' || { echo "gpu_check: $PYTHON cannot import transformers (the reference needs it)" >&2; exit 2; }
# The binary's rpath points at the build machine's venv; here the host's torch/lib serves.
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FPT_WORKSPACE="$ROOT"
echo "gpu_check: torch $VERSION from $TORCH_LIB, device $DEVICE"
SHAPES=()
case " $* " in
    *" --shapes "* | *" --shapes="*) ;;
    *) SHAPES=(--shapes mnist,cifar10,t256,t1024) ;;
esac
exec "$ROOT/target/release/xtask" bench --no-setup --device "$DEVICE" --python "$PYTHON" "${SHAPES[@]}" "$@"
