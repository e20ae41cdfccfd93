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
from .layout import (
    BLOCK, MAX_REGISTERS, NUM_WARPS, last_to_finish, layout, row_geometry, row_offset, row_value, row_values,
)
from .pass_two import slice_masses
from .passes import first_pass, pass_two_kwargs
from .row_stats import row_state


@triton.jit(do_not_specialize=["rows", "positions", "slices", "kind"])
def _mass_sample_kernel(
    # the arguments of pass 2 (pass_two._mass_kernel), then:
    p_ptr, q_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, slice_flag_ptr, flag_ptr,
    rows, vocab, positions, stride_b, stride_p, slice_len, slices, kind,
    ref_ptr,  # [B, V] ref logits, p's dtype and strides; None unless ImplicitReward
    ticket_ptr,  # i32 [B] tickets, zeroed by pass 1
    u_ptr,  # f32 [B] uniforms, contiguous, or None: Philox from seed_ptr, offset_ptr
    seed_ptr,  # i64 [1] Philox seed (when u_ptr is None)
    offset_ptr,  # i64 [1] Philox offset (when u_ptr is None)
    out_ptr,  # i64 [B] tokens: out (sampled rows)
    HAS_REF: tl.constexpr, NEEDS_Q: tl.constexpr, SLICES_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 2 for slice j of row n (``slice_masses``); the row's last slice to finish
    then draws its token, unless the row is greedy."""
    n = tl.program_id(0)
    j = tl.program_id(1)
    slice_masses(
        p_ptr, q_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, slice_flag_ptr, flag_ptr,
        n, j, rows, vocab, positions, stride_b, stride_p, slice_len, slices, kind, HAS_REF, NEEDS_Q, SLICES_POW2, BLOCK,
    )
    last = last_to_finish(ticket_ptr, n, slices)  # greedy rows count too: the arg-max launch goes on to 2S
    if last & (row_value(temp_ptr, temp_value, n) != 0):  # T < 0 or NaN (check=False): drawn at T = 1
        token = drawn_token(
            p_ptr, q_ptr, ref_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr,
            u_ptr, seed_ptr, offset_ptr, n, rows, vocab, stride_b, slice_len, slices, kind, SLICES_POW2, BLOCK,
        )
        tl.store(out_ptr + n, token.to(tl.int64))


@triton.jit
def drawn_token(
    p_ptr, q_ptr, ref_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr,
    u_ptr, seed_ptr, offset_ptr, b, rows, vocab, stride_b, slice_len, slices,
    kind, SLICES_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Row b's token by inverse CDF of π, once passes 1 and 2 are complete (arguments
    as ``_mass_sample_kernel``'s)."""
    if u_ptr is None:
        u = tl.rand(tl.load(seed_ptr), tl.load(offset_ptr) + b)  # counter layout of _random.py
    else:
        u = tl.load(u_ptr + b)
    state = row_state(
        stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value,
        b, 1, rows, slices, SLICES_POW2, kind, WITH_ALPHA=True,
    )
    masses = pi_slice_masses(stats_ptr, b, rows, slices, SLICES_POW2, vocab, slice_len, state, kind)
    return draw_row(
        p_ptr, q_ptr, ref_ptr, row_offset(b, 1, stride_b, 0), masses, False, u, slice_len, vocab, state,
        kind, SLICES_POW2, BLOCK,
    )


def sample(kind: Kind, param, p, q, ref, temperature, uniforms, seed, offset, maybe_greedy=True):
    """Tokens i64 [B] and bad-logits flags [B]; no arg-max launch unless ``maybe_greedy``."""
    batch, vocab = p.shape
    cut = layout(batch, 1, vocab, p.device)
    tokens = torch.empty(batch, dtype=torch.int64, device=p.device)
    tickets = torch.empty(batch, dtype=torch.int32, device=p.device)
    ref = ref if kind == Kind.IMPLICIT_REWARD else None
    philox = uniforms is None
    stats, limits, slice_flags, flags = first_pass(kind, param, p, q, ref, temperature, cut, tickets)
    _mass_sample_kernel[(batch, cut.slices)](
        **pass_two_kwargs(kind, param, p, q, temperature, stats, limits, slice_flags, flags, cut),
        ref_ptr=ref, ticket_ptr=tickets, u_ptr=None if philox else uniforms.contiguous(), seed_ptr=seed if philox else None,
        offset_ptr=offset if philox else None, out_ptr=tokens,
    )
    if maybe_greedy:
        best_val = torch.empty(batch, cut.slices, dtype=torch.float32, device=p.device)
        best_idx = torch.empty(batch, cut.slices, dtype=torch.int32, device=p.device)
        _argmax_kernel[(batch, cut.slices)](
            p_ptr=p, q_ptr=q, ref_ptr=ref, **row_values(param, temperature), stats_ptr=stats, limit_ptr=limits,
            best_val_ptr=best_val, best_idx_ptr=best_idx, ticket_ptr=tickets, out_ptr=tokens,
            **row_geometry(p, cut), kind=int(kind), SLICES_POW2=cut.slices_pow2, BLOCK=BLOCK,
            num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS,
        )
    return tokens, flags
