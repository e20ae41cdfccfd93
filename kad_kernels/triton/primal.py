"""The primal threshold by radix select, without a sort (docs/design.md §1.4, §4 pass 2).

Primal defers the tokens of cumulative mass C_v <= budget, the least probable
first.  The threshold is found over a key in the order of the logits
(``mixture_math.rank_key``): a histogram launch per 4-bit digit, 4 for
bf16/fp16 logits, 8 for fp32, each narrowing the key range that holds the
budget's mass; then one program per row turns the last range into the
exclusive key limit that pass 2 and every later kernel test d_v against.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .layout import row_offset, row_value, slice_bounds
from .mixture_math import LOG2E, rank_key
from .row_stats import M_P, Z_P, combine_lse, inverse_temperature


# Radix select of the primal threshold: 4-bit digits over the logits' own bits.
DIGIT_BITS = tl.constexpr(4)


@triton.jit(do_not_specialize=["rows", "positions", "slices", "level"])
def _primal_hist_kernel(
    p_ptr,  # [B, P, V] p logits; strides stride_b, stride_p, 1
    temp_ptr,  # f32 [B] temperatures, or None: temp_value for every row
    temp_value,
    param_ptr,  # f32 [B] budgets, or None: param_value for every row
    param_value,
    stats_ptr,  # f32 [FIELDS, N, S] partials of pass 1
    hist_ptr,  # f32 [levels, N, S, 16] digit masses of each level: out (this level's)
    state_ptr,  # i64 [levels, N, 3] radix state before each level: out (this level's, slice 0)
    level, rows, vocab, positions, stride_b, stride_p, slice_len, slices,
    SLICES_POW2: tl.constexpr, KEY_BITS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Radix level ``level``: mass histogram (in units of exp(x − max)) of the next
    4-bit digit of ``rank_key``, over the keys that share the prefix found so far."""
    n = tl.program_id(0)
    j = tl.program_id(1)
    inv_t = inverse_temperature(temp_ptr, temp_value, n // positions)
    m_p, z_p = combine_lse(stats_ptr, M_P, Z_P, n, rows, slices, SLICES_POW2, inv_t)
    budget = row_value(param_ptr, param_value, n // positions)
    if level == 0:
        prefix = tl.full((), 0, tl.int64)
        below = tl.full((), 0.0, tl.float32)
        done = tl.full((), 0, tl.int1)
    else:
        prefix, below, done = radix_state(
            state_ptr, hist_ptr, level, budget * z_p, n, rows, slices, SLICES_POW2, KEY_BITS
        )
    if j == 0:
        keep_radix_state(state_ptr, level, n, rows, prefix, below, done)
    row = row_offset(n, positions, stride_b, stride_p)
    shift = KEY_BITS - DIGIT_BITS - DIGIT_BITS * level
    digits = tl.arange(0, 16)
    # Digits along the first axis: each thread holds all 16 of its elements' digits,
    # so an element's exp and key are computed once, not once per digit lane.
    hist = tl.zeros([16, BLOCK], tl.float32)
    start, end = slice_bounds(j, slice_len, vocab)
    if done == 0:
        # Few bytes per thread and chunk (the histogram is register-hungry): keep
        # several chunks in flight through Triton's pipeliner (cp.async).
        for off in tl.range(start, end, BLOCK, num_stages=4):
            cols = off + tl.arange(0, BLOCK)
            mask = cols < end
            x = tl.load(p_ptr + row + cols, mask=mask, other=float("-inf"))
            key = rank_key(x)
            high = (prefix >> (shift + DIGIT_BITS)).to(key.dtype)
            inside = mask & ((key >> (shift + DIGIT_BITS)) == high)
            e = tl.where(inside, tl.exp2((x.to(tl.float32) - m_p) * (inv_t * LOG2E)), 0.0)
            digit = (key >> shift) & 15
            hist += tl.where(digit[None, :] == digits[:, None], e[None, :], 0.0)
    tl.store(hist_ptr + ((level * rows + n) * slices + j) * 16 + digits, tl.sum(hist, 1))


@triton.jit(do_not_specialize=["rows", "positions", "slices"])
def _primal_limit_kernel(
    stats_ptr,  # f32 [FIELDS, N, S] partials of pass 1
    hist_ptr,  # f32 [levels, N, S, 16] digit masses of each level
    state_ptr,  # i64 [levels, N, 3] radix state before each level
    temp_ptr,  # f32 [B] temperatures, or None: temp_value for every row
    temp_value,
    param_ptr,  # f32 [B] budgets, or None: param_value for every row
    param_value,
    limit_ptr,  # i64 [N] key limits: out
    rows, positions, slices,
    SLICES_POW2: tl.constexpr, KEY_BITS: tl.constexpr,
):
    """After the last radix level: the exclusive key threshold of row n, d_v = key_v < limit
    (every later kernel reads it instead of the radix state)."""
    n = tl.program_id(0)
    inv_t = inverse_temperature(temp_ptr, temp_value, n // positions)
    _, z_p = combine_lse(stats_ptr, M_P, Z_P, n, rows, slices, SLICES_POW2, inv_t)
    budget = row_value(param_ptr, param_value, n // positions)
    prefix, below, done = radix_state(
        state_ptr, hist_ptr, KEY_BITS // DIGIT_BITS, budget * z_p, n, rows, slices, SLICES_POW2, KEY_BITS
    )
    tl.store(limit_ptr + n, tl.where(budget >= 1.0, tl.full((), 1 << 40, tl.int64), prefix))


@triton.jit
def radix_state(
    state_ptr, hist_ptr, level, budget_mass, n, rows, slices, SLICES_POW2: tl.constexpr, KEY_BITS: tl.constexpr
):
    """(prefix, below, done) of row n before radix level ``level`` (>= 1): the state
    before the previous level, kept by that level's first slice, one step on.  One
    step per launch: replaying every earlier level's histogram would make each
    level's programs wait on a chain as long as the level number."""
    slot = state_ptr + ((level - 1) * rows + n) * 3
    prefix = tl.load(slot)
    below = tl.load(slot + 1).to(tl.int32).to(tl.float32, bitcast=True)
    done = tl.load(slot + 2) != 0
    return radix_step(hist_ptr, level - 1, prefix, below, done, budget_mass, n, rows, slices, SLICES_POW2, KEY_BITS)


@triton.jit
def radix_step(
    hist_ptr, level, prefix, below, done, budget_mass, n, rows, slices,
    SLICES_POW2: tl.constexpr, KEY_BITS: tl.constexpr,
):
    """One radix step: from the digit histogram of ``level`` pick the digit whose
    bucket holds the critical item (the first where the cumulative mass, ``below``
    the prefix's range and then digit by digit, exceeds ``budget_mass``).  Returns the
    new (prefix, below, done); when the whole range fits, ``prefix`` becomes the
    exclusive key threshold and ``done`` is set."""
    shift = tl.full((), KEY_BITS - DIGIT_BITS, tl.int64) - DIGIT_BITS * level
    j = tl.arange(0, SLICES_POW2)[:, None]
    digit = tl.arange(0, 16)[None, :]
    hist = tl.load(hist_ptr + ((level * rows + n) * slices + j) * 16 + digit, mask=j < slices, other=0.0)
    hist = tl.sum(hist, 0)
    digits = tl.arange(0, 16)
    over = (below + tl.cumsum(hist, 0)) > budget_mass
    first = tl.min(tl.where(over, digits, 16), 0).to(tl.int64)
    fits = first == 16
    new_below = below + tl.sum(tl.where(digits < first, hist, 0.0), 0)
    new_prefix = tl.where(fits, prefix + (first << shift), prefix | (first << shift))
    return (
        tl.where(done, prefix, new_prefix),
        tl.where(done, below, new_below),
        done | fits,
    )


@triton.jit
def keep_radix_state(state_ptr, level, n, rows, prefix, below, done):
    """Store (prefix, below, done) as row n's state before ``level``, in i64 slots."""
    slot = state_ptr + (level * rows + n) * 3
    tl.store(slot, prefix)
    tl.store(slot + 1, below.to(tl.int32, bitcast=True).to(tl.int64))
    tl.store(slot + 2, done.to(tl.int64))
