"""The ``triton`` backend: fused Triton kernels (docs/design.md §3–§4).

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how CI
tests it).  Each operation is a ``torch.library`` custom op with a fake
implementation, so ``torch.compile`` and CUDA graphs capture it whole.
"""

from __future__ import annotations

import triton  # noqa: F401  (ImportError here marks the backend unavailable)

from .._backend import Backend, FunctionBackend
from .ops import mixture_op, sample_op, verify_op


def backend() -> Backend:
    return FunctionBackend("triton", mixture_op, sample_op, verify_op, philox_in_kernel=True)
