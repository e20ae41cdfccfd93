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
    BLOCK, MAX_REGISTERS, NUM_WARPS, last_to_finish, layout, row_geometry, row_offset, row_value, row_values,
    slice_bounds,
)
from .mixture_math import chunk_logits3, chunk_mixture, mixture_of
from .passes import row_statistics
from .row_stats import row_state


@triton.jit(do_not_specialize=["rows", "positions", "slices", "draw_slices", "kind"])
def _accept_kernel(
    p_ptr,  # [B, P, V] p logits, P = γ+1; strides stride_b, stride_p, 1
    q_ptr,  # [B, P, V] q logits, p's dtype and strides
    ref_ptr,  # [B, P, V] ref logits, p's dtype and strides; None unless ImplicitReward
    draft_ptr,  # int [B, γ] draft tokens, contiguous
    temp_ptr,  # f32 [B] temperatures, or None: temp_value for every row
    temp_value,
    param_ptr,  # f32 [B] rule parameters, or None: param_value for every row
    param_value,
    stats_ptr,  # f32 [FIELDS, N, S] partials of passes 1–2, N = B·P
    limit_ptr,  # i64 [N] primal key limits (read for Primal only)
    best_val_ptr,  # f32 [N, S] max π of each slice (greedy rows; the arg-max launch)
    best_idx_ptr,  # i32 [N, S] its lowest index
    accept_u_ptr,  # f32 [B, γ] accept uniforms, contiguous, or None: Philox from seed_ptr, offset_ptr
    draw_u_ptr,  # f32 [B] uniforms of the last draw, contiguous, or None (Philox)
    seed_ptr,  # i64 [1] Philox seed (when the uniforms are None)
    offset_ptr,  # i64 [1] Philox offset (when the uniforms are None)
    tokens_ptr,  # i64 [B, P] tokens: out
    accepted_ptr,  # i64 [B] number of accepted drafts: out
    res_mass_ptr,  # f32 [B, DS] residual mass of each draw slice (scratch)
    pi_mass_ptr,  # f32 [B, DS] π mass of each draw slice (scratch)
    ticket_ptr,  # i32 [N] tickets, zeroed by pass 1 (the first B are this launch's)
    rows, vocab, positions, stride_b, stride_p, slices, draw_slice_len, draw_slices, kind,
    SLICES_POW2: tl.constexpr, DRAW_SLICES_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (b, j): row b's accept chain, then slice j's masses of π_i and of the
    residual max(π_i − q_i, 0) at the position i where the row draws (the rejection,
    or γ for the bonus; no residual there).  Every slice program runs the chain — γ
    point evaluations cost less than a launch — and slice 0 writes its result.  The
    slices are the DS ``draw_slices`` of a B-row layout, not the S ``slices`` of the
    B·(γ+1) rows of the statistics: only one position per row is read, so the grid
    stays full.

    Row b's last slice to finish (a ticket, zeroed by pass 1) then emits the row's
    last token, as ``sample``'s pass 2 does: drawn, or the arg-max of π_i on a greedy
    row (from the winners of the arg-max launch before this one)."""
    b = tl.program_id(0)
    j = tl.program_id(1)
    i = accept_chain(
        p_ptr, q_ptr, ref_ptr, draft_ptr, temp_ptr, temp_value, param_ptr, param_value,
        stats_ptr, limit_ptr, best_val_ptr, best_idx_ptr,
        accept_u_ptr, seed_ptr, offset_ptr, tokens_ptr, b, j == 0,
        rows, vocab, positions, stride_b, stride_p, slices, kind, SLICES_POW2,
    )
    tl.store(accepted_ptr + b, i.to(tl.int64), mask=j == 0)
    rejected = i < positions - 1
    res_total = 0.0
    pi_total = 0.0
    if row_value(temp_ptr, temp_value, b) != 0:  # every row the last token is drawn on
        n = b * positions + i
        state = row_state(
            stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value,
            n, positions, rows, slices, SLICES_POW2, kind, WITH_ALPHA=True,
        )
        row = row_offset(n, positions, stride_b, stride_p)
        start, end = slice_bounds(j, draw_slice_len, vocab)
        cols = start + tl.arange(0, BLOCK)
        next_p, next_q, next_r = chunk_logits3(p_ptr, q_ptr, ref_ptr, row, cols, cols < end, kind)
        for off in range(start, end, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            mask = cols < end
            xp, xq, xr = next_p, next_q, next_r
            next_p, next_q, next_r = chunk_logits3(p_ptr, q_ptr, ref_ptr, row, cols + BLOCK, cols + BLOCK < end, kind)
            pi, q = mixture_of(xp, xq, xr, mask, vocab, state, kind)
            pi = tl.where(mask, pi, 0.0)
            pi_total += tl.sum(pi, 0)
            res_total += tl.sum(tl.where(rejected, tl.maximum(pi - q, 0.0), 0.0), 0)
    tl.store(res_mass_ptr + b * draw_slices + j, res_total)
    tl.store(pi_mass_ptr + b * draw_slices + j, pi_total)
    # Slice 0's stores of the accepted drafts and −1s come before the ticket too.
    if last_to_finish(ticket_ptr, b, draw_slices):
        if row_value(temp_ptr, temp_value, b) == 0:
            token = greedy_token(best_val_ptr, best_idx_ptr, b * positions + i, slices, SLICES_POW2)
        else:
            token = drawn_last_token(
                p_ptr, q_ptr, ref_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr,
                res_mass_ptr, pi_mass_ptr, draw_u_ptr, seed_ptr, offset_ptr, b, i,
                rows, vocab, positions, stride_b, stride_p, slices, draw_slice_len, draw_slices,
                kind, SLICES_POW2, DRAW_SLICES_POW2, BLOCK,
            )
        tl.store(tokens_ptr + b * positions + i, token.to(tl.int64))


@triton.jit
def accept_chain(
    p_ptr, q_ptr, ref_ptr, draft_ptr, temp_ptr, temp_value, param_ptr, param_value,
    stats_ptr, limit_ptr, best_val_ptr, best_idx_ptr,
    accept_u_ptr, seed_ptr, offset_ptr, tokens_ptr, b, write,
    rows, vocab, positions, stride_b, stride_p, slices, kind, SLICES_POW2: tl.constexpr,
):
    """Accept x_i iff u_i q_i(x_i) < π_i(x_i) (greedy: x_i = argmax π_i), in order: the
    number accepted in row b; with ``write``, also its tokens (the accepted drafts, −1
    after them and at γ, where the draw will write).  Arguments as ``_accept_kernel``'s."""
    gamma = positions - 1
    greedy = row_value(temp_ptr, temp_value, b) == 0
    going = 1
    accepted = 0
    for i in range(0, gamma):
        n = b * positions + i
        draft = tl.load(draft_ptr + b * gamma + i)
        # Checked in the draft's own dtype: an int64 id beyond int32 must not wrap into the
        # vocabulary (check=False); -1 matches no column and no greedy token.
        x = tl.where((draft >= 0) & (draft < vocab), draft, -1).to(tl.int32)
        state = row_state(
            stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value,
            n, positions, rows, slices, SLICES_POW2, kind, WITH_ALPHA=True,
        )
        row = row_offset(n, positions, stride_b, stride_p)
        # A one-lane chunk at x: the same arithmetic as every other kernel.
        cols = x + tl.arange(0, 1)
        pi, q = chunk_mixture(p_ptr, q_ptr, ref_ptr, row, cols, (cols >= 0) & (cols < vocab), vocab, state, kind)
        pi_x = tl.sum(pi, 0)
        q_x = tl.sum(q, 0)
        if accept_u_ptr is None:
            coin = tl.rand(tl.load(seed_ptr), tl.load(offset_ptr) + b * positions + i)
        else:
            coin = tl.load(accept_u_ptr + b * gamma + i)
        ok = tl.where(greedy, x == greedy_token(best_val_ptr, best_idx_ptr, n, slices, SLICES_POW2), coin * q_x < pi_x)
        going = going & ok.to(tl.int32)
        accepted += going
        tl.store(tokens_ptr + b * positions + i, tl.where(going != 0, x.to(tl.int64), -1), mask=write)
    tl.store(tokens_ptr + b * positions + gamma, tl.full((), -1, tl.int64), mask=write)
    return accepted


@triton.jit
def drawn_last_token(
    p_ptr, q_ptr, ref_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr,
    res_mass_ptr, pi_mass_ptr, draw_u_ptr, seed_ptr, offset_ptr, b, i,
    rows, vocab, positions, stride_b, stride_p, slices, draw_slice_len, draw_slices,
    kind, SLICES_POW2: tl.constexpr, DRAW_SLICES_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Row b's token at position i, drawn from the residual after a rejection (from π_i
    if the residual is all zero) or from π_γ as the bonus (arguments as
    ``_accept_kernel``'s).  The slice masses are read from L2 (``.cg``): other SMs
    have just written them."""
    n = b * positions + i
    if draw_u_ptr is None:
        u = tl.rand(tl.load(seed_ptr), tl.load(offset_ptr) + b * positions + positions - 1)
    else:
        u = tl.load(draw_u_ptr + b)
    js = tl.arange(0, DRAW_SLICES_POW2)
    res = tl.load(res_mass_ptr + b * draw_slices + js, mask=js < draw_slices, other=0.0, cache_modifier=".cg")
    residual = (i < positions - 1) & (tl.sum(res, 0) > 0)
    pi_masses = tl.load(pi_mass_ptr + b * draw_slices + js, mask=js < draw_slices, other=0.0, cache_modifier=".cg")
    masses = tl.where(residual, res, pi_masses)
    state = row_state(
        stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value,
        n, positions, rows, slices, SLICES_POW2, kind, WITH_ALPHA=True,
    )
    return draw_row(
        p_ptr, q_ptr, ref_ptr, row_offset(n, positions, stride_b, stride_p), masses, residual, u, draw_slice_len,
        vocab, state, kind, DRAW_SLICES_POW2, BLOCK,
    )


def verify(
    kind: Kind, param, p, q, ref, draft, temperature, accept_uniforms, draw_uniforms, seed, offset, maybe_greedy=True
):
    """Tokens i64 [B, γ+1], num_accepted i64 [B], flags [B, γ+1]; no arg-max launch unless
    ``maybe_greedy``."""
    batch, positions, vocab = p.shape
    rows = batch * positions
    cut = layout(rows, positions, vocab, p.device)
    device = p.device
    tickets = torch.empty(rows, dtype=torch.int32, device=device)  # the accept launch's; pass 1 zeroes them
    stats, limits, flags = row_statistics(kind, param, p, q, ref, temperature, cut, tickets)
    best_val = torch.empty(rows, cut.slices, dtype=torch.float32, device=device)
    best_idx = torch.empty(rows, cut.slices, dtype=torch.int32, device=device)
    ref = ref if kind == Kind.IMPLICIT_REWARD else None
    values = row_values(param, temperature)
    if maybe_greedy:
        _argmax_kernel[(rows, cut.slices)](
            p_ptr=p, q_ptr=q, ref_ptr=ref, **values, stats_ptr=stats, limit_ptr=limits, best_val_ptr=best_val,
            best_idx_ptr=best_idx, ticket_ptr=None, out_ptr=None, **row_geometry(p, cut), kind=int(kind),
            SLICES_POW2=cut.slices_pow2, BLOCK=BLOCK, num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS,
        )
    tokens = torch.empty(batch, positions, dtype=torch.int64, device=device)
    accepted = torch.empty(batch, dtype=torch.int64, device=device)
    philox = accept_uniforms is None
    draw = layout(batch, 1, vocab, device)
    res_mass = torch.empty(batch, draw.slices, dtype=torch.float32, device=device)
    pi_mass = torch.empty(batch, draw.slices, dtype=torch.float32, device=device)
    _accept_kernel[(batch, draw.slices)](
        p_ptr=p, q_ptr=q, ref_ptr=ref, draft_ptr=draft.contiguous(), **values, stats_ptr=stats, limit_ptr=limits,
        best_val_ptr=best_val, best_idx_ptr=best_idx,
        accept_u_ptr=None if philox else accept_uniforms.contiguous(), draw_u_ptr=None if philox else draw_uniforms.contiguous(),
        seed_ptr=seed if philox else None, offset_ptr=offset if philox else None,
        tokens_ptr=tokens, accepted_ptr=accepted, res_mass_ptr=res_mass, pi_mass_ptr=pi_mass, ticket_ptr=tickets,
        rows=rows, vocab=vocab, positions=positions, stride_b=p.stride(0), stride_p=p.stride(1), slices=cut.slices,
        draw_slice_len=draw.slice_len, draw_slices=draw.slices, kind=int(kind),
        SLICES_POW2=cut.slices_pow2, DRAW_SLICES_POW2=draw.slices_pow2, BLOCK=BLOCK,
        num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS,
    )
    return tokens, accepted, flags.view(batch, positions)
