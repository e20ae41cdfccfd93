"""Row statistics shared by every Triton operation (docs/design.md §4, passes 1–2).

Each row of the flattened ``[N, V]`` logits is cut into ``S`` slices; a program
``(n, j)`` handles slice ``j`` of row ``n`` so that a batch of one still fills
the GPU, and ``S = 1`` for large batches.  Per-slice partial statistics go to
a small ``[FIELDS, N, S]`` f32 buffer that later kernels combine (a few dozen
floats per row), never a ``[N, V]`` intermediate:

    pass 1  max and Σexp of p, q (and of y = log p + log q − log q_ref for
            ImplicitReward), Σ exp² of p (squared loss), bad-logits bits;
    primal  a radix select of the threshold over a key in the order of the
            logits (``rank_key``): a pass per 4-bit digit, 4 for bf16/fp16 logits,
            8 for fp32 (no sort);
    pass 2  S_d = Σ p_v d_v and S_kept = Σ p_v (1 − d_v), so α = S_d / (S_d + S_kept).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._backend import value_args
from ..rules import Kind

# Fields of the statistics buffer [FIELDS, N, S]: max and Σexp of p, Σexp² of p,
# max and Σexp of q and of y (ImplicitReward), S_d and S_kept, max of ref.
M_P, Z_P, S2_P, M_Q, Z_Q, M_Y, Z_Y, S_D, S_K, M_R = (tl.constexpr(f) for f in range(10))
FIELDS = 10
# exp(x) = exp2(x · log2 e): Triton's exp2 is one ex2.approx.ftz instruction, while its
# exp adds a multiply and a subnormal-range fix-up (two more multiplies and a compare)
# per element — a fifth of pass 1's instructions.  Results below 2^-126 flush to 0:
# tokens that improbable are never drawn either way.
LOG2E = tl.constexpr(1.4426950408889634)
# Radix select of the primal threshold: 4-bit digits over the logits' own bits.
DIGIT_BITS = tl.constexpr(4)
# One block size for every vocabulary: each distinct value would be one more
# compile of every kernel, and masked lanes cost nothing on a memory-bound pass.
# The radix histogram holds [16, HIST_BLOCK] values, hence its smaller block.
BLOCK = 2048
HIST_BLOCK = 512
NUM_WARPS = 8  # 256 threads: 8 elements, one 16-byte bf16 load, per thread and chunk

LOGISTIC = tl.constexpr(Kind.LOGISTIC.value)
PERCEPTRON = tl.constexpr(Kind.PERCEPTRON.value)
ZERO_ONE = tl.constexpr(Kind.ZERO_ONE.value)
SQUARED = tl.constexpr(Kind.SQUARED.value)
NUDGING = tl.constexpr(Kind.NUDGING.value)
MAX_Q_MINUS = tl.constexpr(Kind.MAX_Q_MINUS.value)
MAX_Q_PLUS = tl.constexpr(Kind.MAX_Q_PLUS.value)
MAX_P_PLUS = tl.constexpr(Kind.MAX_P_PLUS.value)
MINUS_MAX_P_PLUS = tl.constexpr(Kind.MINUS_MAX_P_PLUS.value)
PRIMAL = tl.constexpr(Kind.PRIMAL.value)
IMPLICIT_REWARD = tl.constexpr(Kind.IMPLICIT_REWARD.value)


@dataclass(frozen=True)
class Layout:
    """How the logits of one call are cut: ``rows`` = N, ``positions`` per batch row
    (γ+1 in verify, 1 in sample), ``slices`` = S of ``slice_len`` (a multiple of BLOCK)."""

    rows: int
    positions: int
    vocab: int
    slice_len: int
    slices: int

    @property
    def slices_pow2(self) -> int:
        return triton.next_power_of_2(self.slices)


@functools.cache
def _cuda_multiprocessors(index: int) -> int:
    """SM count of CUDA device ``index``, queried once (a query per call is host time)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessors(device: torch.device) -> int:
    """SMs to fill on ``device``; the interpreter on CPU gets a small stand-in."""
    if device.type != "cuda":
        return 2
    return _cuda_multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


