"""π on a chunk of a row, from its logits and the row's statistics (docs/design.md §1).

Elementwise math shared by every pass after the first: p and q from logits in
their own dtype, the deferral mask d of each rule (§1.3; for Primal the key
order of §1.4, ``rank_key``), π = p(1 − d) + α q (§1.1) and the ImplicitReward
score (§1.5).  No statistics buffer is read here: the row's statistics come in
as arguments.
"""

from __future__ import annotations

from typing import NamedTuple

import triton
import triton.language as tl

from ..rules import Kind


# exp(x) = exp2(x · log2 e): Triton's exp2 is one ex2.approx.ftz instruction, while its
# exp adds a multiply and a subnormal-range fix-up (two more multiplies and a compare)
# per element — a fifth of pass 1's instructions.  Results below 2^-126 flush to 0:
# tokens that improbable are never drawn either way.
LOG2E = tl.constexpr(1.4426950408889634)

# The rules, as the kernels' runtime ``kind`` argument compares them (one compile serves all).
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


class RowState(NamedTuple):
    """What evaluating p, q and π anywhere in one row takes (the CUDA side's
    ``RowState``): f32 scalars unless marked, built by ``row_stats.row_state``.

    A NamedTuple, which every supported Triton (3.4 … 3.9) passes to and returns
    from ``@triton.jit`` functions, field access included, in the interpreter and
    in compiled code alike; it is flattened into scalars, so the generated code
    is that of the loose values."""

    m_p: tl.tensor  # max of the row's p logits
    z_p: tl.tensor  # Σ exp((x − m_p)/T): p_v = exp((x_v − m_p)/T) / z_p, max p = 1/z_p
    sum_p2: tl.tensor  # Σ p_v² (Squared only, else 0)
    m_q: tl.tensor  # max and Σexp of q, as for p
    z_q: tl.tensor
    m_y: tl.tensor  # max and Σexp of the ImplicitReward score y (−inf, 0 for other rules)
    z_y: tl.tensor
    param: tl.tensor  # the rule parameter: λ, μ, or the Primal budget
    key_limit: tl.tensor  # i64: Primal defers the keys below it (0 for other rules)
    inv_t: tl.tensor  # 1/T, 1 on greedy rows (T = 0)
    alpha: tl.tensor  # α, once pass 2 is done (else 0)


@triton.jit
def probs(xp, xq, state, WITH_Q: tl.constexpr):
    """p, q (fp32) from logits in their own dtype (q = 0 unless ``WITH_Q``), and
    e = exp((x_p − max)/T).  Logits are shifted by the row max *before*
    the 1/T scaling, so the arg-max has e = exp(0) = 1 exactly (a fused x/T − max
    could leave it an ulp off), and p = e · (1/z) then equals max p = 1/z exactly, as
    the rules assume."""
    e = tl.exp2((xp.to(tl.float32) - state.m_p) * (state.inv_t * LOG2E))
    if WITH_Q:
        q = tl.exp2((xq.to(tl.float32) - state.m_q) * (state.inv_t * LOG2E)) * (1.0 / state.z_q)
    else:
        q = tl.zeros_like(e)
    return e * (1.0 / state.z_p), q, e


@triton.jit
def deferred(kind, p, q, e, xp, state):
    """The mask d of docs/design.md §1.3 on a chunk; the forms mirror reference.deferral_mask.
    ``e`` = exp((x − max)/T) and ``xp`` the raw p logits (for the primal key)."""
    param = state.param
    max_p = 1.0 / state.z_p
    max_q = 1.0 / state.z_q
    if kind == LOGISTIC:
        d = p < param
    elif kind == PERCEPTRON:
        d = (max_p - p) > param
    elif kind == ZERO_ONE:
        # [p_v < max p] > λ with λ >= 0; e = exp(x − max) is 1.0 exactly at the maximum
        d = (e < 1.0) & ((tl.zeros_like(p) + param) < 1.0)
    elif kind == SQUARED:
        d = (1.0 - 2.0 * p + state.sum_p2) > param
    elif kind == NUDGING:
        d = (tl.zeros_like(p) + max_p) < param
    elif kind == MAX_Q_MINUS:
        d = p < max_q - param
    elif kind == MAX_Q_PLUS:
        d = p < max_q + param
    elif kind == MAX_P_PLUS:
        d = q < max_p + param
    elif kind == MINUS_MAX_P_PLUS:
        d = q > max_p + param
    else:  # PRIMAL: C_v <= budget  <=>  key_v below the critical key (radix select)
        d = rank_key(xp) < state.key_limit
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
def mixture_of(xp, xq, xr, mask, vocab, state, kind):
    """(π, q) from a chunk's logits: π = p(1 − d) + α q (docs/design.md §1.1), or p q / q_ref normalized."""
    p, q, e = probs(xp, xq, state, True)
    if kind == IMPLICIT_REWARD:
        m_y = state.m_y
        y = reward_logit(xp.to(tl.float32), xq.to(tl.float32), xr.to(tl.float32))
        uniform = tl.where(mask, 1.0 / vocab, 0.0)
        shifted = (y - tl.where(m_y == float("-inf"), 0.0, m_y)) * (state.inv_t * LOG2E)
        pi = tl.where(m_y == float("-inf"), uniform, tl.exp2(shifted) / state.z_y)
    else:
        d = deferred(kind, p, q, e, xp, state)
        pi = tl.where(d, 0.0, p) + state.alpha * q
    return pi, q


@triton.jit
def reward_logit(xp, xq, xr):
    """T·(log p + log q − log q_ref) up to a row constant; q_ref = 0 excludes v."""
    y = tl.where(xr > float("-inf"), xp + xq - xr, float("-inf"))
    return tl.where(y != y, float("-inf"), y)


@triton.jit
def chunk_mixture(p_ptr, q_ptr, ref_ptr, row, cols, mask, vocab, state, kind):
    """(π, q) on a chunk: ``chunk_logits3`` then ``mixture_of``."""
    xp, xq, xr = chunk_logits3(p_ptr, q_ptr, ref_ptr, row, cols, mask, kind)
    return mixture_of(xp, xq, xr, mask, vocab, state, kind)


@triton.jit
def chunk_logits3(p_ptr, q_ptr, ref_ptr, row, cols, mask, kind):
    """The logits of p, q and ref on a chunk, in their own dtype: loads apart from
    arithmetic, so loops can fetch ahead.  ref is fetched for ImplicitReward only;
    absent (``ref_ptr`` None) it reads as −inf (f32: the interpreter builds no bf16
    constants), like an unfetched chunk."""
    xp = tl.load(p_ptr + row + cols, mask=mask, other=float("-inf"))
    xq = tl.load(q_ptr + row + cols, mask=mask, other=float("-inf"))
    if ref_ptr is None:
        xr = tl.full(xp.shape, float("-inf"), tl.float32)
    else:
        # A select, not ``mask & (kind == …)``: Triton's interpreter gives that int32 lanes,
        # which its loads refuse from triton 3.9 on.
        xr = tl.load(ref_ptr + row + cols, mask=tl.where(kind == IMPLICIT_REWARD, mask, False), other=float("-inf"))
    return xp, xq, xr
