"""kad/partial.py: π from a base row's top-k log-probabilities, against π from the whole row.

The property that matters: wherever :func:`kad.partial.exact` says a row is exact,
the kernels give the same mixture, α and greedy token on the completed row as on
the true one, for any q.  The rows are random with every kind of peakedness,
−inf entries, exact ties at the k-th value, and (as vLLM does) the sampled token
added when it is not among the top k.
"""

from __future__ import annotations

import pytest
import torch

import kad_kernels as kk
from kad.partial import TopK, completed_logits, exact

V = 50
ROWS = 600
K = 8

# (rule, whether these rows include inexact ones): with V = 50 and k = 8 some rules
# can never miss a kept token (8 tokens cannot all reach p = 0.3).
RULES = [
    (kk.Dual(0.3), False),
    (kk.Dual(0.02), True),
    (kk.Dual(mu=0.2, loss="perceptron"), True),
    (kk.Dual(mu=0.5, loss="zero_one"), False),
    (kk.Dual(mu=0.95, loss="squared"), True),
    (kk.Dual(mu=1.1, loss="squared"), True),
    (kk.Primal(0.2), True),
    (kk.Primal(0.5), True),
    (kk.Primal(0.9), False),
    (kk.Nudging(0.5), True),
]


def _rows(seed: int) -> torch.Tensor:
    """True logits ``[ROWS, V]``: flat to one-hot-like, some −inf, some tied at the k-th value."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 1.2, ROWS)[:, None]
    logits = torch.randn(ROWS, V, generator=generator) * scale
    logits[::7, -5:] = float("-inf")
    tied = logits[1::5]
    kth = tied.sort(dim=1, descending=True).values[:, K - 1 : K]
    tied[:, :3] = torch.where(tied[:, :3] < kth, kth, tied[:, :3])  # ties across the top-k boundary
    logits[1::5] = tied
    return logits


def _top_k(logits: torch.Tensor, seed: int) -> TopK:
    """What a server returns: the top K log-probabilities, plus a sampled token outside them."""
    logprobs = torch.log_softmax(logits.double(), dim=-1).float()
    top = logprobs.topk(K, dim=1)
    generator = torch.Generator().manual_seed(seed)
    sampled = torch.multinomial(logprobs.exp(), 1, generator=generator)
    outside = ~(top.indices == sampled).any(1, keepdim=True)
    ids = torch.cat([top.indices, torch.where(outside, sampled, -1)], dim=1)
    values = torch.cat([top.values, torch.where(outside, logprobs.gather(1, sampled), float("-inf"))], dim=1)
    return TopK(ids, values, K)


@pytest.mark.parametrize("rule, mixed", RULES, ids=[repr(r) for r, _ in RULES])
def test_exact_rows_give_the_mixture_of_the_whole_row(rule, mixed):
    logits = _rows(0)
    top = _top_k(logits, 1)
    is_exact = exact(rule, 1.0, top, V)
    assert 0 < int(is_exact.sum()) and (int(is_exact.sum()) < ROWS) == mixed
    completed = completed_logits(top, V)
    q = torch.randn(ROWS, V, generator=torch.Generator().manual_seed(2)) * 3
    true, approx = kk.mixture(logits, q, rule), kk.mixture(completed, q, rule)
    torch.testing.assert_close(approx.probs[is_exact], true.probs[is_exact], atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(approx.alpha[is_exact], true.alpha[is_exact], atol=2e-6, rtol=1e-4)
    greedy_true, greedy_approx = kk.sample(logits, q, rule, 0.0), kk.sample(completed, q, rule, 0.0)
    assert torch.equal(greedy_approx[is_exact], greedy_true[is_exact])
    # Not vacuous: rows the check turns down do differ.
    differ = (approx.probs - true.probs).abs().amax(1) > 1e-3
    assert (differ & ~is_exact).any() == mixed


def test_other_temperatures_and_q_dependent_rules_are_never_exact():
    top = _top_k(_rows(3), 4)
    assert not exact(kk.Dual(0.3), 0.7, top, V).any()
    assert not exact(kk.Threshold(0.1, "max_q_minus"), 1.0, top, V).any()
    assert not exact(kk.ImplicitReward(), 1.0, top, V).any()
    assert exact(kk.Dual(0.3), 0.0, top, V).any()  # greedy reads π at T = 1


def test_a_row_returned_whole_is_exact_for_every_rule():
    logits = _rows(5)[:20]
    logprobs = torch.log_softmax(logits, dim=-1)
    whole = TopK(torch.arange(V).expand(20, V).clone(), logprobs, V)
    for rule, _ in RULES:
        assert exact(rule, 1.0, whole, V).all(), rule
    torch.testing.assert_close(completed_logits(whole, V).softmax(-1), logits.softmax(-1))


def test_ids_beyond_the_vocabulary_are_dropped():
    top = TopK(torch.tensor([[0, 1, 60]]), torch.tensor([[-0.5, -1.5, -3.0]]), 3)
    row = completed_logits(top, 10)
    assert row.shape == (1, 10) and row[0, 0] == -0.5 and row[0, 1] == -1.5
    assert torch.isfinite(row).all()
