#!/usr/bin/env bash
# One-shot check on a GPU machine, from the repo root:  bash benchmarks/gpu_check.sh
#   0. install: builds the C++/CUDA extension of csrc/ (setup.py; CUDA kernels when nvcc is there)
#   1. GPU tests (pytest -m gpu $PYTEST_ARGS)  -> $OUT/gpu_tests.log
#   2. kernel benchmarks, two passes           -> $OUT/bench.log, $OUT/{headline,grid}/bench_kernels.{csv,md,png}
# Every step runs even if an earlier one fails; the exit status is nonzero if any failed.
# The machine is assumed offline with torch/triton preinstalled: pip never resolves
# dependencies here.  Budget: about 6 minutes (tests capped at TEST_TIMEOUT seconds,
# the benchmark stops starting new measurements after BENCH_MAX_SECONDS and is killed
# at BENCH_TIMEOUT; its rows so far are in $OUT/<pass>/bench_kernels.partial.csv then).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-benchmarks/out}
PY=${PYTHON:-python3}
TEST_TIMEOUT=${TEST_TIMEOUT:-150}
BENCH_MAX_SECONDS=${BENCH_MAX_SECONDS:-170}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-270}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Import the checkout even if the editable install below fails.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=()

echo "== nvidia-smi"
nvidia-smi || echo "(nvidia-smi failed)"
echo "== versions"
"$PY" - <<'PY'
import platform
import torch
print("python", platform.python_version())
print("torch ", torch.__version__, "| cuda", torch.version.cuda, "| available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton missing:", exc)
PY

echo "== install (editable, no deps, no build isolation, no index)"
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1; then
    echo "pip install failed (continuing with PYTHONPATH=$PWD); see $OUT/pip.log"
    tail -n 20 "$OUT/pip.log"
else
    rm -f "$OUT/pip.log"  # the device tool returns at most 8 files
fi

echo "== backends (the cuda backend needs the extension built with nvcc)"
"$PY" -c "import kad_kernels as kk; print(kk.available_backends())" || failed+=("backends")

PYTEST_ARGS=${PYTEST_ARGS:--x -q}
echo "== GPU tests: pytest -m gpu $PYTEST_ARGS (timeout ${TEST_TIMEOUT}s) -> $OUT/gpu_tests.log"
start=$SECONDS
# shellcheck disable=SC2086
timeout "$TEST_TIMEOUT" "$PY" -m pytest -m gpu $PYTEST_ARGS 2>&1 | tee "$OUT/gpu_tests.log"
status=$?
echo "   pytest exit $status after $((SECONDS - start))s"
case $status in
    0) ;;
    5) echo "   FAILED: no GPU tests were collected (-m gpu)"; failed+=("gpu-tests (none collected)") ;;
    124) echo "   FAILED: timed out after ${TEST_TIMEOUT}s"; failed+=("gpu-tests (timeout)") ;;
    *) failed+=("gpu-tests (exit $status)") ;;
esac

# Two passes: the full grid for the backends alone, then the headline comparison
# with torch.compile of the reference (each shape costs a compilation of seconds).
# HEADLINE_ARGS / BENCH_ARGS override them (e.g. BENCH_ARGS=--quick).
HEADLINE_ARGS=${HEADLINE_ARGS:---dtypes bf16 --vocab 151936 --batch 64 --backends torch,torch-compile,triton,cuda}
BENCH_ARGS=${BENCH_ARGS:---backends torch,triton,cuda}
bench() {  # bench NAME ARGS...: one pass into $OUT/NAME
    local name=$1
    shift
    echo "== benchmark $name: $* (budget ${BENCH_MAX_SECONDS}s, killed at ${BENCH_TIMEOUT}s)"
    local start=$SECONDS
    timeout "$BENCH_TIMEOUT" "$PY" benchmarks/bench_kernels.py --out-dir "$OUT/$name" \
        --max-seconds "$BENCH_MAX_SECONDS" "$@" 2>&1 | tee -a "$OUT/bench.log"
    local status=$?
    echo "   bench $name exit $status after $((SECONDS - start))s"
    if [ "$status" -eq 0 ]; then
        rm -f "$OUT/$name/bench_kernels.partial.csv"  # the full CSV is there
    else
        [ "$status" -eq 124 ] && echo "   timed out: partial rows in $OUT/$name/bench_kernels.partial.csv"
        failed+=("bench $name (exit $status)")
    fi
}
# shellcheck disable=SC2086
bench grid $BENCH_ARGS
# torch.compile has failed here before (Inductor, torch 2.11): keep its internal trace in the log.
# shellcheck disable=SC2086
TORCHDYNAMO_VERBOSE=1 bench headline $HEADLINE_ARGS

if ((${#failed[@]})); then
    echo "== gpu_check FAILED: ${failed[*]}"
    exit 1
fi
echo "== gpu_check passed"
