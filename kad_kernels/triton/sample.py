"""``sample``: one token per row from π (docs/design.md §2.1), logits ``[B, V]``.

Pass 1, then pass 2 with the draw in it: each row's last program to finish its
slice's masses (a per-row ticket) draws the row's token, so the draws overlap
other rows' pass 2 and a call is two launches (B = 1 is launch-bound).  Greedy
rows (T = 0) take the arg-max of π instead, which needs α, hence pass 2 done:
when a row may be greedy, an arg-max launch follows, whose last slice per
greedy row folds the slice winners.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rules import Kind
from .draw import _argmax_kernel, draw_row, pi_slice_masses
from .layout import BLOCK, MAX_REGISTERS, NUM_WARPS, last_to_finish, layout, row_args, row_offset, row_value
from .pass_two import slice_masses
from .passes import first_pass, pass_two_args
from .row_stats import mixture_state


@triton.jit
def drawn_token(
    p_ptr, q_ptr, r_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr,
    u_ptr, seed_ptr, offset_ptr, b, N, V, stride_b, slice_len, S,
    PHILOX: tl.constexpr, KIND, SP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Row b's token by inverse CDF of π, once passes 1 and 2 are complete."""
    if PHILOX:
        u = tl.rand(tl.load(seed_ptr), tl.load(offset_ptr) + b)  # counter layout of _random.py
    else:
        u = tl.load(u_ptr + b)
    m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha = mixture_state(
        stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, b, 1, N, S, SP, KIND
    )
    masses = pi_slice_masses(stats_ptr, b, N, S, SP, V, slice_len, m_q, z_q, m_y, z_y, inv_t, alpha, KIND)
    return draw_row(
        p_ptr, q_ptr, r_ptr, row_offset(b, 1, stride_b, 0), masses, False, u, slice_len, V,
        m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha, KIND, SP, BLOCK,
    )


@triton.jit(do_not_specialize=['N', 'P', 'S', 'KIND'])
def _mass_sample_kernel(
    p_ptr, q_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, slice_flag_ptr, flag_ptr,
    N, V, P, stride_b, stride_p, slice_len, S,
    r_ptr, ticket_ptr, u_ptr, seed_ptr, offset_ptr, out_ptr,
    KIND, HAS_REF: tl.constexpr, NEEDS_Q: tl.constexpr, SP: tl.constexpr, BLOCK: tl.constexpr,
    PHILOX: tl.constexpr,
):
    """Pass 2 for slice j of row n (``slice_masses``); the row's last slice to finish
    then draws its token, unless the row is greedy."""
    n = tl.program_id(0)
    j = tl.program_id(1)
    slice_masses(
        p_ptr, q_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, slice_flag_ptr, flag_ptr,
        n, j, N, V, P, stride_b, stride_p, slice_len, S, KIND, HAS_REF, NEEDS_Q, SP, BLOCK,
    )
    last = last_to_finish(ticket_ptr, n, S)  # greedy rows count too: the arg-max launch goes on to 2S
    if last & (row_value(temp_ptr, temp_value, n) > 0):
        token = drawn_token(
            p_ptr, q_ptr, r_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr,
            u_ptr, seed_ptr, offset_ptr, n, N, V, stride_b, slice_len, S, PHILOX, KIND, SP, BLOCK,
        )
        tl.store(out_ptr + n, token.to(tl.int64))


def sample(kind: Kind, param, p, q, ref, temperature, uniforms, seed, offset, maybe_greedy=True):
    """Tokens i64 [B] and bad-logits flags [B]; no arg-max launch unless ``maybe_greedy``."""
    batch, vocab = p.shape
    lay = layout(batch, 1, vocab, p.device)
    tokens = torch.empty(batch, dtype=torch.int64, device=p.device)
    tickets = torch.empty(batch, dtype=torch.int32, device=p.device)
    r = ref if ref is not None else p
    philox = uniforms is None
    stats, limits, slice_flags, flags = first_pass(kind, param, p, q, ref, temperature, lay, tickets)
    args, kwargs = pass_two_args(kind, param, p, q, temperature, stats, limits, slice_flags, flags, lay)
    _mass_sample_kernel[(batch, lay.slices)](
        *args, r, tickets, stats if philox else uniforms, seed if philox else flags,
        offset if philox else flags, tokens, PHILOX=philox, **kwargs,
    )
    if maybe_greedy:
        best_val = torch.empty(batch, lay.slices, dtype=torch.float32, device=p.device)
        best_idx = torch.empty(batch, lay.slices, dtype=torch.int32, device=p.device)
        _argmax_kernel[(batch, lay.slices)](
            p, q, r, *row_args(param, temperature), stats, limits, best_val, best_idx,
            batch, vocab, 1, p.stride(0), 0, lay.slice_len, lay.slices, tickets, tokens,
            KIND=int(kind), SP=lay.slices_pow2, BLOCK=BLOCK, num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS,
        )
    return tokens, flags
