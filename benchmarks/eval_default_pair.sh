#!/usr/bin/env bash
# The issue-7 measurements on the default pair: GSM8K (first LIMIT items), one
# result file per configuration, then the summary table and the figures; and a
# batch-1 timing of kad vs kad-spec (the paper's speed comparison is at batch 1).
#   bash benchmarks/eval_default_pair.sh [OUT_DIR] [LIMIT] [BATCH_SIZE]
# OUT_DIR defaults to benchmarks/results/eval-default-pair of this checkout, from
# whatever directory the script runs in.
# Rerunning continues interrupted runs (--resume) and skips finished ones.  The
# torch engine (bf16), as measured in RESULTS.md: with llama-cpp-python installed the
# default pair would otherwise run in llama.cpp, and --resume refuses that change.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$REPO/benchmarks/results/eval-default-pair}"
LIMIT="${2:-30}"
BATCH="${3:-10}"
run() { kad eval --engine torch --task gsm8k --limit "$LIMIT" --batch-size "$BATCH" --out-dir "$OUT" --resume "$@"; }
run --mode base
run --mode aligned
run --mode kad --rule dual --lam 0.4
run --mode kad --rule primal --lam 0.9
run --mode kad-spec --rule dual --lam 0.4 --gamma 4
run --mode nudging --lam 0.4
run --mode nudging-spec --lam 0.4 --gamma 4
for gamma in 2 6; do  # γ sweep: acceptance and tok/s vs γ
    run --mode kad-spec --rule dual --lam 0.4 --gamma "$gamma"
done
for lam in 0.1 0.7; do  # λ sweep: accuracy vs λ
    run --mode kad-spec --rule dual --lam "$lam" --gamma 4
done
run --mode kad --rule primal --lam 0.5  # budget sweep: accuracy vs b
kad summary "$OUT"/*.json | tee "$OUT/summary.md"
kad plot "$OUT"/*.json --out "$OUT"

B1="$OUT/batch1"
one() { kad eval --engine torch --task gsm8k --limit 3 --batch-size 1 --out-dir "$B1" --resume "$@"; }
one --mode kad --rule dual --lam 0.4
one --mode kad-spec --rule dual --lam 0.4 --gamma 4
kad summary "$B1"/*.json | tee "$B1/summary.md"
