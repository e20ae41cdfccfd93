"""``verify``: speculative verification with draft q and target π (docs/design.md §2.3).

Logits ``[B, γ+1, V]`` are ``N = B·(γ+1)`` mixture rows for the statistics
passes.  Then one launch runs the accept chain on the draft tokens (point
evaluations of π and q, no pass over V) and a pass over the one position each
row draws at, for the slice masses of π and, after a rejection, of the residual
``max(π − q, 0)`` — positive only on kept tokens, since
``π − q = p(1 − d) + (α − 1) q``; in that same launch the row's last slice to
finish emits the last token (the shared draw of draw.py, or the arg-max of π on a
greedy row, found by an arg-max launch before it when a row may be greedy).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rules import Kind
from .draw import _argmax_kernel, draw_row, greedy_token
from .layout import (
    BLOCK, MAX_REGISTERS, NUM_WARPS, last_to_finish, layout, row_args, row_offset, row_value, slice_bounds,
)
from .mixture_math import chunk_logits3, chunk_mixture, mixture_of
from .passes import row_statistics
from .row_stats import mixture_state


@triton.jit
def accept_chain(
    p_ptr, q_ptr, r_ptr, draft_ptr, temp_ptr, temp_value, param_ptr, param_value,
    stats_ptr, limit_ptr, best_val_ptr, best_idx_ptr,
    a_ptr, seed_ptr, offset_ptr, tokens_ptr, b, write,
    N, V, P, stride_b, stride_p, S,
    PHILOX: tl.constexpr, KIND, SP: tl.constexpr,
):
    """Accept x_i iff a_i q_i(x_i) < π_i(x_i) (greedy: x_i = argmax π_i), in order: the
    number accepted in row b; with ``write``, also its tokens (the accepted drafts, −1
    after them and at γ, where the draw will write)."""
    gamma = P - 1
    greedy = row_value(temp_ptr, temp_value, b) == 0
    going = 1
    accepted = 0
    for i in range(0, gamma):
        n = b * P + i
        x = tl.load(draft_ptr + b * gamma + i).to(tl.int32)
        m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha = mixture_state(
            stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, n, P, N, S, SP, KIND
        )
        row = row_offset(n, P, stride_b, stride_p)
        # A one-lane chunk at x: the same arithmetic as every other kernel.
        cols = x + tl.arange(0, 1)
        pi, q = chunk_mixture(
            p_ptr, q_ptr, r_ptr, row, cols, (cols >= 0) & (cols < V), V,
            m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha, KIND,
        )
        pi_x = tl.sum(pi, 0)
        q_x = tl.sum(q, 0)
        if PHILOX:
            coin = tl.rand(tl.load(seed_ptr), tl.load(offset_ptr) + b * P + i)
        else:
            coin = tl.load(a_ptr + b * gamma + i)
        ok = tl.where(greedy, x == greedy_token(best_val_ptr, best_idx_ptr, n, S, SP), coin * q_x < pi_x)
        going = going & ok.to(tl.int32)
        accepted += going
        tl.store(tokens_ptr + b * P + i, tl.where(going != 0, x.to(tl.int64), -1), mask=write)
    tl.store(tokens_ptr + b * P + gamma, tl.full((), -1, tl.int64), mask=write)
    return accepted


@triton.jit(do_not_specialize=['N', 'P', 'S', 'DS', 'KIND'])
def _accept_kernel(
    p_ptr, q_ptr, r_ptr, draft_ptr, temp_ptr, temp_value, param_ptr, param_value,
    stats_ptr, limit_ptr, best_val_ptr, best_idx_ptr,
    a_ptr, seed_ptr, offset_ptr, tokens_ptr, accepted_ptr, res_mass_ptr, pi_mass_ptr,
    N, V, P, stride_b, stride_p, S, draw_slice_len, DS,
    s_ptr, ticket_ptr,
    PHILOX: tl.constexpr, KIND, SP: tl.constexpr, DSP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (b, j): row b's accept chain, then slice j's masses of π_i and of the
    residual max(π_i − q_i, 0) at the position i where the row draws (the rejection,
    or γ for the bonus; no residual there).  Every slice program runs the chain — γ
    point evaluations cost less than a launch — and slice 0 writes its result.  The
    slices are those of a B-row layout, not of the B·(γ+1) rows of the statistics:
    only one position per row is read, so the grid stays full.

    Row b's last slice to finish (a ticket, zeroed by pass 1) then emits the row's
    last token, as ``sample``'s pass 2 does: drawn, or the arg-max of π_i on a greedy
    row (from the winners of the arg-max launch before this one)."""
    b = tl.program_id(0)
    j = tl.program_id(1)
    i = accept_chain(
        p_ptr, q_ptr, r_ptr, draft_ptr, temp_ptr, temp_value, param_ptr, param_value,
        stats_ptr, limit_ptr, best_val_ptr, best_idx_ptr,
        a_ptr, seed_ptr, offset_ptr, tokens_ptr, b, j == 0,
        N, V, P, stride_b, stride_p, S, PHILOX, KIND, SP,
    )
    tl.store(accepted_ptr + b, i.to(tl.int64), mask=j == 0)
    rejected = i < P - 1
    res_total = 0.0
    pi_total = 0.0
    if row_value(temp_ptr, temp_value, b) > 0:
        n = b * P + i
        m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha = mixture_state(
            stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, n, P, N, S, SP, KIND
        )
        row = row_offset(n, P, stride_b, stride_p)
        start, end = slice_bounds(j, draw_slice_len, V)
        cols = start + tl.arange(0, BLOCK)
        next_p, next_q, next_r = chunk_logits3(p_ptr, q_ptr, r_ptr, row, cols, cols < end, KIND)
        for off in range(start, end, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            mask = cols < end
            xp, xq, xr = next_p, next_q, next_r
            next_p, next_q, next_r = chunk_logits3(p_ptr, q_ptr, r_ptr, row, cols + BLOCK, cols + BLOCK < end, KIND)
            pi, q = mixture_of(
                xp, xq, xr, mask, V, m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha, KIND,
            )
            pi = tl.where(mask, pi, 0.0)
            pi_total += tl.sum(pi, 0)
            res_total += tl.sum(tl.where(rejected, tl.maximum(pi - q, 0.0), 0.0), 0)
    tl.store(res_mass_ptr + b * DS + j, res_total)
    tl.store(pi_mass_ptr + b * DS + j, pi_total)
    # Slice 0's stores of the accepted drafts and −1s come before the ticket too.
    if last_to_finish(ticket_ptr, b, DS):
        if row_value(temp_ptr, temp_value, b) == 0:
            token = greedy_token(best_val_ptr, best_idx_ptr, b * P + i, S, SP)
        else:
            token = drawn_last_token(
                p_ptr, q_ptr, r_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr,
                res_mass_ptr, pi_mass_ptr, s_ptr, seed_ptr, offset_ptr, b, i,
                N, V, P, stride_b, stride_p, S, draw_slice_len, DS, PHILOX, KIND, SP, DSP, BLOCK,
            )
        tl.store(tokens_ptr + b * P + i, token.to(tl.int64))


@triton.jit
def drawn_last_token(
    p_ptr, q_ptr, r_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr,
    res_mass_ptr, pi_mass_ptr, s_ptr, seed_ptr, offset_ptr, b, i,
    N, V, P, stride_b, stride_p, S, draw_slice_len, DS,
    PHILOX: tl.constexpr, KIND, SP: tl.constexpr, DSP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Row b's token at position i, drawn from the residual after a rejection (from π_i
    if the residual is all zero) or from π_γ as the bonus.  The slice masses are read
    from L2 (``.cg``): other SMs have just written them."""
    n = b * P + i
    if PHILOX:
        u = tl.rand(tl.load(seed_ptr), tl.load(offset_ptr) + b * P + P - 1)
    else:
        u = tl.load(s_ptr + b)
    js = tl.arange(0, DSP)
    res = tl.load(res_mass_ptr + b * DS + js, mask=js < DS, other=0.0, cache_modifier=".cg")
    residual = (i < P - 1) & (tl.sum(res, 0) > 0)
    pi_masses = tl.load(pi_mass_ptr + b * DS + js, mask=js < DS, other=0.0, cache_modifier=".cg")
    masses = tl.where(residual, res, pi_masses)
    m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha = mixture_state(
        stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, n, P, N, S, SP, KIND
    )
    return draw_row(
        p_ptr, q_ptr, r_ptr, row_offset(n, P, stride_b, stride_p), masses, residual, u, draw_slice_len, V,
        m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha, KIND, DSP, BLOCK,
    )


def verify(
    kind: Kind, param, p, q, ref, draft, temperature, accept_uniforms, draw_uniforms, seed, offset, maybe_greedy=True
):
    """Tokens i64 [B, γ+1], num_accepted i64 [B], flags [B, γ+1]; no arg-max launch unless
    ``maybe_greedy``."""
    batch, positions, vocab = p.shape
    rows = batch * positions
    lay = layout(rows, positions, vocab, p.device)
    device = p.device
    tickets = torch.empty(rows, dtype=torch.int32, device=device)  # the accept launch's; pass 1 zeroes them
    stats, limits, flags = row_statistics(kind, param, p, q, ref, temperature, lay, tickets)
    best_val = torch.empty(rows, lay.slices, dtype=torch.float32, device=device)
    best_idx = torch.empty(rows, lay.slices, dtype=torch.int32, device=device)
    r = ref if ref is not None else p
    geometry = (rows, vocab, positions, p.stride(0), p.stride(1), lay.slice_len, lay.slices)
    common = dict(KIND=int(kind), SP=lay.slices_pow2, BLOCK=BLOCK, num_warps=NUM_WARPS)
    if maybe_greedy:
        _argmax_kernel[(rows, lay.slices)](
            p, q, r, *row_args(param, temperature), stats, limits, best_val, best_idx, *geometry, None, None,
            maxnreg=MAX_REGISTERS, **common,
        )
    tokens = torch.empty(batch, positions, dtype=torch.int64, device=device)
    accepted = torch.empty(batch, dtype=torch.int64, device=device)
    philox = accept_uniforms is None
    randomness = (seed, offset) if philox else (flags, flags)
    draw = layout(batch, 1, vocab, device)
    res_mass = torch.empty(batch, draw.slices, dtype=torch.float32, device=device)
    pi_mass = torch.empty(batch, draw.slices, dtype=torch.float32, device=device)
    _accept_kernel[(batch, draw.slices)](
        p, q, r, draft.contiguous(), *row_args(param, temperature), stats, limits, best_val, best_idx,
        stats if philox else accept_uniforms.contiguous(), *randomness, tokens, accepted, res_mass, pi_mass,
        rows, vocab, positions, p.stride(0), p.stride(1), lay.slices, draw.slice_len, draw.slices,
        stats if philox else draw_uniforms, tickets,
        PHILOX=philox, DSP=draw.slices_pow2, maxnreg=MAX_REGISTERS, **common,
    )
    return tokens, accepted, flags.view(batch, positions)
