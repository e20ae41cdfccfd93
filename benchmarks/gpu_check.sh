#!/usr/bin/env bash
# One-shot check on a GPU machine, from the repo root:  bash benchmarks/gpu_check.sh
#   0. install: builds the C++/CUDA extension of csrc/ (setup.py; CUDA kernels when nvcc is there)
#   (everything this script prints, with each step's seconds -> $OUT/gpu_check.log)
#   1. GPU tests (pytest -m gpu $PYTEST_ARGS)  -> $OUT/gpu_tests.log
#   2. kernel benchmarks, two passes           -> $OUT/bench.log, $OUT/headline/bench_kernels.csv,
#                                                 $OUT/grid/bench_kernels.{csv,png} (the CSVs render as
#                                                 markdown with bench_kernels.markdown)
#   3. Nsight Compute on the headline calls    -> $OUT/profile.log (skipped without ncu),
#      triton and cuda backends at B = 64, then triton at B = 1 if time is left
#   4. compute-sanitizer memcheck of the calls -> $OUT/sanitizer.log (skipped without it)
# Every step runs even if an earlier one fails; the exit status is nonzero if any failed.
# The machine is assumed offline with torch/triton preinstalled: pip never resolves
# dependencies here.  Budget: TOTAL_SECONDS (570), to fit one 10-minute device call (tests
# capped at TEST_TIMEOUT seconds; each benchmark pass stops starting new measurements
# after its MAX_SECONDS and is killed at its TIMEOUT, its rows so far then in
# $OUT/<pass>/bench_kernels.partial.csv; the profile is killed at PROFILE_TIMEOUT; every
# limit cut to what is left of TOTAL_SECONDS).
# The device tool returns at most 8 files: keep $OUT to the ones named above.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-benchmarks/out}
PY=${PYTHON:-python3}
# Seen on an H100 (2026-11-26): build ~300 s (sm_80 + sm_90, nvcc one target at a
# time; now sm_90 only), tests 143 s with a warm Triton cache (over 120 s cold),
# headline 25 s, grid 62 s, profile 21 s (one backend), sanitizer 24 s.  Each step's
# own limit is cut to what is left of TOTAL_SECONDS (a step with under 10 s left is
# skipped and counted as failed), so the script ends within one 10-minute device call
# however long the build takes.
TOTAL_SECONDS=${TOTAL_SECONDS:-570}
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-300}
TEST_TIMEOUT=${TEST_TIMEOUT:-200}
HEADLINE_MAX_SECONDS=${HEADLINE_MAX_SECONDS:-70}
HEADLINE_TIMEOUT=${HEADLINE_TIMEOUT:-110}
BENCH_MAX_SECONDS=${BENCH_MAX_SECONDS:-80}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-110}
PROFILE_TIMEOUT=${PROFILE_TIMEOUT:-70}
SANITIZER_TIMEOUT=${SANITIZER_TIMEOUT:-50}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
# Import the checkout even if the editable install below fails.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=()
# capped LIMIT: LIMIT, or what is left of TOTAL_SECONDS if less; 1 when under 10 s are left,
# so that the step times out at once and counts as failed (`timeout 0` would never end it).
capped() {
    local left=$((TOTAL_SECONDS - SECONDS))
    if [ "$left" -lt 10 ]; then echo 1; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

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
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "   FAILED: torch sees no CUDA device: every GPU test would skip and the benchmarks run on the CPU"
    failed+=("no CUDA")
fi

# The lent GPUs are Hoppers: build the CUDA kernels for sm_90 only (half the nvcc time).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
echo "== install (editable, no deps, no build isolation, no index; CUDA targets $TORCH_CUDA_ARCH_LIST)"
start=$SECONDS
if ! timeout "$(capped "$INSTALL_TIMEOUT")" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
        -e . > "$OUT/pip.log" 2>&1; then
    echo "pip install failed (continuing with PYTHONPATH=$PWD); see $OUT/pip.log"
    tail -n 20 "$OUT/pip.log"
else
    rm -f "$OUT/pip.log"  # the device tool returns at most 8 files
fi
echo "   install took $((SECONDS - start))s"

echo "== backends (the cuda backend needs the extension built with nvcc)"
"$PY" -c "import kad_kernels as kk; print(kk.available_backends())" || failed+=("backends")

# Several workers when pytest-xdist is there: Triton compiles each kernel variant in
# the process that first runs it, and compiling dominates the GPU suite.
# Without it, pyproject's addopts go too: they name xdist's --dist, which pytest would refuse.
if "$PY" -c "import xdist" 2>/dev/null; then
    default_pytest="-q --maxfail=20 -n 14"
else
    default_pytest="-q --maxfail=20 -o addopts=--strict-markers"
fi
PYTEST_ARGS=${PYTEST_ARGS:-$default_pytest}
# The GPU tests are the kernels' (tests/conftest.py's backend cases, test_cuda_backend.py,
# ...), none of which imports kad or writes GGUF files.  The image's transformers may
# be older than kad's floor and it has no gguf: the test files that need either would
# fail the whole collection there, so they are left out, named, with the reason.
ignored=()
for need in "kad:^(import|from) (kad|hf_helpers)([ .]|$)" "gguf:^(import|from) (gguf|gguf_models)([ .]|$)"; do
    module=${need%%:*} pattern=${need#*:}
    if ! reason=$("$PY" -c "import $module" 2>&1); then
        files=$(grep -lE "$pattern" tests/test_*.py)
        echo "   cannot import $module here ($(echo "$reason" | tail -n 1)): leaving out" $files
        for file in $files; do ignored+=(--ignore "$file"); done
    fi
done
limit=$(capped "$TEST_TIMEOUT")
echo "== GPU tests: pytest -m gpu $PYTEST_ARGS (timeout ${limit}s) -> $OUT/gpu_tests.log"
start=$SECONDS
# shellcheck disable=SC2086
timeout "$limit" "$PY" -m pytest -m gpu $PYTEST_ARGS "${ignored[@]}" 2>&1 | tee "$OUT/gpu_tests.log"
status=$?
echo "   pytest exit $status after $((SECONDS - start))s"
case $status in
    0) ;;
    5) echo "   FAILED: no GPU tests were collected (-m gpu)"; failed+=("gpu-tests (none collected)") ;;
    124) echo "   FAILED: timed out after ${limit}s"; failed+=("gpu-tests (timeout)") ;;
    *) failed+=("gpu-tests (exit $status)") ;;
