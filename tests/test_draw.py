"""kad/draw.py: a draw from π that needs q only in q's branch, checked against π itself.

π comes from ``kk.mixture`` (the kernels' reference semantics); the draw is p's
kept part with probability 1 − α and q with probability α, so the drawn tokens
must follow π for every rule whose mask depends on p alone, and greedy rows that
p decides must give the arg-max of π whatever q is.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

import kad_kernels as kk
from kad.draw import draw_from_p, finish_with_q

V = 9
ROWS = 4  # distinct rows: peaked, flat, with -inf entries, with tied logits
COPIES = 6000  # i.i.d. draws per row

RULES = [
    kk.Dual(0.3),
    kk.Dual(mu=0.2, loss="perceptron"),
    kk.Dual(mu=0.0, loss="zero_one"),
    kk.Dual(mu=0.9, loss="squared"),
    kk.Primal(0.5),
    kk.Primal(0.9),
    kk.Nudging(0.6),
]


def _logits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """p and q logits ``[ROWS, V]``."""
    generator = torch.Generator().manual_seed(seed)
    p = torch.randn(ROWS, V, generator=generator) * torch.tensor([[3.0], [0.3], [2.0], [1.0]])
    p[2, :3] = -math.inf
    p[3, 4:8] = p[3, 3]  # ties: primal defers them together or not at all
    q = torch.randn(ROWS, V, generator=generator) * 2
    return p, q


def _draw(p: torch.Tensor, q: torch.Tensor, rule: kk.Rule, temperature: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    uniforms = None if temperature == 0 else torch.rand(p.shape[0], generator=generator)
    draw = draw_from_p(p, rule, temperature, uniforms)
    rows = draw.needs_q.nonzero()[:, 0]
    tokens = draw.tokens.clone()
    if rows.numel():
        tokens[rows] = finish_with_q(draw, rows, p[rows], q[rows], rule, temperature)
    return draw, tokens


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_draws_follow_the_mixture(rule, temperature):
    p, q = _logits(0)
    draw, tokens = _draw(p.repeat_interleave(COPIES, 0), q.repeat_interleave(COPIES, 0), rule, temperature, seed=1)
    pi = kk.mixture(p, q, rule, temperature).probs.double()
    for row in range(ROWS):
        counts = np.bincount(tokens[row * COPIES : (row + 1) * COPIES].numpy(), minlength=V)
        expected = pi[row].numpy() * COPIES
        assert counts[expected == 0].sum() == 0  # never a token π excludes
        big = expected >= 5
        observed = np.append(counts[big], counts[~big].sum())
        wanted = np.append(expected[big], expected[~big].sum())
        keep = wanted > 0
        assert scipy.stats.chisquare(observed[keep], wanted[keep] * observed[keep].sum() / wanted[keep].sum()).pvalue > 1e-4
    # q is needed in a fraction α of the draws (binomial, per row)
    alpha = kk.mixture(p, q, rule, temperature).alpha.double()
    needed = draw.needs_q.view(ROWS, COPIES).sum(1)
    for row in range(ROWS):
        assert scipy.stats.binomtest(int(needed[row]), COPIES, float(alpha[row])).pvalue > 1e-4


def test_the_test_can_fail():
    """Drawing from p alone (what ignoring q's branch would give) is far from π."""
    p, q = _logits(0)
    rule = kk.Dual(0.3)
    pi = kk.mixture(p, q, rule).probs.double()
    p_only = kk.sample(p.repeat_interleave(COPIES, 0), p.repeat_interleave(COPIES, 0), kk.Dual(0.0),
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    counts = np.bincount(p_only[:COPIES].numpy(), minlength=V)
    expected = pi[0].numpy() * COPIES
    assert scipy.stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue < 1e-6


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_greedy_rows_p_decides_are_the_arg_max_of_pi_for_any_q(rule):
    p, _ = _logits(2)
    p = torch.cat([p, p * 4])  # sharper rows: more of them decided by p
    decided_some = False
    for seed in range(5):
        q = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 3
        draw, tokens = _draw(p, q, rule, 0.0, seed)
        assert torch.equal(tokens, kk.sample(p, q, rule, 0.0))
        decided_some |= bool((~draw.needs_q).any())
    assert decided_some


def test_nothing_deferred_needs_no_q_and_everything_deferred_always_does():
    p, q = _logits(3)
    uniforms = torch.rand(ROWS, generator=torch.Generator().manual_seed(0))
    assert not draw_from_p(p, kk.Dual(0.0), 1.0, uniforms).needs_q.any()
    assert draw_from_p(p, kk.Primal(1.0), 1.0, uniforms).needs_q.all()
    draw, tokens = _draw(p, q, kk.Primal(1.0), 0.0, 0)
    assert torch.equal(tokens, q.argmax(-1))
