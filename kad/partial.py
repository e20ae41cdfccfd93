"""KAD from a base model's top-k log-probabilities: the row the kernels get, and when it is exact.

A served model (:mod:`kad.engines.remote`) returns, per position, the log-probabilities
of its k most likely tokens (plus, from vLLM, the token it sampled).  KAD needs much
less than the whole row:  π = p⊙(1−d) + α q  reads p only on the **kept** tokens K
(d_v = 0) and through the deferred mass α = 1 − Σ_{v∈K} p_v.  So the result is exact
whenever every kept token is among the returned ones and the rule's decisions on the
returned tokens do not depend on the missing ones.  With ``b`` the k-th largest
returned probability (every token not returned has ``p_v ≤ b``), ``m`` the mass not
returned, ``P = max p`` and ``S = Σ p_v²``, per rule at T = 1 (greedy rows take π at
T = 1 too):

==============================  =================================================
rule (kept iff)                 exact iff
==============================  =================================================
dual logistic (p_v ≥ λ)         b < λ
dual perceptron (P − p_v ≤ μ)   b < P − μ
dual zero-one (p_v = P, μ < 1)  b < P;  μ ≥ 1 keeps everything: m = 0
dual squared (p_v ≥ t,          b < t₋ and no returned p_v in [t₋, t₊), where
t = (1 + S − μ)/2)              t± bound t: S₋ = Σ_returned p² ≤ S ≤ S₋ + b·m
primal (C_v > budget)           m + Σ_{returned p_v ≤ b} p_v ≤ budget: every token at
                                or below b is deferred, the rest's C_v are known
nudging (all kept iff P ≥ λ)    P < λ (π = q); otherwise π = p needs m = 0
==============================  =================================================

Greedy rows (T = 0) take the arg-max of these π.  One more case is exact for them:
λ = 0 defers nothing (π = p, the ``base`` mode), and ``b < P`` puts p's arg-max among
the returned tokens, above every token left out.

The row handed to the kernels (:func:`completed_logits`) has the returned
log-probabilities and spreads ``m`` evenly over the other tokens; each of those gets
at most ``b`` (an average of values ≤ b) and they keep their total ``m``, so when the
condition holds the kernels take the same decisions on it as on the true row and π
is the same.  Other temperatures need Σ_v p_v^(1/T) over the whole row and are never
exact; the q-dependent threshold rules and ImplicitReward are not handled here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import kad_kernels as kk
from kad_kernels.rules import Kind

# Rule kinds this module can judge.
SUPPORTED = frozenset({Kind.LOGISTIC, Kind.PERCEPTRON, Kind.ZERO_ONE, Kind.SQUARED, Kind.PRIMAL, Kind.NUDGING})


@dataclass
class TopK:
    """Returned log-probabilities of ``N`` positions, ``n`` entries each (padded).

    ``ids`` i64 ``[N, n]`` (−1 where a row returned fewer), ``logprobs`` f32 ``[N, n]``
    (−inf there), ``k``: how many of each row's entries are its k largest (the server's
    top-k; vLLM adds the sampled token when it is not among them)."""

    ids: Tensor
    logprobs: Tensor
    k: int

    @property
    def probs(self) -> Tensor:
        return self.logprobs.double().exp()

    def bound(self) -> Tensor:
        """f64 ``[N]``: the k-th largest returned probability; no token left out is likelier."""
        top = self.probs.topk(min(self.k, self.probs.shape[1]), dim=1).values
        return top[:, -1]

    def missing_mass(self) -> Tensor:
        """f64 ``[N]``: the probability of the tokens not returned (≥ 0)."""
        return (1.0 - self.probs.sum(1)).clamp_min(0.0)


def completed_logits(top: TopK, vocab_size: int) -> Tensor:
    """f32 ``[N, V]``: the returned log-probabilities, the missing mass spread evenly over
    the other tokens of the vocabulary (ids ≥ V are dropped: beyond the shared vocabulary)."""
    rows, vocab = top.ids.shape[0], vocab_size
    inside = (top.ids >= 0) & (top.ids < vocab)
    returned = inside.sum(1)
    spread = (top.missing_mass() / (vocab - returned).clamp_min(1)).log()
    logits = spread[:, None].expand(rows, vocab).clone()
    row_index = torch.arange(rows)[:, None].expand_as(top.ids)
    logits[row_index[inside], top.ids[inside]] = top.logprobs.double()[inside]
    return logits.float()


def decided_by_top_k(rule: kk.Rule, temperature: float) -> bool:
    """Whether a large enough top-k (short of the whole row) can make π exact: only at T = 0
    or 1 (π at another temperature needs every logit) and for rules of p alone."""
    return temperature in (0.0, 1.0) and rule.kind in SUPPORTED


def exact(rule: kk.Rule, temperature: float, top: TopK, vocab_size: int) -> Tensor:
    """bool ``[N]``: whether π from :func:`completed_logits` is π of the true rows."""
    rows = top.ids.shape[0]
    complete = ((top.ids >= 0) & (top.ids < vocab_size)).sum(1) >= vocab_size  # every token returned
    if not decided_by_top_k(rule, temperature):
        return complete
    _, param = rule.spec(rows, torch.device("cpu"))
    param = param.double() if isinstance(param, Tensor) else torch.full((rows,), float(param), dtype=torch.float64)
    probs, b, m = top.probs, top.bound(), top.missing_mass()
    top1 = probs.max(1).values
    if rule.kind == Kind.LOGISTIC:
        # λ = 0 defers nothing (π = p: the base mode); a greedy row then needs only p's arg-max.
        greedy_of_p = (temperature == 0.0) & (param == 0) & (b < top1)
        return complete | (b < param) | greedy_of_p
    if rule.kind == Kind.PERCEPTRON:
        return complete | (b < top1 - param)
    if rule.kind == Kind.ZERO_ONE:
        return complete | ((param < 1) & (b < top1))
    if rule.kind == Kind.SQUARED:
        known = (probs * probs).sum(1)
        low, high = (1 + known - param) / 2, (1 + known + b * m - param) / 2
        ambiguous = ((probs >= low[:, None]) & (probs < high[:, None])).any(1)
        return complete | ((b < low) & ~ambiguous)
    if rule.kind == Kind.PRIMAL:
        at_or_below = (probs * (probs <= b[:, None])).sum(1)
        return complete | (m + at_or_below <= param)
    return complete | (top1 < param)  # NUDGING
