"""``mixture``: π ``[N, V]`` and α ``[N]`` written out, for analysis and tests."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rules import Kind
from .layout import BLOCK, NUM_WARPS, layout, row_geometry, row_offset, row_values, slice_bounds
from .mixture_math import chunk_mixture
from .passes import row_statistics
from .row_stats import row_state


@triton.jit(do_not_specialize=["rows", "positions", "slices", "kind"])
def _mixture_kernel(
    p_ptr,  # [B, V] p logits; strides stride_b, 1
    q_ptr,  # [B, V] q logits, p's dtype and strides
    ref_ptr,  # [B, V] ref logits, p's dtype and strides; None unless ImplicitReward
    temp_ptr,  # f32 [B] temperatures, or None: temp_value for every row
    temp_value,
    param_ptr,  # f32 [B] rule parameters, or None: param_value for every row
    param_value,
    stats_ptr,  # f32 [FIELDS, B, S] partials of passes 1–2
    limit_ptr,  # i64 [B] primal key limits (read for Primal only)
    out_ptr,  # f32 [B, V] π: out
    alpha_ptr,  # f32 [B] α: out
    rows, vocab, positions, stride_b, stride_p, slice_len, slices, kind,
    SLICES_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    n = tl.program_id(0)
    j = tl.program_id(1)
    state = row_state(
        stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value,
        n, positions, rows, slices, SLICES_POW2, kind, WITH_ALPHA=True,
    )
    if j == 0:
        tl.store(alpha_ptr + n, state.alpha)
    row = row_offset(n, positions, stride_b, stride_p)
    start, end = slice_bounds(j, slice_len, vocab)
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < end
        pi, _ = chunk_mixture(p_ptr, q_ptr, ref_ptr, row, cols, mask, vocab, state, kind)
        tl.store(out_ptr + n.to(tl.int64) * vocab + cols, pi, mask=mask)


def mixture(kind: Kind, param, p, q, ref, temperature):
    """π f32 [B, V], α f32 [B] and the bad-logits flags [B] of logits [B, V]."""
    batch, vocab = p.shape
    cut = layout(batch, 1, vocab, p.device)
    stats, limits, flags = row_statistics(kind, param, p, q, ref, temperature, cut)
    probs = torch.empty(batch, vocab, dtype=torch.float32, device=p.device)
    alpha = torch.empty(batch, dtype=torch.float32, device=p.device)
    _mixture_kernel[(batch, cut.slices)](
        p_ptr=p, q_ptr=q, ref_ptr=ref if kind == Kind.IMPLICIT_REWARD else None, **row_values(param, temperature),
        stats_ptr=stats, limit_ptr=limits, out_ptr=probs, alpha_ptr=alpha, **row_geometry(p, cut), kind=int(kind),
        SLICES_POW2=cut.slices_pow2, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
    return probs, alpha, flags
