"""``mixture``: π ``[N, V]`` and α ``[N]`` written out, for analysis and tests."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rules import Kind
from .layout import BLOCK, NUM_WARPS, layout, row_args, row_offset, slice_bounds
from .mixture_math import chunk_mixture
from .passes import row_statistics
from .row_stats import mixture_state


@triton.jit(do_not_specialize=['N', 'P', 'S', 'KIND'])
def _mixture_kernel(
    p_ptr, q_ptr, r_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, out_ptr, alpha_ptr,
    N, V, P, stride_b, stride_p, slice_len, S,
    KIND, SP: tl.constexpr, BLOCK: tl.constexpr,
):
    n = tl.program_id(0)
    j = tl.program_id(1)
    m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha = mixture_state(
        stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, n, P, N, S, SP, KIND
    )
    if j == 0:
        tl.store(alpha_ptr + n, alpha)
    row = row_offset(n, P, stride_b, stride_p)
    start, end = slice_bounds(j, slice_len, V)
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < end
        pi, _ = chunk_mixture(
            p_ptr, q_ptr, r_ptr, row, cols, mask, V,
            m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha, KIND,
        )
        tl.store(out_ptr + n.to(tl.int64) * V + cols, pi, mask=mask)


def mixture(kind: Kind, param, p, q, ref, temperature):
    """π f32 [B, V], α f32 [B] and the bad-logits flags [B] of logits [B, V]."""
    batch, vocab = p.shape
    lay = layout(batch, 1, vocab, p.device)
    stats, limits, flags = row_statistics(kind, param, p, q, ref, temperature, lay)
    probs = torch.empty(batch, vocab, dtype=torch.float32, device=p.device)
    alpha = torch.empty(batch, dtype=torch.float32, device=p.device)
    _mixture_kernel[(batch, lay.slices)](
        p, q, ref if ref is not None else p, *row_args(param, temperature), stats, limits, probs, alpha,
        batch, vocab, 1, p.stride(0), 0, lay.slice_len, lay.slices,
        KIND=int(kind), SP=lay.slices_pow2, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
    return probs, alpha, flags
