#!/usr/bin/env bash
# benchmarks/gpu_check.sh -- the one prepared check of the CUDA backend on a lent GPU
# (H100/H200; no network; numpy, onnx, onnxruntime, jinja2, torch, cupy and nvcc there).
#
#   bash benchmarks/gpu_check.sh            (from anywhere; runs from the source tree)
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# 1/4 machine: GPU, driver, nvcc, torch, cupy; stops early (exit 3) without a usable GPU
# 2/4 the CUDA tests for real on the GPU: conftest adds target "cuda" when a device is
#     usable, so every parametrized per-op, gradient, training-step, torch-parity and ONNX
#     conformance test runs through the GPU (pytest processes in parallel), the tf32/bf16
#     and CUDA-graph tests too (tf32/bf16 build for sm_90a on an sm_90 GPU: the wgmma + TMA
#     kernels, checked at 4096 and tile-edge shapes by tests/test_cuda_wgmma.py; with
#     LINCOMPILE_WGMMA=0 exported the whole check runs the mma.sync kernels instead); beside
#     them compute-sanitizer (memcheck, racecheck,
#     synccheck, initcheck) runs a small training step in every precision
#     (benchmarks/sanitize_cuda.py), and every benchmark graph is built with nvcc
# 3/4 timings: benchmarks/bench_cuda.py --precisions fp32,tf32,bf16 (CUDA events, warm-up,
#     medians; cuBLAS in the same precision, torch eager / CUDA graph / autocast), ratio
#     table last
# 4/4 summary. Everything printed also goes to $OUT (log, test outputs, bench_cuda.json).
# Budget: about 4.5 minutes; the hard limits below add up to 7.2 (give the call 9).
# GPU_CHECK_DRY_RUN=1 walks through every section without a GPU (the tests then select
# nothing for target "cuda", the sanitizer script runs on target cuda-cpu without the
# sanitizer, and the benchmark runs with --dry-run --skip-nvcc): checks this script.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$OUT"
export LINCOMPILE_CACHE="${LINCOMPILE_CACHE:-${TMPDIR:-/tmp}/lincompile-gpu-cache}"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

section() { printf '\n===== %s   [%s, %ss]\n' "$1" "$(date +%T)" "$SECONDS"; }
failures=()

section "1/4 machine (results go to $OUT)"
if command -v nvidia-smi >/dev/null; then
    timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
        --format=csv || echo "nvidia-smi failed"
else
    echo "nvidia-smi: not found"
fi
NVCC="$(python -c 'from lincompile.backends.cuda_build import find_nvcc; print(find_nvcc() or "")')"
if [[ -z "$NVCC" ]]; then
    echo "FATAL: nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda*/bin): target 'cuda'" \
         "cannot build here. Set LINCOMPILE_NVCC=/path/to/nvcc and rerun."
    exit 2
fi
echo "nvcc: $NVCC ($("$NVCC" --version | tail -1))"
timeout 45 python - <<'EOF'
import lincompile, numpy, torch
from lincompile.backends import cuda_build as cb
print(f"lincompile {lincompile.__version__}, numpy {numpy.__version__}, torch {torch.__version__}"
      f" (CUDA {torch.version.cuda}, device: {torch.cuda.is_available()})")
try:
    import cupy
    print(f"cupy {cupy.__version__}")
except Exception as e:  # noqa: BLE001
    print(f"cupy: not importable ({e})")
print(f"lincompile: gpu_available={cb.gpu_available()}, arch={cb.device_arch()}, "
      f"problem={cb.device_problem()}")
EOF
DRY=()
if [[ "${GPU_CHECK_DRY_RUN:-0}" == 1 ]]; then
    DRY=(--dry-run)
    echo "DRY RUN: no GPU needed; nothing below measures anything"
elif ! python -c 'import sys, lincompile.backends.cuda as c; sys.exit(not c.gpu_available())'; then
    echo "FATAL: lincompile finds no usable CUDA device (see 'problem' above)"
    exit 3
fi

section "2/4 CUDA tests on the GPU, compute-sanitizer, benchmark builds"
PRECISIONS=fp32,tf32,bf16
# Build the GEMM/reduction libraries (fp32, and the tensor-core one) once before the
# parallel test processes need them.
timeout 90 python -c '
import numpy as np, lincompile as lc
g = lc.Graph("warm"); g.output(g.linear(g.input("x", ["N", 8]), 8, name="fc"))
t = lc.training_graph(g, loss="mse", optimizer=lc.SGD(0.1))
import lincompile.backends.cuda as c
for p in ("fp32", "bf16"):
    r = lc.validate(t, ["cuda" if c.gpu_available() else "cuda-cpu"], batch=5, precision=p)
    print(r); r.raise_if_failed()