esac

# Two passes: the headline comparison with torch.compile of the reference first (each
# shape costs a compilation of seconds), then the full grid for the backends alone.
# HEADLINE_ARGS / BENCH_ARGS override them (e.g. BENCH_ARGS=--quick).
# The targets' shapes (dual, bf16, V = 151936, B = 64 and B = 1); the grid has the other rules.
HEADLINE_ARGS=${HEADLINE_ARGS:---dtypes bf16 --vocab 151936 --batch 64,1 --rules dual --backends torch,torch-compile,triton,cuda}
BENCH_ARGS=${BENCH_ARGS:---backends torch,triton,cuda}
bench() {  # bench NAME MAX_SECONDS TIMEOUT ARGS...: one pass into $OUT/NAME
    local name=$1 limit
    limit=$(capped "$3")
    # Keep the slack between the two (the measurement in flight, the CSV) when the limit is cut.
    local max_seconds=$((limit - ($3 - $2)))
    max_seconds=$((max_seconds < 1 ? 1 : max_seconds))
    shift 3
    echo "== benchmark $name: $* (budget ${max_seconds}s, killed at ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$PY" benchmarks/bench_kernels.py --device cuda --out-dir "$OUT/$name" \
        --max-seconds "$max_seconds" "$@" 2>&1 | tee -a "$OUT/bench.log"
    local status=$?
    echo "   bench $name exit $status after $((SECONDS - start))s"
    if [ "$status" -eq 0 ]; then
        rm -f "$OUT/$name/bench_kernels.partial.csv"  # the full CSV is there
    else
        [ "$status" -eq 124 ] && echo "   timed out: partial rows in $OUT/$name/bench_kernels.partial.csv"
        failed+=("bench $name (exit $status)")
    fi
}
# torch.compile has failed here before (Inductor, torch 2.11): keep its internal trace in the log.
# shellcheck disable=SC2086
TORCHDYNAMO_VERBOSE=1 bench headline "$HEADLINE_MAX_SECONDS" "$HEADLINE_TIMEOUT" $HEADLINE_ARGS
# One shape: the CSV says it all (and the files that come back are counted).
rm -f "$OUT/headline/bench_kernels.png" "$OUT/headline/bench_kernels.md"
# shellcheck disable=SC2086
bench grid "$BENCH_MAX_SECONDS" "$BENCH_TIMEOUT" $BENCH_ARGS
rm -f "$OUT/grid/bench_kernels.md"

