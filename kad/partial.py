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
dual zero-one (p_v = P, μ < 1)  b < P;  μ ≥ 1 keeps everything: the whole row
dual squared (p_v ≥ t,          b < t₋ and no returned p_v in [t₋, t₊), where
t = (1 + S − μ)/2)              t± bound t: S₋ = Σ_returned p² ≤ S ≤ S₋ + b·m
primal (C_v > budget)           m + Σ_{returned p_v ≤ b} p_v ≤ budget: every token at
                                or below b is deferred, the rest's C_v are known
nudging (all kept iff P ≥ λ)    P < λ (π = q); otherwise π = p needs the whole row
==============================  =================================================

Greedy rows (T = 0) take the arg-max of these π.  One more case is exact for them: a
rule that keeps every token (π = p: dual logistic λ = 0, the ``base`` mode; perceptron
μ ≥ P; zero-one μ ≥ 1; squared μ ≥ 1 + S₋ + b·m, so t ≤ 0; primal budget 0; nudging
P ≥ λ) needs only p's arg-max, which ``b < P`` puts among the returned tokens, above
every token left out.

Tokens of the served model beyond the shared vocabulary (padded lm_head rows) are
dropped, as the local engine drops them before its softmax: p is renormalised over the
shared vocabulary (divided by ``1 − o``, ``o`` the returned mass beyond it), and the
conditions above are judged on that p, with ``b`` and ``m`` divided likewise (only
where ``o ≤ 1/2``: the division magnifies the server's rounding of p as well).

The row handed to the kernels (:func:`completed_logits`) has the returned
log-probabilities and spreads ``m`` evenly over the other tokens; each of those gets
at most ``b`` (an average of values ≤ b) and they keep their total ``m``, so when the
condition holds the kernels take the same decisions on it as on the true row and π
is the same.  Other temperatures need Σ_v p_v^(1/T) over the whole row and are never
exact; the q-dependent threshold rules and ImplicitReward are not handled here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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

    def padded(self, width: int) -> tuple[Tensor, Tensor]:
        """``ids`` and ``logprobs`` padded to ``[N, width]`` (−1 and −inf: no entry)."""
        extra = width - self.ids.shape[1]
        ids = torch.nn.functional.pad(self.ids, (0, extra), value=-1)
        logprobs = torch.nn.functional.pad(self.logprobs, (0, extra), value=-math.inf)
        return ids, logprobs


def concatenate(parts: Sequence[TopK]) -> TopK:
    """The rows of ``parts`` in order (widths padded to match); the smallest k of them is
    every row's valid bound."""
    width = max(part.ids.shape[1] for part in parts)
    padded = [part.padded(width) for part in parts]
    ids, logprobs = (torch.cat(tensors) for tensors in zip(*padded))
    return TopK(ids, logprobs, min(part.k for part in parts))


def replace_rows(top: TopK, rows: Sequence[int], new: TopK) -> TopK:
    """``top`` with ``rows`` replaced by ``new``'s (widths padded to match)."""
    width = max(top.ids.shape[1], new.ids.shape[1])
    ids, logprobs = top.padded(width)
    new_ids, new_logprobs = new.padded(width)
    ids[list(rows)], logprobs[list(rows)] = new_ids, new_logprobs
    return TopK(ids, logprobs, top.k)  # rows keep their own k: the smaller is a valid bound


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
    """bool ``[N]``: whether π from :func:`completed_logits` is π of the true rows (at
    ``temperature`` 0, whether its arg-max is theirs)."""
    rows = top.ids.shape[0]
    inside = (top.ids >= 0) & (top.ids < vocab_size)
    complete = inside.sum(1) >= vocab_size  # every token returned
    if not decided_by_top_k(rule, temperature):
        return complete
    _, param = rule.spec(rows, torch.device("cpu"))
    param = param.double() if isinstance(param, Tensor) else torch.full((rows,), float(param), dtype=torch.float64)
    # p over the shared vocabulary: the returned mass beyond it (o) is dropped, the rest scaled by 1 / (1 − o).
    # That scale magnifies the server's rounding too: rows with o > 1/2 are not judged.
    probs = top.probs
    shared = 1.0 - (probs * ~inside).sum(1)
    scale = 1.0 / shared.clamp_min(0.5)
    probs, b, m = probs * inside * scale[:, None], top.bound() * scale, top.missing_mass() * scale
    top1 = probs.max(1).values
    if rule.kind == Kind.LOGISTIC:
        decided, keeps_all = b < param, param == 0
    elif rule.kind == Kind.PERCEPTRON:
        decided, keeps_all = b < top1 - param, top1 <= param  # P − p_v ≤ P ≤ μ
    elif rule.kind == Kind.ZERO_ONE:
        decided, keeps_all = (param < 1) & (b < top1), param >= 1
    elif rule.kind == Kind.SQUARED:
        known = (probs * probs).sum(1)
        low, high = (1 + known - param) / 2, (1 + known + b * m - param) / 2
        ambiguous = ((probs >= low[:, None]) & (probs < high[:, None])).any(1)
        decided, keeps_all = (b < low) & ~ambiguous, high <= 0  # t ≤ t₊ ≤ 0 ≤ p_v
    elif rule.kind == Kind.PRIMAL:
        at_or_below = (probs * (probs <= b[:, None])).sum(1)
        decided, keeps_all = m + at_or_below <= param, param == 0  # C_v ≤ 0: only tokens of p_v = 0
    else:  # NUDGING: π = q when P < λ, else π = p (a token beyond the vocabulary may have crowded P out: P ≤ b)
        decided, keeps_all = torch.maximum(top1, b) < param, top1 >= param
    # A rule that keeps every token (π = p): a greedy row needs only p's arg-max, above every token left out.
    greedy_of_p = (temperature == 0.0) & keeps_all & (b < top1)
    return complete | ((decided | greedy_of_p) & (shared >= 0.5))
