"""Compile every Triton kernel launch of the ``triton`` backend for a Hopper GPU
(sm_90) without one (``kad_kernels.triton.offline``).

The interpreter that runs the kernels on CPU in CI accepts code the GPU compiler
refuses (e.g. non-constexpr globals); this closes that gap.  The launches are
those of real calls, specialized as on a GPU: every rule, each dtype, vocabulary
sizes with and without 16-byte rows, batches with split and unsplit rows,
uniforms and Philox, greedy rows.  Run as a script (``python tests/sm90_compile.py``)
in a process without ``TRITON_INTERPRET``; ``test_triton_compiles.py`` does that.
Prints one line per call.
"""

from __future__ import annotations

import os
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "the GPU compiler does not run under TRITON_INTERPRET=1"

import torch  # noqa: E402

from kad_kernels.rules import Kind  # noqa: E402
from kad_kernels.triton import offline  # noqa: E402


def calls():
    """(label, call) for the launches to compile."""
    for kind in Kind:
        for op in ("mixture", "sample", "verify"):
            yield f"{op} {kind.name} bf16", offline.operation(op, kind, 4, 50304, torch.bfloat16)
    for dtype in (torch.float32, torch.float16):
        for op in ("mixture", "sample", "verify"):
            yield f"{op} LOGISTIC {dtype}", offline.operation(op, Kind.LOGISTIC, 4, 50304, dtype)
    for philox in (False, True):
        for temperature in (0.0, 0.7):
            for op in ("sample", "verify"):
                label = f"{op} LOGISTIC bf16 odd V, B=256, philox={philox}, T={temperature}"
                yield label, offline.operation(op, Kind.LOGISTIC, 256, 50257, torch.bfloat16,
                                               philox=philox, temperature=temperature)


def main() -> int:
    failures = 0
    for label, call in calls():
        try:
            launches = offline.compile_launches(call)
            print(f"ok   {label}: {', '.join(launch.name for launch in launches)}")
        except Exception as exc:  # report every call, then fail
            failures += 1
            print(f"FAIL {label}: {type(exc).__name__}: {exc}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
