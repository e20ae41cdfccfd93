"""Pass 2: the slice masses S_d = Σ p_v d_v and S_kept = Σ p_v (1 − d_v), hence
α = S_d / (S_d + S_kept) (docs/design.md §1.1, §4 pass 2), and the row's
bad-logits flags.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .layout import chunk_logits, row_offset, slice_bounds
from .mixture_math import IMPLICIT_REWARD, NUDGING, deferred, probs
from .row_stats import M_P, M_R, S_D, S_K, Z_P, row_state, slice_stats


@triton.jit(do_not_specialize=["rows", "positions", "slices", "kind"])
def _mass_kernel(
    p_ptr,  # [B, P, V] p logits; strides stride_b, stride_p, 1
    q_ptr,  # [B, P, V] q logits, p's dtype and strides
    temp_ptr,  # f32 [B] temperatures, or None: temp_value for every row
    temp_value,
    param_ptr,  # f32 [B] rule parameters, or None: param_value for every row
    param_value,
    stats_ptr,  # f32 [FIELDS, N, S] partials of pass 1; out: S_d, S_kept
    limit_ptr,  # i64 [N] primal key limits (read for Primal only)
    slice_flag_ptr,  # i32 [N, S] bad-logits bits of each slice (pass 1)
    flag_ptr,  # i32 [N] bad-logits flags of each row: out
    rows, vocab, positions, stride_b, stride_p, slice_len, slices, kind,
    HAS_REF: tl.constexpr, NEEDS_Q: tl.constexpr, SLICES_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 2 for slice (program_id(1)) of row (program_id(0)): ``slice_masses``."""
    slice_masses(
        p_ptr, q_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, slice_flag_ptr, flag_ptr,
        tl.program_id(0), tl.program_id(1), rows, vocab, positions, stride_b, stride_p, slice_len, slices,
        kind, HAS_REF, NEEDS_Q, SLICES_POW2, BLOCK,
    )


@triton.jit
def slice_masses(
    p_ptr, q_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, slice_flag_ptr, flag_ptr,
    n, j, rows, vocab, positions, stride_b, stride_p, slice_len, slices,
    kind, HAS_REF: tl.constexpr, NEEDS_Q: tl.constexpr, SLICES_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 2 for slice j of row n (arguments as ``_mass_kernel``'s): S_d and S_kept;
    slice 0 also folds the row's bad-logits bits (any slice's NaN/+inf, or a row max
    of −inf; of ref too if ``HAS_REF``).  Only the rules whose mask tests q_v
    (``NEEDS_Q``) read q here, and Nudging reads nothing."""
    state = row_state(
        stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value,
        n, positions, rows, slices, SLICES_POW2, kind, WITH_ALPHA=False,
    )
    if j == 0:
        js = tl.arange(0, SLICES_POW2)
        bits = tl.reduce(tl.load(slice_flag_ptr + n * slices + js, mask=js < slices, other=0), 0, _bit_or)
        bits |= (state.m_p == float("-inf")).to(tl.int32) * 2 | (state.m_q == float("-inf")).to(tl.int32) * 8
        if HAS_REF:
            m_r = tl.max(slice_stats(stats_ptr, M_R, n, rows, slices, SLICES_POW2, float("-inf")), 0)
            bits |= (m_r == float("-inf")).to(tl.int32) * 32
        tl.store(flag_ptr + n, bits)
    if kind == NUDGING:
        # One decision for the whole row (max p < λ): the slice's deferred or kept mass
        # is its share of p, which pass 1 already holds, so nothing is read again.
        m_j = tl.load(stats_ptr + (M_P * rows + n) * slices + j)
        share = tl.load(stats_ptr + (Z_P * rows + n) * slices + j) * tl.exp((m_j - state.m_p) * state.inv_t) / state.z_p
        defer_all = (1.0 / state.z_p) < state.param
        tl.store(stats_ptr + (S_D * rows + n) * slices + j, tl.where(defer_all, share, 0.0))
        tl.store(stats_ptr + (S_K * rows + n) * slices + j, tl.where(defer_all, 0.0, share))
    elif kind != IMPLICIT_REWARD:
        row = row_offset(n, positions, stride_b, stride_p)
        start, end = slice_bounds(j, slice_len, vocab)
        s_d = tl.zeros([BLOCK], tl.float32)
        s_k = tl.zeros([BLOCK], tl.float32)
        # Backwards through the slice: pass 1 (all slices at once, one wave) read the
        # slices' ends last, so those are what L2 still holds; walking forwards would
        # first ask for what L2 evicted first.  As in pass 1, the next chunk is loaded
        # before this one is reduced.
        last = start + (tl.cdiv(end - start, BLOCK) - 1) * BLOCK
        next_p = chunk_logits(p_ptr, row, last, end, BLOCK, "evict_first")
        next_q = next_p
        if NEEDS_Q:
            next_q = chunk_logits(q_ptr, row, last, end, BLOCK, "evict_first")
        for i in range(0, end - start, BLOCK):
            xp = next_p
            xq = next_q
            # Before the slice's start nothing is fetched (the bound masks every lane).
            off = last - i - BLOCK
            bound = tl.where(off >= start, end, off)
            next_p = chunk_logits(p_ptr, row, off, bound, BLOCK, "evict_first")
            if NEEDS_Q:
                next_q = chunk_logits(q_ptr, row, off, bound, BLOCK, "evict_first")
            # p = 0 past the end (exp(−inf)), so the sums need no mask.
            p, q, e = probs(xp, xq, state, NEEDS_Q)
            d = deferred(kind, p, q, e, xp, state)
            s_d += tl.where(d, p, 0.0)
            s_k += tl.where(d, 0.0, p)
        tl.store(stats_ptr + (S_D * rows + n) * slices + j, tl.sum(s_d, 0))
        tl.store(stats_ptr + (S_K * rows + n) * slices + j, tl.sum(s_k, 0))


@triton.jit
def _bit_or(a, b):
    return a | b
