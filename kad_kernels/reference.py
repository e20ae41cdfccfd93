"""The ``torch`` backend: docs/design.md §1–§2 written out in plain PyTorch (CPU and CUDA tensors).

Every other backend is tested against these functions.  They favour reading
over speed: each line maps to a formula of the design.  Shapes: ``N`` rows of a
vocabulary of ``V`` tokens; ``verify`` works on ``[B, γ+1, V]`` by flattening
the positions into rows.  Per-row parameters arrive as f32 tensors ``[N]``
(see :meth:`kad_kernels.rules.Rule.spec`); temperature 0 marks a greedy row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rules import Kind

NEG_INF = float("-inf")

# Bits of the per-row bad-logits flag (shared by every backend).
BAD_NONFINITE = 1  # a NaN or +inf entry
BAD_ALL_NEG_INF = 2  # every entry is -inf


def bad_logits_flag(logits: Tensor) -> Tensor:
    """int32 ``[N]``: ``BAD_NONFINITE | BAD_ALL_NEG_INF`` bits of each row of ``[N, V]``."""
    nonfinite = (torch.isnan(logits) | torch.isposinf(logits)).any(-1)
    all_neg_inf = torch.isneginf(logits).all(-1)
    return nonfinite.int() * BAD_NONFINITE + all_neg_inf.int() * BAD_ALL_NEG_INF


def shifted_logits(logits: Tensor) -> Tensor:
    """``logits − max`` in fp32, ``[N, V]``; a row without a finite max (all −inf, or a
    NaN or +inf entry) is left unshifted."""
    x = logits.float()
    shift = x.amax(-1, keepdim=True)  # [N, 1]
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return x - shift


def row_temperature(temperature: Tensor) -> Tensor:
    """``[N, 1]``: each row's T, greedy rows (T = 0) at T = 1."""
    return torch.where(temperature > 0, temperature, torch.ones_like(temperature))[:, None]


def tempered_logits(logits: Tensor, temperature: Tensor) -> Tensor:
    """``(logits − max) / T`` in fp32, ``[N, V]``; greedy rows (T = 0) use T = 1.

    The row max is subtracted before the division (docs/design.md §1.1): the
    differences near the max, which carry the mass, are then exact, and the
    division rounds each at its own size.  ``logits / T`` alone rounds at |x|/T,
    a relative error of ~1e-5 in p for |x| = 2.5e4 and T = 2.85."""
    return shifted_logits(logits) / row_temperature(temperature)


def probs(logits: Tensor, temperature: Tensor) -> Tensor:
    """``softmax(logits / T)`` in fp32, ``[N, V]``, from ``tempered_logits``."""
    return torch.softmax(tempered_logits(logits, temperature), dim=-1)


def deferral_mask(kind: Kind, param: Tensor, p: Tensor, q: Tensor, p_logits: Tensor) -> Tensor:
    """``d`` of docs/design.md §1.3 as bool ``[N, V]``; ``param`` is λ, μ or the budget, ``[N]``;
    ``p_logits`` ``[N, V]`` rank the tokens for Primal (§1.4)."""
    param = param[:, None]  # [N, 1]
    max_p = p.amax(-1, keepdim=True)
    max_q = q.amax(-1, keepdim=True)
    if kind == Kind.LOGISTIC:
        return p < param
    if kind == Kind.PERCEPTRON:
        return (max_p - p) > param
    if kind == Kind.ZERO_ONE:
        return (p < max_p).float() > param
    if kind == Kind.SQUARED:
        return (1 - 2 * p + (p * p).sum(-1, keepdim=True)) > param
    if kind == Kind.NUDGING:
        return (max_p < param).expand_as(p)
    if kind == Kind.MAX_Q_MINUS:
        return p < max_q - param
    if kind == Kind.MAX_Q_PLUS:
        return p < max_q + param
    if kind == Kind.MAX_P_PLUS:
        return q < max_p + param
    if kind == Kind.MINUS_MAX_P_PLUS:
        return q > max_p + param
    if kind == Kind.PRIMAL:
        return (cumulative_mass_below(p, p_logits) <= param) | (param >= 1)
    raise ValueError(f"{kind!r} is not a deferral rule")


