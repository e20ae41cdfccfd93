"""The one draw per row shared by ``sample`` and ``verify`` (docs/design.md §4, pass 3).

Greedy rows take the arg-max of π (per-slice arg-max, then the lowest index
among the slice winners).  Sampled rows draw by inverse CDF in vocabulary
order: the slice masses are combined into a prefix, the slice holding
``u · Σ`` is found, then in it the chunk, and only that chunk is scanned.  Slice
masses of π come from the statistics alone (``Σ_slice π = S_kept + α Σ_slice q``);
``verify`` computes the masses of the distribution each row draws from — π or
the residual ``max(π − q, 0)`` — in a pass of its own (verify.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .layout import last_to_finish, row_offset, row_value, slice_bounds
from .mixture_math import IMPLICIT_REWARD, chunk_logits3, mixture_of
from .row_stats import M_Q, M_Y, S_K, Z_Q, Z_Y, row_state, slice_stats


# Chunks per step of the draw's walk through a slice: a step's loads are all in flight
# at once, and the walk is a chain of dependent steps, so fewer, wider steps shorten it
# (4: B = 64's ~9-chunk slices in 1-3 steps; a step's 16-byte loads, 8 of them for p
# and q, fit the 64-register cap of the passes the draws run in, without spills).
WALK = tl.constexpr(4)


@triton.jit(do_not_specialize=["rows", "positions", "slices", "kind"])
def _argmax_kernel(
    p_ptr,  # [B, P, V] p logits; strides stride_b, stride_p, 1
    q_ptr,  # [B, P, V] q logits, p's dtype and strides
    ref_ptr,  # [B, P, V] ref logits, p's dtype and strides; None unless ImplicitReward
    temp_ptr,  # f32 [B] temperatures, or None: temp_value for every row
    temp_value,
    param_ptr,  # f32 [B] rule parameters, or None: param_value for every row
    param_value,
    stats_ptr,  # f32 [FIELDS, N, S] partials of passes 1–2
    limit_ptr,  # i64 [N] primal key limits (read for Primal only)
    best_val_ptr,  # f32 [N, S] max π of each slice: out (greedy rows)
    best_idx_ptr,  # i32 [N, S] its lowest index: out (greedy rows)
    ticket_ptr,  # i32 [N] tickets (sample), or None (verify: its accept launch folds the winners)
    out_ptr,  # i64 [B] tokens: out (greedy rows, with ticket_ptr)
    rows, vocab, positions, stride_b, stride_p, slice_len, slices, kind,
    SLICES_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per-slice arg-max of π on greedy rows (T = 0); sampled rows return at once.
    With ``ticket_ptr`` (``sample``), a greedy row's last slice to finish also folds
    the winners into its token ``out_ptr[n]``: the ticket stood at S after pass 2,
    so that slice sees 2S − 1."""
    n = tl.program_id(0)
    j = tl.program_id(1)
    if row_value(temp_ptr, temp_value, n // positions) == 0:
        state = row_state(
            stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value,
            n, positions, rows, slices, SLICES_POW2, kind, WITH_ALPHA=True,
        )
        row = row_offset(n, positions, stride_b, stride_p)
        start, end = slice_bounds(j, slice_len, vocab)
        best = -1.0
        best_idx = start
        cols = start + tl.arange(0, BLOCK)
        next_p, next_q, next_r = chunk_logits3(p_ptr, q_ptr, ref_ptr, row, cols, cols < end, kind)
        for off in range(start, end, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            mask = cols < end
            xp, xq, xr = next_p, next_q, next_r
            # The next chunk's loads go out before this chunk's arithmetic (as in pass 1).
            next_p, next_q, next_r = chunk_logits3(p_ptr, q_ptr, ref_ptr, row, cols + BLOCK, cols + BLOCK < end, kind)
            pi, _ = mixture_of(xp, xq, xr, mask, vocab, state, kind)
            pi = tl.where(mask, pi, -1.0)
            chunk_best = tl.max(pi, 0)
            # Strictly greater: an earlier chunk keeps ties (lowest index wins).
            chunk_idx = tl.min(tl.where(pi == chunk_best, cols, 2147483647), 0)
            take = chunk_best > best
            best_idx = tl.where(take, chunk_idx, best_idx)
            best = tl.where(take, chunk_best, best)
        tl.store(best_val_ptr + n * slices + j, best)
        tl.store(best_idx_ptr + n * slices + j, best_idx)
        if ticket_ptr is not None:
            if last_to_finish(ticket_ptr, n, 2 * slices):
                tl.store(out_ptr + n, greedy_token(best_val_ptr, best_idx_ptr, n, slices, SLICES_POW2).to(tl.int64))


@triton.jit
def greedy_token(best_val_ptr, best_idx_ptr, n, slices, SLICES_POW2: tl.constexpr):
    """arg-max of π on row ``n`` from the per-slice winners (ties: lowest index), read
    from L2 (``.cg``: other SMs may have just written them, as for ``slice_stats``)."""
    js = tl.arange(0, SLICES_POW2)
    vals = tl.load(best_val_ptr + n * slices + js, mask=js < slices, other=-2.0, cache_modifier=".cg")
    idxs = tl.load(best_idx_ptr + n * slices + js, mask=js < slices, other=2147483647, cache_modifier=".cg")
    return tl.min(tl.where(vals == tl.max(vals, 0), idxs, 2147483647), 0)


@triton.jit
def pi_slice_masses(stats_ptr, n, rows, slices, SLICES_POW2: tl.constexpr, vocab, slice_len, state, kind):
    """Σ π over each slice of row ``n``, ``[SLICES_POW2]``, from the statistics alone:
    ``S_kept + α Σ_slice q`` (ImplicitReward: the slice's share of Σ exp(y))."""
    js = tl.arange(0, SLICES_POW2)
    in_range = js < slices
    if kind == IMPLICIT_REWARD:
        m_y = state.m_y
        m_j = slice_stats(stats_ptr, M_Y, n, rows, slices, SLICES_POW2, float("-inf"))
        z_j = slice_stats(stats_ptr, Z_Y, n, rows, slices, SLICES_POW2, 0.0)
        safe = tl.where(m_y == float("-inf"), 0.0, m_y)
        slice_len_j = tl.minimum(vocab - js * slice_len, slice_len).to(tl.float32)
        uniform = tl.where(in_range, slice_len_j / vocab, 0.0)
        masses = tl.where(m_y == float("-inf"), uniform, z_j * tl.exp((m_j - safe) * state.inv_t) / state.z_y)
    else:
        kept = slice_stats(stats_ptr, S_K, n, rows, slices, SLICES_POW2, 0.0)
        m_j = slice_stats(stats_ptr, M_Q, n, rows, slices, SLICES_POW2, float("-inf"))
        z_j = slice_stats(stats_ptr, Z_Q, n, rows, slices, SLICES_POW2, 0.0)
        masses = kept + state.alpha * z_j * tl.exp((m_j - state.m_q) * state.inv_t) / state.z_q
    return masses


@triton.jit
def draw_weights(xp, xq, xr, mask, vocab, residual, state, kind):
    """Draw weights of a chunk from its logits: π, or max(π − q, 0) if ``residual``; 0 past the end."""
    pi, q = mixture_of(xp, xq, xr, mask, vocab, state, kind)
    w = tl.where(residual, tl.maximum(pi - q, 0.0), pi)
    return tl.where(mask, w, 0.0)


@triton.jit
def draw_row(
    p_ptr, q_ptr, ref_ptr, row, masses, residual, u, slice_len, vocab, state,
    kind, SLICES_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """The inverse CDF at ``u`` of a row's weights — π, or the residual
    max(π − q, 0) when ``residual`` — given their ``masses`` over the row's
    slices of ``slice_len`` (``[SLICES_POW2]``, zero past the last).  ``row`` is the
    row's element offset in the logits (``p_ptr``, ``q_ptr`` and ``ref_ptr`` as
    ``_argmax_kernel``'s), ``state`` its ``RowState`` with α.

    Three steps, so the serial part is short: the slice holding u·Σ from
    ``masses``; in it, chunk sums until the running mass passes the target (a
    sum per chunk, ``WALK`` chunks a step, no scan, stopping early); the prefix
    scan of that chunk only."""
    js = tl.arange(0, SLICES_POW2)
    prefix = tl.cumsum(masses, 0)
    target = u * tl.sum(masses, 0)
    last_positive = tl.max(tl.where(masses > 0, js, 0), 0)
    j_star = tl.min(tl.where(prefix > target, js, last_positive), 0)
    target -= tl.sum(tl.where(js < j_star, masses, 0.0), 0)
    start = j_star * slice_len
    end = tl.minimum(start + slice_len, vocab)
    # Chunk sums, WALK chunks per step as one [WALK, BLOCK] tile: stop at the first
    # chunk whose mass carries the running sum past the target; if rounding leaves
    # u·Σ above every chunk, the last chunk of positive mass (its last positive token
    # is then drawn, below).
    ks = tl.arange(0, WALK)
    tile = ks[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    off = start
    running = 0.0
    # A one-chunk slice (small batches) is that chunk: straight to its scan.
    found = (end - start <= BLOCK).to(tl.int32)
    last_off = start
    last_running = 0.0
    while (off < end) & (found == 0):
        cols = off + tile
        xp, xq, xr = chunk_logits3(p_ptr, q_ptr, ref_ptr, row, cols, cols < end, kind)
        w = draw_weights(xp, xq, xr, cols < end, vocab, residual, state, kind)
        mass = tl.sum(w, 1)  # [WALK]: one per chunk
        before = running + tl.cumsum(mass, 0) - mass  # running sum ahead of each chunk
        k = tl.min(tl.where((before + mass > target) & (mass > 0), ks, WALK), 0)
        found = (k < WALK).to(tl.int32)
        k_last = tl.max(tl.where(mass > 0, ks, -1), 0)
        last_off = tl.where(k_last >= 0, off + k_last * BLOCK, last_off)
        last_running = tl.where(k_last >= 0, tl.sum(tl.where(ks == k_last, before, 0.0), 0), last_running)
        running = tl.where(found != 0, tl.sum(tl.where(ks == k, before, 0.0), 0), running + tl.sum(mass, 0))
        off = tl.where(found != 0, off + k * BLOCK, off + WALK * BLOCK)
    off = tl.where(found != 0, off, last_off)
    running = tl.where(found != 0, running, last_running)
    cols = off + tl.arange(0, BLOCK)
    xp, xq, xr = chunk_logits3(p_ptr, q_ptr, ref_ptr, row, cols, cols < end, kind)
    w = draw_weights(xp, xq, xr, cols < end, vocab, residual, state, kind)
    cdf = running + tl.cumsum(w, 0)
    # A parallel scan is monotone only up to rounding: a zero-weight lane may sit
    # 1 ulp above its left neighbour, so only positive weights may be taken.
    token = tl.min(tl.where((cdf > target) & (w > 0), cols, 2147483647), 0)
    last = tl.max(tl.where(w > 0, cols, off), 0)
    return tl.where(token == 2147483647, last, token)
