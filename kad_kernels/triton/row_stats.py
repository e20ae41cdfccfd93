"""Pass 1, the row statistics, and the row state folded from them (docs/design.md §4, pass 1).

Per-slice partial statistics go to a small ``[FIELDS, N, S]`` f32 buffer that
later kernels combine (a few dozen floats per row), never a ``[N, V]``
intermediate.  Pass 1 writes the max and Σexp of p, q (and of
y = log p + log q − log q_ref for ImplicitReward), Σ exp² of p (squared loss)
and the bad-logits bits; pass 2 (pass_two.py) adds S_d and S_kept.  Any program
folds a row's partials into the state it needs to evaluate π (``row_state``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .layout import chunk_rows, row_offset, row_value, slice_bounds
from .mixture_math import IMPLICIT_REWARD, LOG2E, PRIMAL, RowState, reward_logit


# Fields of the statistics buffer [FIELDS, N, S]: max and Σexp of p, Σexp² of p,
# max and Σexp of q and of y (ImplicitReward), S_d and S_kept, max of ref.
M_P, Z_P, S2_P, M_Q, Z_Q, M_Y, Z_Y, S_D, S_K, M_R = (tl.constexpr(f) for f in range(10))
FIELDS = 10


# Row and slice counts change with every batch: specializing on them only multiplies compiles.
@triton.jit(do_not_specialize=["rows", "positions", "slices"])
def _stats_kernel(
    p_ptr,  # [B, P, V] p logits (bf16, fp16 or fp32); strides stride_b, stride_p, 1
    q_ptr,  # [B, P, V] q logits, p's dtype and strides
    ref_ptr,  # [B, P, V] ref logits, p's dtype and strides; None unless ImplicitReward
    temp_ptr,  # f32 [B] temperatures, or None: temp_value for every row
    temp_value,
    stats_ptr,  # f32 [FIELDS, N, S] partials: out (pass 1's fields)
    flag_ptr,  # i32 [N, S] bad-logits bits of each slice: out
    ticket_ptr,  # i32 [N] tickets, zeroed here; None when no later launch takes one
    rows, vocab, positions, stride_b, stride_p, slice_len, slices,
    SUM_SQUARES: tl.constexpr, BLOCK: tl.constexpr, VEC: tl.constexpr,
):
    """Pass 1 for slice j of row n: online max/Σexp per tile row (``rows_update``), one
    reduction across the program at the end.  The bad-logits bits come from the
    running maxima, which keep NaN and +inf, rather than from a test per element:
    the loop is issue-bound, every instruction counts.  Zeroes the row's ticket
    (``ticket_ptr`` not None) on which a later launch counts its finished slices."""
    n = tl.program_id(0)
    j = tl.program_id(1)
    row = row_offset(n, positions, stride_b, stride_p)
    inv_t = inverse_temperature(temp_ptr, temp_value, n // positions)
    start, end = slice_bounds(j, slice_len, vocab)
    m_p = tl.full([BLOCK // VEC], float("-inf"), tl.float32)
    z_p = tl.zeros([BLOCK // VEC], tl.float32)
    s2_p = tl.zeros([BLOCK // VEC], tl.float32)
    m_q = tl.full([BLOCK // VEC], float("-inf"), tl.float32)
    z_q = tl.zeros([BLOCK // VEC], tl.float32)
    m_y = tl.full([BLOCK // VEC], float("-inf"), tl.float32)
    z_y = tl.zeros([BLOCK // VEC], tl.float32)
    m_r = tl.full([BLOCK // VEC], float("-inf"), tl.float32)
    # Pass 2 reads p again and q hardly at all: ask L2 to keep p rather than q.
    next_p = chunk_rows(p_ptr, row, start, end, BLOCK, VEC, "evict_last")
    next_q = chunk_rows(q_ptr, row, start, end, BLOCK, VEC, "evict_first")
    for off in range(start, end, BLOCK):
        # The next chunk's loads go out before this chunk's arithmetic, so each warp
        # keeps a chunk in flight while it computes (past the end they are masked off).
        xp = next_p.to(tl.float32)
        xq = next_q.to(tl.float32)
        next_p = chunk_rows(p_ptr, row, off + BLOCK, end, BLOCK, VEC, "evict_last")
        next_q = chunk_rows(q_ptr, row, off + BLOCK, end, BLOCK, VEC, "evict_first")
        m_p, z_p, s2_p = rows_update(m_p, z_p, s2_p, xp, inv_t, SUM_SQUARES)
        m_q, z_q, _ = rows_update(m_q, z_q, z_q, xq, inv_t, False)
        if ref_ptr is not None:
            xr = chunk_rows(ref_ptr, row, off, end, BLOCK, VEC, "evict_first").to(tl.float32)
            # ref enters y only where it is above −inf, so its NaNs need a maximum that keeps them.
            m_r = tl.maximum(m_r, tl.reduce(xr, 1, _max_keep_nan), propagate_nan=tl.PropagateNan.ALL)
            m_y, z_y, _ = rows_update(m_y, z_y, z_y, reward_logit(xp, xq, xr), inv_t, False)
    at = n * slices + j  # this slice's entry of each [N, S] field
    field_len = rows * slices
    bits = not_finite(m_p, z_p) | not_finite(m_q, z_q) << 2
    big, z, s2 = combine_partials(m_p, z_p, s2_p, inv_t)
    tl.store(stats_ptr + M_P * field_len + at, big)
    tl.store(stats_ptr + Z_P * field_len + at, z)
    tl.store(stats_ptr + S2_P * field_len + at, s2)
    big, z, _ = combine_partials(m_q, z_q, z_q, inv_t)
    tl.store(stats_ptr + M_Q * field_len + at, big)
    tl.store(stats_ptr + Z_Q * field_len + at, z)
    if ref_ptr is not None:
        # One reduction of m_r, kept NaN and all: a second use of the loop's m_r crashes
        # Triton's thread-locality pass on fp32 tiles (several rows per thread).
        big_r = tl.reduce(m_r, 0, _max_keep_nan)
        bits |= ((big_r != big_r) | (big_r == float("inf"))).to(tl.int32) << 4
        big, z, _ = combine_partials(m_y, z_y, z_y, inv_t)
        tl.store(stats_ptr + M_Y * field_len + at, big)
        tl.store(stats_ptr + Z_Y * field_len + at, z)
        tl.store(stats_ptr + M_R * field_len + at, big_r)
    tl.store(flag_ptr + at, bits)
    if ticket_ptr is not None:
        if j == 0:
            tl.store(ticket_ptr + n, 0)


@triton.jit
def rows_update(m, z, s2, x, inv_t, SUM_SQUARES: tl.constexpr):
    """Online Σexp((x − m)/T) (and Σexp(2(x − m)/T) if ``SUM_SQUARES``) of each tile
    row of ``x`` [R, VEC] (fp32) into the running (m, z, s2) [R]: the row's maximum
    first, so an element costs one exp and one add, the rescale one exp per row.
    −inf entries add nothing (exp(−inf) = 0, also while the maximum is still −inf);
    NaN and +inf entries make Σexp NaN, for ``not_finite``."""
    m_new = tl.maximum(m, tl.max(x, 1))
    safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    c = inv_t * LOG2E
    rescale = tl.exp2((m - safe) * c)
    e = tl.exp2((x - safe[:, None]) * c)
    z = z * rescale + tl.sum(e, 1)
    if SUM_SQUARES:
        s2 = s2 * (rescale * rescale) + tl.sum(e * e, 1)
    return m_new, z, s2


@triton.jit
def not_finite(m, z):
    """1 if a NaN or +inf logit reached the running (max, Σexp) of ``rows_update``,
    else 0: +inf is the max; NaN makes Σexp NaN (on the GPU the max drops it)."""
    return tl.max(((m != m) | (m == float("inf")) | (z != z)).to(tl.int32), 0)


@triton.jit
def _max_keep_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def inverse_temperature(temp_ptr, temp_value, b):
    """1/T, and T = 1 on greedy rows (T = 0): docs/design.md §1.2."""
    t = row_value(temp_ptr, temp_value, b)
    return tl.where(t > 0, 1.0 / tl.where(t > 0, t, 1.0), 1.0)


# ----------------------------------------------------------------------------- the row state
#
# Any program folds a row's per-slice partials itself (a few dozen floats): no launch
# writes a per-row state.


@triton.jit
def row_state(
    stats_ptr,  # f32 [FIELDS, N, S] partials of pass 1 (and of pass 2 for α)
    limit_ptr,  # i64 [N] primal key limits (read for Primal only)
    param_ptr,  # f32 [B] rule parameters, or None: param_value for every row
    param_value,
    temp_ptr,  # f32 [B] temperatures, or None: temp_value for every row
    temp_value,
    n, positions, rows, slices, SLICES_POW2: tl.constexpr, kind, WITH_ALPHA: tl.constexpr,
):
    """The ``RowState`` of row ``n``: all it takes to evaluate π on any chunk of it,
    α included if ``WITH_ALPHA`` (once pass 2 is done)."""
    inv_t = inverse_temperature(temp_ptr, temp_value, n // positions)
    m_p, z_p, sum_p2, m_q, z_q = row_softmax(stats_ptr, n, rows, slices, SLICES_POW2, inv_t)
    if kind == IMPLICIT_REWARD:  # pass 1 fills the y fields for this rule only
        m_y, z_y = combine_lse(stats_ptr, M_Y, Z_Y, n, rows, slices, SLICES_POW2, inv_t)
    else:
        m_y = tl.full((), float("-inf"), tl.float32)
        z_y = tl.full((), 0.0, tl.float32)
    param = row_value(param_ptr, param_value, n // positions)
    if kind == PRIMAL:
        key_limit = tl.load(limit_ptr + n)
    else:
        key_limit = tl.full((), 0, tl.int64)
    if WITH_ALPHA:
        alpha = mixture_alpha(stats_ptr, n, rows, slices, SLICES_POW2, kind)
    else:
        alpha = 0.0
    return RowState(m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, param, key_limit, inv_t, alpha)


@triton.jit
def slice_stats(stats_ptr, FIELD: tl.constexpr, n, rows, slices, SLICES_POW2: tl.constexpr, other):
    """Field ``FIELD`` of every slice of row ``n``, ``[SLICES_POW2]`` (``other`` past the
    last slice).  Read from L2 (``.cg``), not L1: a row's last program in ``sample``'s
    pass 2 reads partials that programs on other SMs have just written, which an L1
    line cached earlier (a neighbouring row's) could hide."""
    j = tl.arange(0, SLICES_POW2)
    return tl.load(stats_ptr + (FIELD * rows + n) * slices + j, mask=j < slices, other=other, cache_modifier=".cg")


@triton.jit
def combine_partials(m, z, s2, inv_t):
    """One (max, Σexp((x − max)/T), Σexp(2(x − max)/T)) from partial triples, each
    relative to its own max (a sum rescales by exp((m_i − max)/T), a square sum by
    its square): the rows of pass 1 into a slice's, and the slices into a row's."""
    big = tl.max(m, 0)
    scale = tl.exp((m - tl.where(big == float("-inf"), 0.0, big)) * inv_t)
    return big, tl.sum(z * scale, 0), tl.sum(s2 * scale * scale, 0)


@triton.jit
def combine_lse(
    stats_ptr, FIELD_MAX: tl.constexpr, FIELD_SUM: tl.constexpr, n, rows, slices, SLICES_POW2: tl.constexpr, inv_t
):
    """Row max of the raw logits and Σexp((x − max)/T) from the per-slice partials of
    fields (FIELD_MAX, FIELD_SUM)."""
    m = slice_stats(stats_ptr, FIELD_MAX, n, rows, slices, SLICES_POW2, float("-inf"))
    z = slice_stats(stats_ptr, FIELD_SUM, n, rows, slices, SLICES_POW2, 0.0)
    big, total, _ = combine_partials(m, z, z, inv_t)
    return big, total


@triton.jit
def row_sum(stats_ptr, FIELD: tl.constexpr, n, rows, slices, SLICES_POW2: tl.constexpr):
    return tl.sum(slice_stats(stats_ptr, FIELD, n, rows, slices, SLICES_POW2, 0.0), 0)


@triton.jit
def row_softmax(stats_ptr, n, rows, slices, SLICES_POW2: tl.constexpr, inv_t):
    """(max p-logit, Σexp p, ||p||², max q-logit, Σexp q) of row ``n``."""
    m_p, z_p, s2_p = combine_partials(
        slice_stats(stats_ptr, M_P, n, rows, slices, SLICES_POW2, float("-inf")),
        slice_stats(stats_ptr, Z_P, n, rows, slices, SLICES_POW2, 0.0),
        slice_stats(stats_ptr, S2_P, n, rows, slices, SLICES_POW2, 0.0),
        inv_t,
    )
    m_q, z_q = combine_lse(stats_ptr, M_Q, Z_Q, n, rows, slices, SLICES_POW2, inv_t)
    return m_p, z_p, s2_p / (z_p * z_p), m_q, z_q


@triton.jit
def mixture_alpha(stats_ptr, n, rows, slices, SLICES_POW2: tl.constexpr, kind):
    """α = S_d / (S_d + S_kept): exactly 0 if nothing is deferred, 1 if all is;
    ImplicitReward defers nothing."""
    if kind == IMPLICIT_REWARD:
        alpha = 0.0
    else:
        deferred_mass = row_sum(stats_ptr, S_D, n, rows, slices, SLICES_POW2)
        kept_mass = row_sum(stats_ptr, S_K, n, rows, slices, SLICES_POW2)
        alpha = deferred_mass / (deferred_mass + kept_mass)
    return alpha
