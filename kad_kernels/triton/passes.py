"""Launchers of the statistics passes shared by every operation (docs/design.md §4,
passes 1–2): pass 1, the primal select and pass 2 over ``[N, V]`` rows of
``[B, P, V]`` logits, and the buffers they leave for the operation's own launch.
"""

from __future__ import annotations

import torch

from ..rules import Kind
from .layout import BLOCK, HIST_BLOCK, MAX_REGISTERS, NUM_WARPS, Layout, row_args, row_strides
from .pass_two import _mass_kernel
from .primal import DIGIT_BITS, _primal_hist_kernel, _primal_limit_kernel
from .row_stats import FIELDS, _stats_kernel
from .._backend import value_args


def row_statistics(kind: Kind, param, p, q, ref, temperature, lay: Layout, tickets=None):
    """Launch passes 1–2 (and the primal select) over ``[N, V]`` rows of ``[B, P, V]``
    logits.  Returns the statistics buffer, the primal key limits [N] and the flags [N].
    ``tickets`` as in ``first_pass``."""
    stats, limits, slice_flags, flags = first_pass(kind, param, p, q, ref, temperature, lay, tickets)
    args, kwargs = pass_two_args(kind, param, p, q, temperature, stats, limits, slice_flags, flags, lay)
    _mass_kernel[(lay.rows, lay.slices)](*args, **kwargs)
    return stats, limits, flags


def first_pass(kind: Kind, param, p, q, ref, temperature, lay: Layout, tickets=None):
    """Pass 1 and the primal select: the statistics buffer, the primal key limits [N],
    the per-slice and the row flags [N] (pass 2 completes the latter).  ``tickets``
    i32 [N], if given, are zeroed for the launch that draws (sample.py, verify.py)."""
    device = p.device
    N, S = lay.rows, lay.slices
    stats = torch.empty(FIELDS, N, S, dtype=torch.float32, device=device)
    limits = torch.empty(N, dtype=torch.int64, device=device)
    slice_flags = torch.empty(N, S, dtype=torch.int32, device=device)
    flags = torch.empty(N, dtype=torch.int32, device=device)
    strides = row_strides(p)
    grid = (N, S)
    common = dict(BLOCK=BLOCK, num_warps=NUM_WARPS)
    has_ref = kind == Kind.IMPLICIT_REWARD
    _stats_kernel[grid](
        p, q, ref if has_ref else p, *value_args(temperature), stats, slice_flags, tickets,
        N, lay.vocab, lay.positions, *strides, lay.slice_len, S,
        HAS_REF=has_ref, SUM_SQUARES=kind == Kind.SQUARED, VEC=16 // p.element_size(), maxnreg=MAX_REGISTERS,
        **common,
    )
    if kind == Kind.PRIMAL:
        key_bits = 8 * p.element_size()
        levels = key_bits // DIGIT_BITS.value
        hist = torch.empty(levels, N, S, 16, dtype=torch.float32, device=device)
        state = torch.empty(levels, N, 3, dtype=torch.int64, device=device)  # before each level
        for level in range(levels):
            _primal_hist_kernel[grid](
                p, *row_args(param, temperature), stats, hist, state,
                level, N, lay.vocab, lay.positions, *strides, lay.slice_len, S,
                SP=lay.slices_pow2, KEY_BITS=key_bits, **dict(common, BLOCK=HIST_BLOCK),
            )
        _primal_limit_kernel[(N,)](
            stats, hist, state, *row_args(param, temperature), limits, N, lay.positions, S,
            SP=lay.slices_pow2, KEY_BITS=key_bits,
        )
    return stats, limits, slice_flags, flags


def pass_two_args(kind: Kind, param, p, q, temperature, stats, limits, slice_flags, flags, lay: Layout):
    """``(args, kwargs)`` of ``_mass_kernel``, which kernels fusing pass 2 extend."""
    strides = row_strides(p)
    args = (
        p, q, *row_args(param, temperature), stats, limits, slice_flags, flags,
        lay.rows, lay.vocab, lay.positions, *strides, lay.slice_len, lay.slices,
    )
    kwargs = dict(
        KIND=int(kind), HAS_REF=kind == Kind.IMPLICIT_REWARD, NEEDS_Q=kind in (Kind.MAX_P_PLUS, Kind.MINUS_MAX_P_PLUS),
        SP=lay.slices_pow2, BLOCK=BLOCK, num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS,
    )
    return args, kwargs