def layout(rows: int, positions: int, vocab: int, device: torch.device) -> Layout:
    """Cut each row into slices of whole chunks: see ``_chunks_per_slice``."""
    chunks = triton.cdiv(vocab, BLOCK)
    slice_len = _chunks_per_slice(rows, chunks, PROGRAMS_PER_SM * multiprocessors(device)) * BLOCK
    return Layout(rows, positions, vocab, slice_len, triton.cdiv(vocab, slice_len))


# Resident programs per SM of the streaming passes (8 warps, <= 64 registers: see
# benchmarks/kernel_resources.py), so one wave of the grid is 4 programs per SM.
# The passes over whole rows are capped at that register count (ptxas would take
# 72-80 for their prefetched chunk), the draws they end with included (which alone
# would take 210-250 for their 4-chunk steps; capped, they do not spill).
PROGRAMS_PER_SM = 4
MAX_REGISTERS = 64


@functools.cache
def _chunks_per_slice(rows: int, chunks: int, slots: int) -> int:
    """The slice length, in chunks, whose grid of rows × slices programs fills its
    waves of ``slots`` programs best, within two waves (the passes are latency-bound,
    so a last wave a tenth full costs nearly a whole wave; more, shorter slices only
    add partial statistics to combine).  Ties go to fewer, longer slices."""
    def fill(per_slice: int) -> tuple[float, int]:
        programs = rows * triton.cdiv(chunks, per_slice)
        return programs / (triton.cdiv(programs, slots) * slots), per_slice
    balanced = {triton.cdiv(chunks, slices) for slices in range(1, chunks + 1)}  # even slices only
    return max((c for c in balanced if c == chunks or rows * triton.cdiv(chunks, c) <= 2 * slots), key=fill)


