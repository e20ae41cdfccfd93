"""The one draw per row shared by ``sample`` and ``verify`` (DESIGN §4, pass 3).

Greedy rows take the arg-max of π (per-slice arg-max, then the lowest index
among the slice winners).  Sampled rows draw by inverse CDF in vocabulary
order: the slice masses are combined into a prefix, the slice holding
``u · Σ`` is found, and only that slice is scanned.  Slice masses of π come from
the statistics alone (``Σ_slice π = S_kept + α Σ_slice q``); after a rejection
in ``verify`` the residual ``max(π − q, 0)`` needs its own pass (verify.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .stats import (
    IMPLICIT_REWARD, M_Q, M_Y, S_K, Z_Q, Z_Y, chunk_mixture, mixture_state, row_offset, slice_bounds, slice_stats,
)


@triton.jit(do_not_specialize=['N', 'P', 'S', 'KIND'])
def _argmax_kernel(
    p_ptr, q_ptr, r_ptr, temp_ptr, param_ptr, stats_ptr, limit_ptr, best_val_ptr, best_idx_ptr,
    N, V, P, stride_b, stride_p, slice_len, S,
    KIND, SP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per-slice arg-max of π on greedy rows (T = 0); sampled rows return at once."""
    n = tl.program_id(0)
    j = tl.program_id(1)
    if tl.load(temp_ptr + n // P) == 0:
        m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha = mixture_state(
            stats_ptr, limit_ptr, param_ptr, temp_ptr, n, P, N, S, SP, KIND
        )
        row = row_offset(n, P, stride_b, stride_p)
        start, end = slice_bounds(j, slice_len, V)
        best = -1.0
        best_idx = start
        for off in range(start, end, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            mask = cols < end
            pi, _ = chunk_mixture(
                p_ptr, q_ptr, r_ptr, row, cols, mask, V,
                m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha, KIND,
            )
            pi = tl.where(mask, pi, -1.0)
            chunk_best = tl.max(pi, 0)
            # Strictly greater: an earlier chunk keeps ties (lowest index wins).
            chunk_idx = tl.min(tl.where(pi == chunk_best, cols, 2147483647), 0)
            take = chunk_best > best
            best_idx = tl.where(take, chunk_idx, best_idx)
            best = tl.where(take, chunk_best, best)
        tl.store(best_val_ptr + n * S + j, best)
        tl.store(best_idx_ptr + n * S + j, best_idx)


@triton.jit
def draw_row(
    p_ptr, q_ptr, r_ptr, temp_ptr, param_ptr, stats_ptr, limit_ptr, best_val_ptr, best_idx_ptr,
    res_mass_ptr, u, b, n, use_residual,
    N, V, P, stride_b, stride_p, slice_len, S,
    KIND, SP: tl.constexpr, BLOCK: tl.constexpr,
):
    """The token of row ``n``: arg-max of π if greedy, else the inverse CDF at ``u`` of
    π, or of the residual max(π − q, 0) when ``use_residual`` (its slice masses at
    ``res_mass_ptr[b, :]``, falling back to π when they sum to 0)."""
    js = tl.arange(0, SP)
    in_range = js < S
    if tl.load(temp_ptr + n // P) == 0:
        vals = tl.load(best_val_ptr + n * S + js, mask=in_range, other=-2.0)
        idxs = tl.load(best_idx_ptr + n * S + js, mask=in_range, other=2147483647)
        token = tl.min(tl.where(vals == tl.max(vals, 0), idxs, 2147483647), 0)
    else:
        m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha = mixture_state(
            stats_ptr, limit_ptr, param_ptr, temp_ptr, n, P, N, S, SP, KIND
        )
        if KIND == IMPLICIT_REWARD:
            m_j = slice_stats(stats_ptr, M_Y, n, N, S, SP, float("-inf"))
            z_j = slice_stats(stats_ptr, Z_Y, n, N, S, SP, 0.0)
            safe = tl.where(m_y == float("-inf"), 0.0, m_y)
            slice_len_j = tl.minimum(V - js * slice_len, slice_len).to(tl.float32)
            uniform = tl.where(in_range, slice_len_j / V, 0.0)
            masses = tl.where(m_y == float("-inf"), uniform, z_j * tl.exp((m_j - safe) * inv_t) / z_y)
        else:
            kept = slice_stats(stats_ptr, S_K, n, N, S, SP, 0.0)
            m_j = slice_stats(stats_ptr, M_Q, n, N, S, SP, float("-inf"))
            z_j = slice_stats(stats_ptr, Z_Q, n, N, S, SP, 0.0)
            masses = kept + alpha * z_j * tl.exp((m_j - m_q) * inv_t) / z_q
        if use_residual:
            res = tl.load(res_mass_ptr + b * S + js, mask=in_range, other=0.0)
            residual = tl.sum(res, 0) > 0
            masses = tl.where(residual, res, masses)
        else:
            residual = use_residual
        prefix = tl.cumsum(masses, 0)
        target = u * tl.sum(masses, 0)
        last_positive = tl.max(tl.where(masses > 0, js, 0), 0)
        j_star = tl.min(tl.where(prefix > target, js, last_positive), 0)
        below = tl.sum(tl.where(js < j_star, masses, 0.0), 0)
        target -= below
        row = row_offset(n, P, stride_b, stride_p)
        start = j_star * slice_len
        end = tl.minimum(start + slice_len, V)
        running = 0.0
        token = 2147483647
        last = start
        for off in range(start, end, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            mask = cols < end
            pi, q = chunk_mixture(
                p_ptr, q_ptr, r_ptr, row, cols, mask, V,
                m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha, KIND,
            )
            w = tl.where(residual, tl.maximum(pi - q, 0.0), pi)
            w = tl.where(mask, w, 0.0)
            cdf = running + tl.cumsum(w, 0)
            # A parallel scan is monotone only up to rounding: a zero-weight lane may
            # sit 1 ulp above its left neighbour, so only positive weights may be taken.
            token = tl.minimum(token, tl.min(tl.where((cdf > target) & (w > 0), cols, 2147483647), 0))
            last = tl.maximum(last, tl.max(tl.where(w > 0, cols, 0), 0))
            running += tl.sum(w, 0)
        # u·Σ at the very top of the slice (rounding): the last token of positive weight.
        token = tl.where(token == 2147483647, last, token)
    return token