# profile_runs BUDGET LOG "BACKEND:B ..." "SCRIPT_ARGS" TOOL...: profile_kernels.py under
# TOOL for each backend and batch, its output into LOG, within what is left of BUDGET
# seconds (under 10 left, the rest is skipped).  Sets status: 0, or the last failure's.
profile_runs() {
    local budget log=$2 runs=$3 script_args=$4
    budget=$(capped "$1")
    shift 4
    local start=$SECONDS run backend batch left code
    status=0
    for run in $runs; do
        backend=${run%:*} batch=${run#*:}
        left=$((budget - (SECONDS - start)))
        if [ "$left" -lt 10 ]; then echo "   out of time before backend $backend, B = $batch"; status=124; break; fi
        echo "-- backend $backend, B = $batch $script_args" >> "$log"
        # shellcheck disable=SC2086
        timeout "$left" "$@" "$PY" benchmarks/profile_kernels.py --backend "$backend" --batch "$batch" \
            $script_args >> "$log" 2>&1
        code=$?
        echo "   backend $backend, B = $batch: exit $code"
        [ "$code" -eq 0 ] || status=$code
    done
    echo "   done after $((SECONDS - start))s"
}

if command -v ncu >/dev/null 2>&1; then
    echo "== Nsight Compute: the headline calls of the triton and cuda backends -> $OUT/profile.log"
    # B = 1 last: its launches are the B = 1 target's whole story, but a short one.
    profile_runs "$PROFILE_TIMEOUT" "$OUT/profile.log" "triton:64 cuda:64 triton:1" "" \
        ncu --profile-from-start off --section SpeedOfLight --section Occupancy --section LaunchStats
    # A kernel's header line ends "..., Context 1, Stream 7, Device 0, CC 9.0".
    grep -E "Context [0-9]+, Stream|DRAM Throughput|Memory Throughput|Achieved Occupancy|Duration" \
        "$OUT/profile.log" | head -n 80
    [ "$status" -eq 0 ] || failed+=("profile (exit $status)")
else
    echo "== Nsight Compute (ncu) not found: no profile"
fi

if command -v compute-sanitizer >/dev/null 2>&1; then
    # Without torch's caching allocator every tensor is its own cudaMalloc, so memcheck
    # sees an access past a tensor's end even when the pool has memory there.  Both
    # layouts of the cuda backend: split vocabulary (B = 8) and one block per row (B = 1056);
    # the triton kernels at B = 8.
    echo "== compute-sanitizer memcheck: the headline calls, both layouts -> $OUT/sanitizer.log"
    profile_runs "$SANITIZER_TIMEOUT" "$OUT/sanitizer.log" "cuda:8 cuda:1056 triton:8" "--vocab 50257" \
        env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20
    grep -E "ERROR SUMMARY|Invalid|out of bounds" "$OUT/sanitizer.log" | sort | uniq -c | head -n 20
    [ "$status" -eq 0 ] || failed+=("sanitizer (exit $status)")
else
    echo "== compute-sanitizer not found: no memcheck"
fi

if ((${#failed[@]})); then
    echo "== gpu_check FAILED: ${failed[*]}"
    exit 1
fi
echo "== gpu_check passed"