def cumulative_mass_below(p: Tensor, p_logits: Tensor) -> Tensor:
    """``C_v = Σ_{u: x_u ≤ x_v} p_u`` ``[N, V]`` with ``x`` the raw logits of p: p rises
    with x, and ranking by x makes tokens with equal logits (−0 = +0) a tie group that
    shares one C, deferred together or not at all.  Ranking by the rounded p instead
    would also tie distinct logits whose p round alike, which depends on each backend's
    exp (docs/design.md §1.4)."""
    x = p_logits.float() + 0.0  # −0 + 0 = +0
    order = torch.sort(x, dim=-1, stable=True)
    cumulative = p.gather(-1, order.indices).cumsum(-1)
    last_of_tie = torch.searchsorted(order.values, x, right=True) - 1
    return cumulative.gather(-1, last_of_tie)


def deferred_mass(p: Tensor, d: Tensor) -> Tensor:
    """``α = Σ_v p_v d_v``, ``[N]``, written as ``S_d / (S_d + S_kept)`` so that deferring
    nothing gives exactly 0 and deferring everything exactly 1 in floating point."""
    deferred = (p * d).sum(-1)
    kept = (p * ~d).sum(-1)
    return deferred / (deferred + kept)


def implicit_reward(p_logits: Tensor, q_logits: Tensor, ref_logits: Tensor, temperature: Tensor) -> Tensor:
    """``π ∝ p · q / q_ref`` ``[N, V]`` in log space; tokens with ``q_ref = 0`` get
    ``π = 0``, and a row where no token has ``p q > 0`` is uniform.

    Below T = 1 the score is formed as ``T·(log p + log q − log q_ref)``, each term
    ``(x − max) − T·log Σ exp((x − max)/T)`` finite wherever ``x − max`` is, and divided
    by T only in the final softmax: ``log p`` itself overflows to −inf away from p's
    arg-max once ``|x − max|/T`` passes fp32's range (T ≈ 1e-38), which would leave
    no token with ``p q > 0`` instead of the arg-max of ``x_p + x_q − x_ref``."""
    t = row_temperature(temperature)  # [N, 1]
    scale = t.clamp(max=1.0)  # the score is scale · log π + a row constant

    def scaled_log_probs(logits: Tensor) -> Tensor:  # scale · log softmax(logits / T)
        shifted = shifted_logits(logits)
        tempered = shifted / t
        return torch.where(t < 1, shifted, tempered) - scale * torch.logsumexp(tempered, -1, keepdim=True)

    log_p, log_q, log_ref = (scaled_log_probs(x) for x in (p_logits, q_logits, ref_logits))
    score = torch.where(log_ref > NEG_INF, log_p + log_q - log_ref, NEG_INF)
    uniform = torch.full_like(score, 1.0 / score.shape[-1])
    defined = (score > NEG_INF).any(-1, keepdim=True)
    return torch.where(defined, torch.softmax(tempered_logits(score, scale[:, 0]), -1), uniform)


def mixture(
    kind: Kind,
    param: Tensor,
    p_logits: Tensor,
    q_logits: Tensor,
    ref_logits: Tensor | None,
    temperature: Tensor,
) -> tuple[Tensor, Tensor]:
    """``π_v = p_v (1 − d_v) + α q_v`` and ``α``: ``([N, V], [N])`` in fp32."""
    if kind == Kind.IMPLICIT_REWARD:
        assert ref_logits is not None  # the rule needs_ref: _validate.logits refuses a call without them
        pi = implicit_reward(p_logits, q_logits, ref_logits, temperature)
        return pi, torch.zeros(pi.shape[0], device=pi.device, dtype=torch.float32)
    p = probs(p_logits, temperature)
    q = probs(q_logits, temperature)
    d = deferral_mask(kind, param, p, q, p_logits)
    alpha = deferred_mass(p, d)
    return p * ~d + alpha[:, None] * q, alpha


