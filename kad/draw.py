"""Drawing from π = p⊙(1−d) + α q with the aligned model's q only where it matters.

For a rule whose mask ``d`` depends on p alone (``rule.mask_from_p``: the dual
rules, primal, nudging), α = Σ_v p_v d_v is known before q, and π is a mixture::

    π = (1 − α) · κ + α · q,        κ = p⊙(1−d) / (1 − α)   (p's kept tokens)

so one uniform ``u`` draws exactly from π: ``u < α`` picks q's branch (drawn with
``u / α``), otherwise κ's (drawn with ``(u − α) / (1 − α)``).  Only rows in q's
branch, a fraction α of them on average, need the aligned model.  A greedy row
needs no q when its best kept token beats every other by more than α:
``κ₁ > κ₂ + α`` (κ unnormalized) bounds ``π_v ≤ p_v(1−d_v) + α`` for every other
token, so the arg-max of π is the best kept token whatever q is.

The decoding loop (:mod:`kad.loop`) draws every sequential step this way, and
the bonus token of a speculative round, and runs the aligned model only when a
row is left undecided; with α ≈ 0.06 (dual λ = 0.4 on the default pair) that is
a few steps in a hundred.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import kad_kernels as kk
from kad_kernels import reference

# Defers nothing (no p_v < 0): sample(x, x, ONE_MODEL) draws from softmax(x / T).
ONE_MODEL = kk.Dual(0.0)


@dataclass
class PartialDraw:
    """What p decided of a draw from π, ``[N]`` each.

    ``tokens``: i64, the drawn token or −1 where the row needs q; ``needs_q``: bool;
    ``alpha``: f32, the deferred mass; ``q_uniforms``: f32, the uniform a sampled
    row in q's branch draws q with (``None`` for greedy draws)."""

    tokens: Tensor
    needs_q: Tensor
    alpha: Tensor
    q_uniforms: Tensor | None


def draw_from_p(p_logits: Tensor, rule: kk.Rule, temperature: float, uniforms: Tensor | None) -> PartialDraw:
    """The part of a draw from π that p alone decides, for ``p_logits`` ``[N, V]``.

    ``rule.mask_from_p`` must hold; ``uniforms`` f32 ``[N]`` (one per row, from
    the caller's generator) unless ``temperature`` is 0 (greedy)."""
    assert rule.mask_from_p, rule
    tempered = 1.0 if temperature == 0 else temperature  # greedy: π at T = 1, as the kernels take it
    # π with q = p is p⊙(1−d) + α p: kept tokens carry (1 + α) p_v, deferred ones α p_v.
    mixed = kk.mixture(p_logits, p_logits, rule, tempered, check=False)
    alpha = mixed.alpha
    p = reference.probs(p_logits, torch.full(p_logits.shape[:1], tempered, device=p_logits.device, dtype=torch.float32))  # [N, V]
    kept = p.masked_fill(mixed.probs < p * (alpha[:, None] + 0.5), 0.0)  # p⊙(1−d)
    if temperature == 0:
        return _greedy(kept, alpha)
    assert uniforms is not None, "a sampled draw takes its uniforms"
    needs_q = uniforms < alpha
    tokens = torch.full_like(alpha, -1, dtype=torch.long)
    rows = (~needs_q).nonzero()[:, 0]
    if rows.numel():
        u = ((uniforms[rows] - alpha[rows]) / (1 - alpha[rows])).clamp(0.0, 1.0 - 2**-24)
        log_kept = kept[rows].log()
        tokens[rows] = kk.sample(log_kept, log_kept, ONE_MODEL, 1.0, uniforms=u, check=False)
    q_uniforms = (uniforms / alpha.clamp_min(torch.finfo(torch.float32).tiny)).clamp(0.0, 1.0 - 2**-24)
    return PartialDraw(tokens, needs_q, alpha, q_uniforms)


def _greedy(kept: Tensor, alpha: Tensor) -> PartialDraw:
    """Arg-max of π where the best kept token wins whatever q is."""
    top = kept.topk(min(2, kept.shape[-1]), dim=-1)
    second = top.values[:, 1] if kept.shape[-1] > 1 else torch.zeros_like(alpha)
    decided = top.values[:, 0] > second + alpha
    tokens = torch.where(decided, top.indices[:, 0], torch.full_like(top.indices[:, 0], -1))
    return PartialDraw(tokens, ~decided, alpha, None)


def finish_with_q(
    draw: PartialDraw, rows: Tensor, p_logits: Tensor, q_logits: Tensor, rule: kk.Rule, temperature: float
) -> Tensor:
    """The tokens of ``rows`` (i64 ``[R]``, rows that need q) from their logits ``[R, V]``:
    q's branch of a sampled row, the arg-max of π of a greedy one."""
    if temperature == 0:  # uniforms the greedy rows ignore, rather than a draw from torch's default generator
        ignored = torch.zeros(p_logits.shape[0], device=p_logits.device, dtype=torch.float32)
        return kk.sample(p_logits, q_logits, rule, 0.0, uniforms=ignored, check=False)
    assert draw.q_uniforms is not None  # a sampled draw has them (partial_draw)
    return kk.sample(q_logits, q_logits, ONE_MODEL, temperature, uniforms=draw.q_uniforms[rows], check=False)
