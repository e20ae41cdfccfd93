"""Launchers of the statistics passes shared by every operation (docs/design.md §4,
passes 1–2): pass 1, the primal select and pass 2 over ``[N, V]`` rows of
``[B, P, V]`` logits, and the buffers they leave for the operation's own launch.
"""

from __future__ import annotations

import torch

from .._backend import value_args
from ..rules import Kind
from .layout import BLOCK, HIST_BLOCK, MAX_REGISTERS, NUM_WARPS, Layout, row_geometry, row_values
from .pass_two import _mass_kernel
from .primal import DIGIT_BITS, _primal_hist_kernel, _primal_limit_kernel
from .row_stats import FIELDS, _stats_kernel


def row_statistics(kind: Kind, param, p, q, ref, temperature, cut: Layout, tickets=None):
    """Launch passes 1–2 (and the primal select) over the rows of ``cut``.  Returns the
    statistics buffer, the primal key limits [N] and the flags [N].  ``tickets`` as in
    ``first_pass``."""
    stats, limits, slice_flags, flags = first_pass(kind, param, p, q, ref, temperature, cut, tickets)
    _mass_kernel[(cut.rows, cut.slices)](
        **pass_two_kwargs(kind, param, p, q, temperature, stats, limits, slice_flags, flags, cut)
    )
    return stats, limits, flags


def first_pass(kind: Kind, param, p, q, ref, temperature, cut: Layout, tickets=None):
    """Pass 1 and the primal select: the statistics buffer, the primal key limits [N],
    the per-slice and the row flags [N] (pass 2 completes the latter).  ``tickets``
    i32 [N], if given, are zeroed for the launch that draws (sample.py, verify.py)."""
    device = p.device
    rows, slices = cut.rows, cut.slices
    stats = torch.empty(FIELDS, rows, slices, dtype=torch.float32, device=device)
    limits = torch.empty(rows, dtype=torch.int64, device=device)
    slice_flags = torch.empty(rows, slices, dtype=torch.int32, device=device)
    flags = torch.empty(rows, dtype=torch.int32, device=device)
    geometry = row_geometry(p, cut)
    values = row_values(param, temperature)
    temp_ptr, temp_value = value_args(temperature)
    grid = (rows, slices)
    _stats_kernel[grid](
        p_ptr=p, q_ptr=q, ref_ptr=ref if kind == Kind.IMPLICIT_REWARD else None, temp_ptr=temp_ptr,
        temp_value=temp_value, stats_ptr=stats, flag_ptr=slice_flags, ticket_ptr=tickets, **geometry,
        SUM_SQUARES=kind == Kind.SQUARED, BLOCK=BLOCK, VEC=16 // p.element_size(),
        num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS,
    )
    if kind == Kind.PRIMAL:
        key_bits = 8 * p.element_size()
        levels = key_bits // DIGIT_BITS.value
        hist = torch.empty(levels, rows, slices, 16, dtype=torch.float32, device=device)
        state = torch.empty(levels, rows, 3, dtype=torch.int64, device=device)  # before each level
        for level in range(levels):
            _primal_hist_kernel[grid](
                p_ptr=p, **values, stats_ptr=stats, hist_ptr=hist, state_ptr=state, level=level, **geometry,
                SLICES_POW2=cut.slices_pow2, KEY_BITS=key_bits, BLOCK=HIST_BLOCK, num_warps=NUM_WARPS,
            )
        _primal_limit_kernel[(rows,)](
            stats_ptr=stats, hist_ptr=hist, state_ptr=state, **values, limit_ptr=limits,
            rows=rows, positions=cut.positions, slices=slices, SLICES_POW2=cut.slices_pow2, KEY_BITS=key_bits,
        )
    return stats, limits, slice_flags, flags


def pass_two_kwargs(kind: Kind, param, p, q, temperature, stats, limits, slice_flags, flags, cut: Layout) -> dict:
    """The arguments of ``_mass_kernel``, which kernels fusing pass 2 extend."""
    return dict(
        p_ptr=p, q_ptr=q, **row_values(param, temperature), stats_ptr=stats, limit_ptr=limits,
        slice_flag_ptr=slice_flags, flag_ptr=flags, **row_geometry(p, cut), kind=int(kind),
        HAS_REF=kind == Kind.IMPLICIT_REWARD, NEEDS_Q=kind in (Kind.MAX_P_PLUS, Kind.MINUS_MAX_P_PLUS),
        SLICES_POW2=cut.slices_pow2, BLOCK=BLOCK, num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS,
    )
