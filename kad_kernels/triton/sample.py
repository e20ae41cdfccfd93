"""``sample``: one token per row from π (DESIGN §2), logits ``[B, V]``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rules import Kind
from .draw import _argmax_kernel, draw_row, greedy_token, pi_slice_masses
from .stats import (
    BLOCK, DRAW_MAX_REGISTERS, MAX_REGISTERS, NUM_WARPS, layout, mixture_state, row_offset, row_statistics,
    row_args, row_value,
)


@triton.jit(do_not_specialize=['N', 'S', 'KIND'])
def _sample_kernel(
    p_ptr, q_ptr, r_ptr, temp_ptr, temp_value, param_ptr, param_value,
    stats_ptr, limit_ptr, best_val_ptr, best_idx_ptr,
    u_ptr, seed_ptr, offset_ptr, out_ptr,
    N, V, stride_b, slice_len, S,
    PHILOX: tl.constexpr, KIND, SP: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    if row_value(temp_ptr, temp_value, b) == 0:
        token = greedy_token(best_val_ptr, best_idx_ptr, b, S, SP)
    else:
        if PHILOX:
            u = tl.rand(tl.load(seed_ptr), tl.load(offset_ptr) + b)  # counter layout of _random.py
        else:
            u = tl.load(u_ptr + b)
        m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha = mixture_state(
            stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, b, 1, N, S, SP, KIND
        )
        masses = pi_slice_masses(stats_ptr, b, N, S, SP, V, slice_len, m_q, z_q, m_y, z_y, inv_t, alpha, KIND)
        token = draw_row(
            p_ptr, q_ptr, r_ptr, row_offset(b, 1, stride_b, 0), masses, False, u, slice_len, V,
            m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha, KIND, SP, BLOCK,
        )
    tl.store(out_ptr + b, token.to(tl.int64))


def sample(kind: Kind, param, p, q, ref, temperature, uniforms, seed, offset, maybe_greedy=True):
    """Tokens i64 [B] and bad-logits flags [B]; no arg-max pass unless ``maybe_greedy``."""
    batch, vocab = p.shape
    lay = layout(batch, 1, vocab, p.device)
    stats, limits, flags = row_statistics(kind, param, p, q, ref, temperature, lay)
    best_val = torch.empty(batch, lay.slices, dtype=torch.float32, device=p.device)
    best_idx = torch.empty(batch, lay.slices, dtype=torch.int32, device=p.device)
    r = ref if ref is not None else p
    common = dict(SP=lay.slices_pow2, BLOCK=BLOCK, num_warps=NUM_WARPS)
    if maybe_greedy:
        _argmax_kernel[(batch, lay.slices)](
            p, q, r, *row_args(param, temperature), stats, limits, best_val, best_idx,
            batch, vocab, 1, p.stride(0), 0, lay.slice_len, lay.slices, KIND=int(kind), maxnreg=MAX_REGISTERS,
            **common,
        )
    tokens = torch.empty(batch, dtype=torch.int64, device=p.device)
    philox = uniforms is None
    _sample_kernel[(batch,)](
        p, q, r, *row_args(param, temperature), stats, limits, best_val, best_idx,
        stats if philox else uniforms, seed if philox else flags, offset if philox else flags, tokens,
        batch, vocab, p.stride(0), lay.slice_len, lay.slices,
        PHILOX=philox, KIND=int(kind), maxnreg=DRAW_MAX_REGISTERS, **common,
    )
    return tokens, flags
