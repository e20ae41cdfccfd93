#!/usr/bin/env bash
# One-shot check on a GPU machine, from the repo root:  bash benchmarks/gpu_check.sh
#   1. GPU tests (pytest -m gpu -x -q)      -> $OUT/gpu_tests.log
#   2. kernel benchmarks (bench_kernels.py) -> $OUT/bench.log, $OUT/bench_kernels.{csv,md,png}
# Both steps run even if the first fails; the exit status is nonzero if either failed.
# The machine is assumed offline with torch/triton preinstalled: pip never resolves
# dependencies here.  Budget: about 6 minutes (tests capped at TEST_TIMEOUT seconds,
# the benchmark stops starting new measurements after BENCH_MAX_SECONDS and is killed
# at BENCH_TIMEOUT; its rows so far are in $OUT/bench_kernels.partial.csv then).
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
fi

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

echo "== benchmarks (budget ${BENCH_MAX_SECONDS}s, killed at ${BENCH_TIMEOUT}s) -> $OUT/bench.log"
start=$SECONDS
timeout "$BENCH_TIMEOUT" "$PY" benchmarks/bench_kernels.py --out-dir "$OUT" --max-seconds "$BENCH_MAX_SECONDS" \
    ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
status=$?
echo "   bench exit $status after $((SECONDS - start))s"
if [ "$status" -ne 0 ]; then
    [ "$status" -eq 124 ] && echo "   timed out: partial rows in $OUT/bench_kernels.partial.csv"
    failed+=("bench (exit $status)")
fi

if ((${#failed[@]})); then
    echo "== gpu_check FAILED: ${failed[*]}"
    exit 1
fi
echo "== gpu_check passed"