' || failures+=("warm-up build/run")
bg=()
if ((${#DRY[@]} == 0)); then   # every benchmark graph, built while the tests run
    timeout 200 python benchmarks/bench_cuda.py --build-only --precisions "$PRECISIONS" \
        > "$OUT/bench_build.txt" 2>&1 & bg+=($!)
fi
sanitize() {   # the four tools at once, each over the small step in every precision
    local rc=0 tool pids=()
    if ((${#DRY[@]})); then
        timeout 100 python benchmarks/sanitize_cuda.py --target cuda-cpu || rc=$?
        echo "$rc" > "$OUT/sanitizer.rc"
        return
    fi
    for tool in memcheck racecheck synccheck initcheck; do
        timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 9 \
            python benchmarks/sanitize_cuda.py > "$OUT/sanitizer_$tool.txt" 2>&1 & pids+=($!)
    done
    for tool in memcheck racecheck synccheck initcheck; do
        wait "${pids[0]}" || { rc=$?; echo "$tool: exit $rc"; }
        pids=("${pids[@]:1}")
        echo "--- compute-sanitizer --tool $tool"
        tail -4 "$OUT/sanitizer_$tool.txt"
    done
    echo "$rc" > "$OUT/sanitizer.rc"
}
sanitize > "$OUT/sanitizer.txt" 2>&1 & bg+=($!)
run_group() {   # name, timeout, pytest args...
    local name="$1" limit="$2"; shift 2
    local rc=0
    timeout "$limit" python -m pytest -q -p no:cacheprovider -rfE "$@" \
        > "$OUT/tests_$name.txt" 2>&1 || rc=$?
    echo "$rc" > "$OUT/tests_$name.rc"
}
GPU_ONLY=(-k "cuda and not cuda-cpu")
pids=()
run_group backend 200 tests/test_cuda_backend.py tests/test_cuda_kernels.py & pids+=($!)
run_group precision 200 tests/test_cuda_precision.py tests/test_cuda_launch.py \
    tests/test_cuda_mma.py tests/test_cuda_wgmma.py & pids+=($!)
run_group ops 200 tests/test_ops.py tests/test_feeds_and_validate.py "${GPU_ONLY[@]}" &
pids+=($!)
run_group training 200 tests/test_training.py tests/test_torch_parity.py \
    tests/test_onnx_conformance.py "${GPU_ONLY[@]}" & pids+=($!)
# these loop over every target inside one test (no target in the test id)
run_group every_target 200 tests/test_properties.py tests/test_onnx_import.py & pids+=($!)
wait "${pids[@]}"   # (a bare `wait` would also wait for the tee above: forever)
for name in backend precision ops training every_target; do
    rc="$(cat "$OUT/tests_$name.rc")"
    echo "--- $name (exit $rc; 124 = timed out, 5 = no test selected):"
    grep -E "passed|failed|error|FAILED|ERROR|skipped|selected" "$OUT/tests_$name.txt" \
        | tail -25 || true
    if [[ "$rc" != 0 && ! ("$rc" == 5 && ${#DRY[@]} -gt 0) ]]; then
        failures+=("tests $name (exit $rc)")
    fi
done

wait "${bg[@]}" || true
echo "--- compute-sanitizer (exit $(cat "$OUT/sanitizer.rc" 2>/dev/null || echo '?'))"
grep -E "ERROR SUMMARY|sanitize_cuda|exit|Error" "$OUT/sanitizer.txt" | tail -20 || true
[[ "$(cat "$OUT/sanitizer.rc" 2>/dev/null)" == 0 ]] || failures+=("compute-sanitizer")
[[ -f "$OUT/bench_build.txt" ]] && tail -2 "$OUT/bench_build.txt"

section "3/4 timings against cuBLAS and torch (eager, CUDA graph, autocast)"
BENCH_DRY=()
((${#DRY[@]})) && BENCH_DRY=(--dry-run --skip-nvcc)
timeout 150 python benchmarks/bench_cuda.py --out "$OUT" --precisions "$PRECISIONS" \
    "${BENCH_DRY[@]}" || failures+=("bench_cuda.py (exit $?)")

section "4/4 summary"
if ((${#failures[@]})); then
    printf 'FAILED: %s\n' "${failures[@]}"
else
    echo "gpu_check: tests and benchmark ran without failures"
fi
echo "results: $OUT"
echo
if [[ -f "$OUT/bench_cuda.txt" ]]; then cat "$OUT/bench_cuda.txt"; else echo "(no timings)"; fi
((${#failures[@]} == 0))
