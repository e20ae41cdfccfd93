"""Compile every Triton kernel of the ``triton`` backend for a Hopper GPU (sm_90)
without one: Triton lowers to PTX and runs the ptxas shipped in its wheel.

The interpreter that runs the kernels on CPU in CI accepts code the GPU compiler
refuses (e.g. non-constexpr globals), so this closes that gap.  Run as a script
(``python tests/sm90_compile.py``) in a process without ``TRITON_INTERPRET``;
``test_triton_compiles.py`` does that.  Prints one line per kernel variant.
"""

from __future__ import annotations

import itertools
import os
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "the GPU compiler does not run under TRITON_INTERPRET=1"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kad_kernels.triton import draw, mixture, sample, stats, verify  # noqa: E402

LOGITS = ("p_ptr", "q_ptr", "r_ptr")
INT64_POINTERS = ("draft_ptr", "seed_ptr", "offset_ptr", "tokens_ptr", "accepted_ptr", "limit_ptr")
INT32_POINTERS = ("best_idx_ptr", "slice_flag_ptr", "flag_ptr")


def signature(fn, dtype: str, overrides: dict[str, str]) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in overrides:
            sig[name] = overrides[name]
        elif name in LOGITS:
            sig[name] = f"*{dtype}"
        elif name in INT64_POINTERS:
            sig[name] = "*i64"
        elif name in INT32_POINTERS:
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"
        else:
            sig[name] = "i32"
    return sig


def variants():
    """(kernel, pointer overrides, constexpr values) for every launch the backend makes."""
    common = {"SP": 16, "BLOCK": stats.BLOCK}
    yield stats._stats_kernel, {}, [{"HAS_REF": h, "BLOCK": stats.BLOCK} for h in (False, True)]
    yield stats._primal_hist_kernel, {}, [{"SP": 16, "BLOCK": stats.HIST_BLOCK}]
    yield stats._primal_limit_kernel, {}, [{"SP": 16}]
    yield stats._mass_kernel, {}, [dict(common, HAS_REF=h) for h in (False, True)]
    yield mixture._mixture_kernel, {}, [common]
    yield draw._argmax_kernel, {}, [common]
    yield sample._sample_kernel, {"out_ptr": "*i64"}, [dict(common, PHILOX=x) for x in (False, True)]
    yield verify._accept_kernel, {}, [{"SP": 16, "PHILOX": x} for x in (False, True)]
    yield verify._residual_kernel, {}, [common]
    yield verify._verify_draw_kernel, {}, [dict(common, PHILOX=x) for x in (False, True)]


def main() -> int:
    target = GPUTarget("cuda", 90, 32)
    failures = 0
    for (fn, overrides, constexpr_sets), dtype in itertools.product(list(variants()), ("fp32", "bf16", "fp16")):
        for constexprs in constexpr_sets:
            sig = signature(fn, dtype, overrides)
            for name in constexprs:
                sig[name] = "constexpr"
            label = f"{fn.__name__} {dtype} {constexprs}"
            try:
                triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=target,
                               options={"num_warps": stats.NUM_WARPS})
                print(f"ok   {label}")
            except Exception as exc:  # report every variant, then fail
                failures += 1
                print(f"FAIL {label}: {type(exc).__name__}: {exc}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