@triton.jit
def row_offset(n, P, stride_b, stride_p):
    """Element offset of flattened row ``n`` = (batch n // P, position n % P)."""
    return (n // P).to(tl.int64) * stride_b + (n % P).to(tl.int64) * stride_p


@triton.jit
def slice_bounds(j, slice_len, V):
    """[start, end) of slice ``j`` of a row."""
    start = j * slice_len
    return start, tl.minimum(start + slice_len, V)


@triton.jit
def row_value(values_ptr, value, b):
    """Batch row b's T, λ or budget: ``values_ptr[b]`` (f32 [B]), or ``value`` for every
    row when the pointer is None (a float from the API: no device tensor, so no fill
    launch per call; B = 1 spent a fifth of its time on two).  None is a constexpr, so
    each form compiles without the other's branch."""
    if values_ptr is None:
        return value
    else:
        return tl.load(values_ptr + b)


@triton.jit
def last_to_finish(ticket_ptr, n, count):
    """Count this program as finished on row n's ticket (zeroed by pass 1); true for the
    program that brings it to ``count``, which may then read what the others wrote.
    The barrier puts every thread's stores before the atomic's release; its acquire
    comes before the caller's reads, which go to L2 (``slice_stats``, ``greedy_token``,
    ``drawn_last_token``) past any stale L1 line.  ``offline.ticket_faults`` checks
    that order in the compiled code."""
    tl.debug_barrier()
    return tl.atomic_add(ticket_ptr + n, 1, sem="acq_rel") == count - 1


@triton.jit
def inverse_temperature(temp_ptr, temp_value, b):
    """1/T, and T = 1 on greedy rows (T = 0): docs/design.md §1.2."""
    t = row_value(temp_ptr, temp_value, b)
    return tl.where(t > 0, 1.0 / tl.where(t > 0, t, 1.0), 1.0)


@triton.jit
def slice_stats(stats_ptr, F: tl.constexpr, n, N, S, SP: tl.constexpr, other):
    """Field ``F`` of every slice of row ``n``, ``[SP]`` (``other`` past the S slices).
    Read from L2 (``.cg``), not L1: a row's last program in ``sample``'s pass 2 reads
    partials that programs on other SMs have just written, which an L1 line cached
    earlier (a neighbouring row's) could hide."""
    j = tl.arange(0, SP)
    return tl.load(stats_ptr + (F * N + n) * S + j, mask=j < S, other=other, cache_modifier=".cg")


@triton.jit
def combine_partials(m, z, s2, inv_t):
    """One (max, Σexp((x − max)/T), Σexp(2(x − max)/T)) from partial triples, each
    relative to its own max (a sum rescales by exp((m_i − max)/T), a square sum by
    its square): the rows of pass 1 into a slice's, and the slices into a row's."""
    big = tl.max(m, 0)
    scale = tl.exp((m - tl.where(big == float("-inf"), 0.0, big)) * inv_t)
    return big, tl.sum(z * scale, 0), tl.sum(s2 * scale * scale, 0)


@triton.jit
def combine_lse(stats_ptr, FM: tl.constexpr, FZ: tl.constexpr, n, N, S, SP: tl.constexpr, inv_t):
    """Row max of the raw logits and Σexp((x − max)/T) from the per-slice partials of
    fields (FM, FZ)."""
    m = slice_stats(stats_ptr, FM, n, N, S, SP, float("-inf"))
    z = slice_stats(stats_ptr, FZ, n, N, S, SP, 0.0)
    big, total, _ = combine_partials(m, z, z, inv_t)
    return big, total


@triton.jit
def row_sum(stats_ptr, F: tl.constexpr, n, N, S, SP: tl.constexpr):
    return tl.sum(slice_stats(stats_ptr, F, n, N, S, SP, 0.0), 0)


@triton.jit
def row_softmax(stats_ptr, n, N, S, SP: tl.constexpr, inv_t):
    """(max p-logit, Σexp p, ||p||², max q-logit, Σexp q) of row ``n``."""
    m_p, z_p, s2_p = combine_partials(
        slice_stats(stats_ptr, M_P, n, N, S, SP, float("-inf")),
        slice_stats(stats_ptr, Z_P, n, N, S, SP, 0.0),
        slice_stats(stats_ptr, S2_P, n, N, S, SP, 0.0),
        inv_t,
    )
    m_q, z_q = combine_lse(stats_ptr, M_Q, Z_Q, n, N, S, SP, inv_t)
    return m_p, z_p, s2_p / (z_p * z_p), m_q, z_q


@triton.jit
def row_alpha(stats_ptr, n, N, S, SP: tl.constexpr):
    """α = S_d / (S_d + S_kept): exactly 0 if nothing is deferred, 1 if all is."""
    deferred = row_sum(stats_ptr, S_D, n, N, S, SP)
    kept = row_sum(stats_ptr, S_K, n, N, S, SP)
    return deferred / (deferred + kept)


@triton.jit
def mixture_alpha(stats_ptr, n, N, S, SP: tl.constexpr, KIND):
    """α of the mixture; ImplicitReward defers nothing."""
    if KIND == IMPLICIT_REWARD:
        alpha = 0.0
    else:
        alpha = row_alpha(stats_ptr, n, N, S, SP)
    return alpha


@triton.jit
def deferred(KIND, p, q, e, xp, a, max_p, max_q, sum_p2, key_limit):
    """The mask d of docs/design.md §1.3 on a chunk; the forms mirror reference.deferral_mask.
    ``e`` = exp((x − max)/T) and ``xp`` the raw p logits (for the primal key)."""
    if KIND == LOGISTIC:
        d = p < a
    elif KIND == PERCEPTRON:
        d = (max_p - p) > a
    elif KIND == ZERO_ONE:
        # [p_v < max p] > a with a >= 0; e = exp(x − max) is 1.0 exactly at the maximum
        d = (e < 1.0) & ((tl.zeros_like(p) + a) < 1.0)
    elif KIND == SQUARED:
        d = (1.0 - 2.0 * p + sum_p2) > a
    elif KIND == NUDGING:
        d = (tl.zeros_like(p) + max_p) < a
    elif KIND == MAX_Q_MINUS:
        d = p < max_q - a
    elif KIND == MAX_Q_PLUS:
        d = p < max_q + a
    elif KIND == MAX_P_PLUS:
        d = q < max_p + a
    elif KIND == MINUS_MAX_P_PLUS:
        d = q > max_p + a
    else:  # PRIMAL: C_v <= budget  <=>  key_v below the critical key (radix select)
        d = rank_key(xp) < key_limit
    return d


@triton.jit
def rank_key(x):
    """A non-negative integer key in the order of the raw logits ``x`` (16 bits for
    bf16/fp16, 32 for fp32): p is increasing in x, so ranking the logits ranks p, and
    equal logits — genuine ties, which Primal defers together — share a key (−0 is
    folded into +0).  Half the radix levels of a key on fp32 p for 16-bit logits."""
    x = tl.where(x == 0, tl.zeros_like(x), x)
    if x.dtype.primitive_bitwidth == 16:  # 32-bit arithmetic: half the instructions of 64
        bits = x.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        sign = 0x8000
        ones = 0xFFFF
    else:
        bits = x.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        sign = 0x80000000
        ones = 0xFFFFFFFF
    # Negative floats order backwards in their bits: flip them all; positives above them.
    return tl.where((bits & sign) != 0, bits ^ ones, bits | sign)


@triton.jit
def primal_descend(hist_ptr, level, prefix, base, done, limit, n, N, S, SP: tl.constexpr, KEY_BITS: tl.constexpr):
    """One radix step: from the digit histogram of ``level`` pick the digit whose
    bucket holds the critical item (the first where the cumulative mass exceeds
    ``limit``).  Returns the new (prefix, base, done); when the whole range fits,
    ``prefix`` becomes the exclusive key threshold and ``done`` is set."""
    shift = tl.full((), KEY_BITS - DIGIT_BITS, tl.int64) - DIGIT_BITS * level
    j = tl.arange(0, SP)[:, None]
    digit = tl.arange(0, 16)[None, :]
    h = tl.load(hist_ptr + ((level * N + n) * S + j) * 16 + digit, mask=j < S, other=0.0)
    h = tl.sum(h, 0)
    digits = tl.arange(0, 16)
    over = (base + tl.cumsum(h, 0)) > limit
    first = tl.min(tl.where(over, digits, 16), 0).to(tl.int64)
    fits = first == 16
    new_base = base + tl.sum(tl.where(digits < first, h, 0.0), 0)
    new_prefix = tl.where(fits, prefix + (first << shift), prefix | (first << shift))
    return (
        tl.where(done, prefix, new_prefix),
        tl.where(done, base, new_base),
        done | fits,
    )


@triton.jit
def primal_state(state_ptr, hist_ptr, level, limit, n, N, S, SP: tl.constexpr, KEY_BITS: tl.constexpr):
    """(prefix, base, done) of row n before radix level ``level`` (>= 1): the state
    before the previous level, kept by that level's first slice, one step on.  One
    step per launch: replaying every earlier level's histogram made each level's
    programs wait on a chain as long as the level number."""
    slot = state_ptr + ((level - 1) * N + n) * 3
    prefix = tl.load(slot)
    base = tl.load(slot + 1).to(tl.int32).to(tl.float32, bitcast=True)
    done = tl.load(slot + 2) != 0
    return primal_descend(hist_ptr, level - 1, prefix, base, done, limit, n, N, S, SP, KEY_BITS)


@triton.jit
def keep_primal_state(state_ptr, level, n, N, prefix, base, done):
    slot = state_ptr + (level * N + n) * 3
    tl.store(slot, prefix)
    tl.store(slot + 1, base.to(tl.int32, bitcast=True).to(tl.int64))
    tl.store(slot + 2, done.to(tl.int64))


@triton.jit(do_not_specialize=["N", "P", "S"])
def _primal_limit_kernel(
    stats_ptr, hist_ptr, state_ptr, temp_ptr, temp_value, param_ptr, param_value, limit_ptr, N, P, S,
    SP: tl.constexpr, KEY_BITS: tl.constexpr,
):
    """After the last radix level: the exclusive key threshold of row n, d_v = key_v < limit
    (every later kernel reads it instead of the radix state)."""
    n = tl.program_id(0)
    _, z_p = combine_lse(stats_ptr, M_P, Z_P, n, N, S, SP, inverse_temperature(temp_ptr, temp_value, n // P))
    budget = row_value(param_ptr, param_value, n // P)
    prefix, base, done = primal_state(state_ptr, hist_ptr, KEY_BITS // DIGIT_BITS, budget * z_p, n, N, S, SP, KEY_BITS)
    tl.store(limit_ptr + n, tl.where(budget >= 1.0, tl.full((), 1 << 40, tl.int64), prefix))


# Row and slice counts change with every batch: specializing on them only multiplies compiles.
@triton.jit(do_not_specialize=['N', 'P', 'S'])
def _stats_kernel(
    p_ptr, q_ptr, r_ptr, temp_ptr, temp_value, stats_ptr, flag_ptr, ticket_ptr,
    N, V, P, stride_b, stride_p, slice_len, S,
    HAS_REF: tl.constexpr, SUM_SQUARES: tl.constexpr, BLOCK: tl.constexpr, VEC: tl.constexpr,
):
    """Pass 1 for slice j of row n: online max/Σexp per tile row (``rows_update``), one
    reduction across the program at the end.  The bad-logits bits come from the
    running maxima, which keep NaN and +inf, rather than from a test per element:
    the loop is issue-bound, every instruction counts.  Zeroes the row's ticket
    (``ticket_ptr`` not None) on which a later launch counts its finished slices."""
    n = tl.program_id(0)
    j = tl.program_id(1)
    row = row_offset(n, P, stride_b, stride_p)
    inv_t = inverse_temperature(temp_ptr, temp_value, n // P)
    start, end = slice_bounds(j, slice_len, V)
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
        if HAS_REF:
            xr = chunk_rows(r_ptr, row, off, end, BLOCK, VEC, "evict_first").to(tl.float32)
            # ref enters y only where it is above −inf, so its NaNs need a maximum that keeps them.
            m_r = tl.maximum(m_r, tl.reduce(xr, 1, _max_keep_nan), propagate_nan=tl.PropagateNan.ALL)
            m_y, z_y, _ = rows_update(m_y, z_y, z_y, reward_logit(xp, xq, xr), inv_t, False)
    base = n * S + j
    NS = N * S
    bits = not_finite(m_p, z_p) | not_finite(m_q, z_q) << 2
    big, z, s2 = combine_partials(m_p, z_p, s2_p, inv_t)
    tl.store(stats_ptr + M_P * NS + base, big)
    tl.store(stats_ptr + Z_P * NS + base, z)
    tl.store(stats_ptr + S2_P * NS + base, s2)
    big, z, _ = combine_partials(m_q, z_q, z_q, inv_t)
    tl.store(stats_ptr + M_Q * NS + base, big)
    tl.store(stats_ptr + Z_Q * NS + base, z)
    if HAS_REF:
        # One reduction of m_r, kept NaN and all: a second use of the loop's m_r crashes
        # Triton's thread-locality pass on fp32 tiles (several rows per thread).
        big_r = tl.reduce(m_r, 0, _max_keep_nan)
        bits |= ((big_r != big_r) | (big_r == float("inf"))).to(tl.int32) << 4
        big, z, _ = combine_partials(m_y, z_y, z_y, inv_t)
        tl.store(stats_ptr + M_Y * NS + base, big)
        tl.store(stats_ptr + Z_Y * NS + base, z)
        tl.store(stats_ptr + M_R * NS + base, big_r)
    tl.store(flag_ptr + base, bits)
    if ticket_ptr is not None:
        if j == 0:
            tl.store(ticket_ptr + n, 0)


@triton.jit
def chunk_logits(ptr, row, off, end, BLOCK: tl.constexpr, POLICY: tl.constexpr):
    """The logits of the chunk at ``off`` in their own dtype, −inf at and past ``end``."""
    cols = off + tl.arange(0, BLOCK)
    return tl.load(ptr + row + cols, mask=cols < end, other=float("-inf"), eviction_policy=POLICY)


@triton.jit
def chunk_rows(ptr, row, off, end, BLOCK: tl.constexpr, VEC: tl.constexpr, POLICY: tl.constexpr):
    """The chunk at ``off`` as a ``[BLOCK // VEC, VEC]`` tile of logits in their own
    dtype, −inf at and past ``end``: a tile row is VEC contiguous logits, one 16-byte
    load, held by one thread, so reducing along it costs no communication."""
    cols = off + tl.arange(0, BLOCK // VEC)[:, None] * VEC + tl.arange(0, VEC)[None, :]
    return tl.load(ptr + row + cols, mask=cols < end, other=float("-inf"), eviction_policy=POLICY)


@triton.jit
def not_finite(m, z):
    """1 if a NaN or +inf logit reached the running (max, Σexp) of ``rows_update``,
    else 0: +inf is the max; NaN makes Σexp NaN (on the GPU the max drops it)."""
    return tl.max(((m != m) | (m == float("inf")) | (z != z)).to(tl.int32), 0)


@triton.jit
def _max_keep_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


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
    r = tl.exp2((m - safe) * c)
    e = tl.exp2((x - safe[:, None]) * c)
    z = z * r + tl.sum(e, 1)
    if SUM_SQUARES:
        s2 = s2 * (r * r) + tl.sum(e * e, 1)
    return m_new, z, s2


@triton.jit(do_not_specialize=['N', 'P', 'S', 'level'])
def _primal_hist_kernel(
    p_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, hist_ptr, state_ptr,
    level, N, V, P, stride_b, stride_p, slice_len, S,
    SP: tl.constexpr, KEY_BITS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Radix level ``level``: mass histogram (in units of exp(x − max)) of the next
    4-bit digit of ``rank_key``, over the keys that share the prefix found so far."""
    n = tl.program_id(0)
    j = tl.program_id(1)
    inv_t = inverse_temperature(temp_ptr, temp_value, n // P)
    m_p, z_p = combine_lse(stats_ptr, M_P, Z_P, n, N, S, SP, inv_t)
    budget = row_value(param_ptr, param_value, n // P)
    if level == 0:
        prefix = tl.full((), 0, tl.int64)
        base = tl.full((), 0.0, tl.float32)
        done = tl.full((), 0, tl.int1)
    else:
        prefix, base, done = primal_state(state_ptr, hist_ptr, level, budget * z_p, n, N, S, SP, KEY_BITS)
    if j == 0:
        keep_primal_state(state_ptr, level, n, N, prefix, base, done)
    row = row_offset(n, P, stride_b, stride_p)
    shift = KEY_BITS - DIGIT_BITS - DIGIT_BITS * level
    digits = tl.arange(0, 16)
    # Digits along the first axis: each thread holds all 16 of its elements' digits,
    # so an element's exp and key are computed once, not once per digit lane.
    h = tl.zeros([16, BLOCK], tl.float32)
    start, end = slice_bounds(j, slice_len, V)
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
            h += tl.where(digit[None, :] == digits[:, None], e[None, :], 0.0)
    tl.store(hist_ptr + ((level * N + n) * S + j) * 16 + digits, tl.sum(h, 1))


@triton.jit
def row_state(
    stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, n, P, N, S, SP: tl.constexpr, KIND
):
    """Everything a kernel needs to evaluate π on any chunk of row ``n``."""
    inv_t = inverse_temperature(temp_ptr, temp_value, n // P)
    m_p, z_p, sum_p2, m_q, z_q = row_softmax(stats_ptr, n, N, S, SP, inv_t)
    if KIND == IMPLICIT_REWARD:  # pass 1 fills the y fields for this rule only
        m_y, z_y = combine_lse(stats_ptr, M_Y, Z_Y, n, N, S, SP, inv_t)
    else:
        m_y = tl.full((), float("-inf"), tl.float32)
        z_y = tl.full((), 0.0, tl.float32)
    a = row_value(param_ptr, param_value, n // P)
    if KIND == PRIMAL:
        key_limit = tl.load(limit_ptr + n)
    else:
        key_limit = tl.full((), 0, tl.int64)
    return m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t


@triton.jit
def mixture_state(
    stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, n, P, N, S, SP: tl.constexpr, KIND
):
    """``row_state`` and α: all that ``chunk_mixture`` needs, once pass 2 is done."""
    m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t = row_state(
        stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, n, P, N, S, SP, KIND
    )
    alpha = mixture_alpha(stats_ptr, n, N, S, SP, KIND)
    return m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha


@triton.jit
def probs(xp, xq, inv_t, m_p, z_p, m_q, z_q, WITH_Q: tl.constexpr):
    """p, q (fp32) from logits in their own dtype (q = 0 unless ``WITH_Q``), and
    e = exp((x_p − max)/T).  Logits are shifted by the row max *before*
    the 1/T scaling, so the arg-max has e = exp(0) = 1 exactly (a fused x/T − max
    could leave it an ulp off), and p = e · (1/z) then equals max p = 1/z exactly, as
    the rules assume."""
    e = tl.exp2((xp.to(tl.float32) - m_p) * (inv_t * LOG2E))
    if WITH_Q:
        q = tl.exp2((xq.to(tl.float32) - m_q) * (inv_t * LOG2E)) * (1.0 / z_q)
    else:
        q = tl.zeros_like(e)
    return e * (1.0 / z_p), q, e


@triton.jit
def chunk_mixture(
    p_ptr, q_ptr, r_ptr, row, cols, mask, V,
    m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha,
    KIND,
):
    """(π, q) on a chunk: ``chunk_logits3`` then ``mixture_of``."""
    xp, xq, xr = chunk_logits3(p_ptr, q_ptr, r_ptr, row, cols, mask, KIND)
    return mixture_of(xp, xq, xr, mask, V, m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha, KIND)


@triton.jit
def chunk_logits3(p_ptr, q_ptr, r_ptr, row, cols, mask, KIND):
    """The logits of p, q and (ImplicitReward only, else never fetched) ref on a chunk,
    in their own dtype: loads apart from arithmetic, so loops can fetch ahead."""
    xp = tl.load(p_ptr + row + cols, mask=mask, other=float("-inf"))
    xq = tl.load(q_ptr + row + cols, mask=mask, other=float("-inf"))
    # A select, not ``mask & (KIND == …)``: Triton's interpreter gives that int32 lanes,
    # which its loads refuse from triton 3.9 on.
    xr = tl.load(r_ptr + row + cols, mask=tl.where(KIND == IMPLICIT_REWARD, mask, False), other=float("-inf"))
    return xp, xq, xr


@triton.jit
def mixture_of(
    xp, xq, xr, mask, V,
    m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t, alpha,
    KIND,
):
    """(π, q) from a chunk's logits: π = p(1 − d) + α q (docs/design.md §1.1), or p q / q_ref normalized."""
    p, q, e = probs(xp, xq, inv_t, m_p, z_p, m_q, z_q, True)
    if KIND == IMPLICIT_REWARD:
        y = reward_logit(xp.to(tl.float32), xq.to(tl.float32), xr.to(tl.float32))
        uniform = tl.where(mask, 1.0 / V, 0.0)
        pi = tl.where(m_y == float("-inf"), uniform, tl.exp2((y - tl.where(m_y == float("-inf"), 0.0, m_y)) * (inv_t * LOG2E)) / z_y)
    else:
        d = deferred(KIND, p, q, e, xp, a, 1.0 / z_p, 1.0 / z_q, sum_p2, key_limit)
        pi = tl.where(d, 0.0, p) + alpha * q
    return pi, q


@triton.jit
def reward_logit(xp, xq, xr):
    """T·(log p + log q − log q_ref) up to a row constant; q_ref = 0 excludes v."""
    y = tl.where(xr > float("-inf"), xp + xq - xr, float("-inf"))
    return tl.where(y != y, float("-inf"), y)


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit(do_not_specialize=['N', 'P', 'S', 'KIND'])
def _mass_kernel(
    p_ptr, q_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, slice_flag_ptr, flag_ptr,
    N, V, P, stride_b, stride_p, slice_len, S,
    KIND, HAS_REF: tl.constexpr, NEEDS_Q: tl.constexpr, SP: tl.constexpr, BLOCK: tl.constexpr,
):
    slice_masses(
        p_ptr, q_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, slice_flag_ptr, flag_ptr,
        tl.program_id(0), tl.program_id(1), N, V, P, stride_b, stride_p, slice_len, S,
        KIND, HAS_REF, NEEDS_Q, SP, BLOCK,
    )


@triton.jit
def slice_masses(
    p_ptr, q_ptr, temp_ptr, temp_value, param_ptr, param_value, stats_ptr, limit_ptr, slice_flag_ptr, flag_ptr,
    n, j, N, V, P, stride_b, stride_p, slice_len, S,
    KIND, HAS_REF: tl.constexpr, NEEDS_Q: tl.constexpr, SP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 2 for slice j of row n: S_d and S_kept; slice 0 also folds the row's
    bad-logits bits (any slice's NaN/+inf, or a row max of −inf).  Only the rules
    whose mask tests q_v (``NEEDS_Q``) read q here, and Nudging reads nothing."""
    m_p, z_p, sum_p2, m_q, z_q, m_y, z_y, a, key_limit, inv_t = row_state(
        stats_ptr, limit_ptr, param_ptr, param_value, temp_ptr, temp_value, n, P, N, S, SP, KIND
    )
    if j == 0:
        js = tl.arange(0, SP)
        bits = tl.reduce(tl.load(slice_flag_ptr + n * S + js, mask=js < S, other=0), 0, _bit_or)
        bits |= (m_p == float("-inf")).to(tl.int32) * 2 | (m_q == float("-inf")).to(tl.int32) * 8
        if HAS_REF:
            m_r = tl.max(slice_stats(stats_ptr, M_R, n, N, S, SP, float("-inf")), 0)
            bits |= (m_r == float("-inf")).to(tl.int32) * 32
        tl.store(flag_ptr + n, bits)
    if KIND == NUDGING:
        # One decision for the whole row (max p < λ): the slice's deferred or kept mass
        # is its share of p, which pass 1 already holds, so nothing is read again.
        m_j = tl.load(stats_ptr + (M_P * N + n) * S + j)
        share = tl.load(stats_ptr + (Z_P * N + n) * S + j) * tl.exp((m_j - m_p) * inv_t) / z_p
        defer_all = (1.0 / z_p) < a
        tl.store(stats_ptr + (S_D * N + n) * S + j, tl.where(defer_all, share, 0.0))
        tl.store(stats_ptr + (S_K * N + n) * S + j, tl.where(defer_all, 0.0, share))
    elif KIND != IMPLICIT_REWARD:
        row = row_offset(n, P, stride_b, stride_p)
        start, end = slice_bounds(j, slice_len, V)
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
            p, q, e = probs(xp, xq, inv_t, m_p, z_p, m_q, z_q, NEEDS_Q)
            d = deferred(KIND, p, q, e, xp, a, 1.0 / z_p, 1.0 / z_q, sum_p2, key_limit)
            s_d += tl.where(d, p, 0.0)
            s_k += tl.where(d, 0.0, p)
        tl.store(stats_ptr + (S_D * N + n) * S + j, tl.sum(s_d, 0))
        tl.store(stats_ptr + (S_K * N + n) * S + j, tl.sum(s_k, 0))


def row_args(param, temperature) -> tuple:
    """The kernels' ``temp_ptr, temp_value, param_ptr, param_value`` (``row_value``)."""
    return (*value_args(temperature), *value_args(param))


def row_strides(p) -> tuple[int, int]:
    """(batch, position) element strides of logits [B, V] or [B, P, V] (``row_offset``)."""
    return p.stride(0), p.stride(1) if p.dim() == 3 else 0


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