def inverse_cdf(weights: Tensor, u: Tensor) -> Tensor:
    """Smallest ``v`` with ``Σ_{w ≤ v} weights_w > u · Σ weights``, int64 ``[N]``.

    ``u`` in [0, 1); if rounding puts ``u · Σ`` at the very top, the last token of
    positive weight is taken, so a zero-weight token is never returned."""
    cdf = weights.cumsum(-1)
    target = u.float()[:, None] * cdf.amax(-1, keepdim=True)  # the last entry: cdf is non-decreasing
    token = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    last_positive = weights.shape[-1] - 1 - (weights > 0).flip(-1).int().argmax(-1)
    return torch.minimum(token, last_positive)


def sample(
    kind: Kind,
    param: Tensor,
    p_logits: Tensor,
    q_logits: Tensor,
    ref_logits: Tensor | None,
    temperature: Tensor,
    uniforms: Tensor,
) -> Tensor:
    """One token per row from π, int64 ``[N]``: inverse CDF at ``uniforms`` ``[N]``,
    arg-max of π (lowest index on ties) on greedy rows."""
    pi, _ = mixture(kind, param, p_logits, q_logits, ref_logits, temperature)
    return torch.where(temperature == 0, pi.argmax(-1), inverse_cdf(pi, uniforms))


def verify(
    kind: Kind,
    param: Tensor,
    p_logits: Tensor,
    q_logits: Tensor,
    ref_logits: Tensor | None,
    draft_tokens: Tensor,
    temperature: Tensor,
    accept_uniforms: Tensor,
    draw_uniforms: Tensor,
) -> tuple[Tensor, Tensor]:
    """Speculative verification of ``draft_tokens`` ``[B, γ]`` drawn from q, target π.

    Logits are ``[B, γ+1, V]``, ``param``/``temperature``/``draw_uniforms`` ``[B]``,
    ``accept_uniforms`` ``[B, γ]``.  Returns ``tokens`` int64 ``[B, γ+1]`` (−1 after
    the emitted ones) and ``num_accepted`` int64 ``[B]``.
    """
    batch, positions, vocab = p_logits.shape
    gamma = positions - 1
    flat_t = temperature.repeat_interleave(positions)

    def flat(x: Tensor) -> Tensor:
        return x.reshape(batch * positions, vocab)

    flat_ref = None if ref_logits is None else flat(ref_logits)
    pi, _ = mixture(kind, param.repeat_interleave(positions), flat(p_logits), flat(q_logits), flat_ref, flat_t)
    pi = pi.view(batch, positions, vocab)
    q = probs(flat(q_logits), flat_t).view(batch, positions, vocab)
    greedy = temperature == 0
    draft = draft_tokens.long()

    # Accept x_i with probability min(1, π_i(x_i) / q_i(x_i)); greedy rows iff x_i = argmax π_i.
    pi_x = pi[:, :gamma].gather(-1, draft[..., None]).squeeze(-1)
    q_x = q[:, :gamma].gather(-1, draft[..., None]).squeeze(-1)
    target_argmax = pi.argmax(-1)
    accepted = torch.where(greedy[:, None], draft == target_argmax[:, :gamma], accept_uniforms * q_x < pi_x)
    num_accepted = accepted.long().cumprod(-1).sum(-1)

    # One draw at position n = num_accepted: the residual max(π − q, 0) after a
    # rejection (π itself if the residual is empty), π_γ for the bonus token.
    rows = torch.arange(batch, device=pi.device)
    pi_n, q_n = pi[rows, num_accepted], q[rows, num_accepted]
    residual = torch.clamp(pi_n - q_n, min=0)
    use_residual = (num_accepted < gamma) & (residual.sum(-1) > 0)
    weights = torch.where(use_residual[:, None], residual, pi_n)
    last = torch.where(greedy, target_argmax[rows, num_accepted], inverse_cdf(weights, draw_uniforms))

    index = torch.arange(positions, device=pi.device)
    drafts_padded = torch.cat([draft, draft.new_full((batch, 1), -1)], dim=1)
    tokens = torch.where(index < num_accepted[:, None], drafts_padded, -1)
    tokens = torch.where(index == num_accepted[:, None], last[:, None], tokens)
    return tokens, num_accepted
