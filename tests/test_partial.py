"""kad/partial.py: π from a base row's top-k log-probabilities, against π from the whole row.

The property that matters: wherever :func:`kad.partial.exact` says a row is exact,
the kernels give the same mixture, α and greedy token on the completed row as on
the true one, for any q.  The rows are random with every kind of peakedness,
−inf entries, exact ties at the k-th value, and (as vLLM does) the sampled token
added when it is not among the top k.  A hypothesis property adds one-row cases
with any k and rule parameters next to where a decision or the exactness
changes (100 × the profile's examples: 3000 in CI; ``KAD_FUZZ_PROFILE=kad-long``
for more, see conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from helpers import FORMULA, ambiguous_rows, softmax
from hypothesis import given, note, settings
from hypothesis import strategies as st

import kad_kernels as kk
from kad.partial import SUPPORTED, TopK, completed_logits, exact
from kad_kernels.rules import Kind

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


def test_other_temperatures_and_q_dependent_rules_are_exact_only_for_whole_rows():
    top = _top_k(_rows(3), 4)
    assert not exact(kk.Dual(0.3), 0.7, top, V).any()
    assert not exact(kk.Threshold(0.1, "max_q_minus"), 1.0, top, V).any()
    assert not exact(kk.ImplicitReward(), 1.0, top, V).any()
    assert exact(kk.Dual(0.3), 0.0, top, V).any()  # greedy reads π at T = 1
    logits = _rows(3)[:4]
    whole = TopK(torch.arange(V).expand(4, V).clone(), torch.log_softmax(logits, dim=-1), V)
    assert exact(kk.Dual(0.3), 0.7, whole, V).all() and exact(kk.ImplicitReward(), 1.0, whole, V).all()


# Rules that keep every token of every row (π = p), one per kind.
KEEP_ALL = [
    kk.Dual(0.0),
    kk.Dual(mu=1.0, loss="perceptron"),  # P − p_v ≤ P ≤ μ
    kk.Dual(mu=1.0, loss="zero_one"),
    kk.Dual(mu=2.5, loss="squared"),  # t = (1 + S − μ)/2 < 0
    kk.Primal(0.0),
    kk.Nudging(0.0),
]


@pytest.mark.parametrize("rule", KEEP_ALL, ids=repr)
def test_greedy_rows_of_a_rule_deferring_nothing_need_only_the_arg_max(rule):
    """A rule that keeps every token (π = p; Dual(0) is the base mode): sampled, π needs the
    whole row; greedy, only p's arg-max, which is among the returned tokens above every
    other once b < P."""
    logits = _rows(6)
    logits[::10, :K] = 100.0  # the top k tied: the k-th is the arg-max, so a token left out may tie it
    top = _top_k(logits, 7)
    assert not exact(rule, 1.0, top, V).any()
    is_exact = exact(rule, 0.0, top, V)
    assert not is_exact[::10].any() and is_exact.sum() > ROWS // 2
    completed = completed_logits(top, V)
    q = torch.randn(ROWS, V, generator=torch.Generator().manual_seed(8)) * 3
    greedy_true, greedy_approx = (kk.sample(x, q, rule, 0.0) for x in (logits, completed))
    assert torch.equal(greedy_approx[is_exact], greedy_true[is_exact])
    assert torch.equal(greedy_true, logits.argmax(1))


def test_greedy_nudging_is_exact_on_steps_that_keep_everything_too():
    """Nudging(λ) keeps every token where P ≥ λ: greedy, those steps need only b < P;
    sampled, only the steps that defer (P < λ) are exact."""
    logits = _rows(9)
    top = _top_k(logits, 10)
    rule = kk.Nudging(0.3)
    peak = logits.softmax(-1).amax(1)
    sampled, greedy = exact(rule, 1.0, top, V), exact(rule, 0.0, top, V)
    assert torch.equal(sampled, peak < 0.3)
    assert (greedy & (peak >= 0.3)).sum() > ROWS // 4 and (greedy | ~sampled).all()
    q = torch.randn(ROWS, V, generator=torch.Generator().manual_seed(11)) * 3
    completed = completed_logits(top, V)
    assert torch.equal(kk.sample(completed, q, rule, 0.0)[greedy], kk.sample(logits, q, rule, 0.0)[greedy])


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


def test_exactness_is_judged_on_p_over_the_shared_vocabulary():
    """Mass the server returns beyond the shared vocabulary is dropped, as the local engine
    drops it: a token left out with p ≤ b < λ may reach λ once p is renormalised, so the
    conditions are judged on the renormalised p."""
    probs = torch.tensor([[0.3, 0.175, 0.175]], dtype=torch.float64)  # token 20 lies beyond V = 5
    top = TopK(torch.tensor([[20, 1, 3]]), probs.log().float(), 3)
    assert not exact(kk.Dual(0.2), 1.0, top, 5).any()  # 0.175 / 0.7 = 0.25 ≥ 0.2: tokens 0, 2, 4 may be kept
    assert exact(kk.Dual(0.26), 1.0, top, 5).all()
    # Over half the mass beyond V: scaled b = 0.05 / 0.5 = 0.1 < 0.3 would pass, but the division
    # would magnify the server's rounding as much; such rows are not judged.
    mostly_beyond = TopK(torch.tensor([[20, 1, 3]]), torch.tensor([[0.6, 0.05, 0.05]]).log(), 3)
    assert not exact(kk.Dual(0.3), 1.0, mostly_beyond, 5).any()
    assert exact(kk.Dual(0.3), 1.0, TopK(mostly_beyond.ids, torch.tensor([[0.4, 0.05, 0.05]]).log(), 3), 5).all()


# ----------------------------------------------------------------------------- property, adversarial parameters

# A parameter 10^-7 to 10^-1 off a value where a decision changes, or on it.
OFFSETS = st.one_of(st.just(0.0), st.builds(lambda sign, e: sign * 10.0**e, st.sampled_from([-1, 1]), st.floats(-7, -1)))


def _parameter(draw, low: float, high: float, critical: float, values: torch.Tensor) -> float:
    """A rule parameter in [low, high]: random, or next to ``critical`` (where exactness
    changes) or to one of ``values`` (where a decision of the row changes)."""
    near = st.one_of(st.just(critical), st.sampled_from(sorted(set(values.tolist()))))
    value = draw(st.one_of(st.floats(low, high), st.builds(lambda v, d: v + d, near, OFFSETS)))
    return min(high, max(low, value))


@st.composite
def served_rows(draw):
    """``(logits [1, V], what a server returns, rule)``: one row of any peakedness, with
    ties and −inf entries; k from 1 to V, vLLM's sampled token added or not; a rule
    whose parameter is random or close to where a decision or the exactness changes.
    Some servers have padded tokens beyond the shared vocabulary: their entries are
    returned too, and the local row (``logits``) leaves them out, as the local engine does."""
    vocab = draw(st.integers(2, 300))
    padded = draw(st.sampled_from([0, 0, 1, 3]))
    k = draw(st.integers(1, vocab + padded))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(vocab + padded, generator=generator, dtype=torch.float64)
    x *= draw(st.sampled_from([0.0, 0.1, 1.0, 3.0, 10.0, 30.0]))
    if draw(st.booleans()):
        x = (x * 2).round() / 2  # ties
    if draw(st.booleans()):
        x[torch.randperm(vocab, generator=generator)[: draw(st.integers(1, vocab - 1))]] = float("-inf")
    served = x.float()[None]
    logprobs = torch.log_softmax(served.double(), dim=-1).float()
    top = logprobs.topk(k, dim=1)
    ids, values = top.indices, top.values
    if draw(st.booleans()):  # vLLM adds the token it sampled when it is not among the top k
        sampled = torch.multinomial(logprobs.double().exp(), 1, generator=generator)
        outside = ~(ids == sampled).any(1, keepdim=True)
        ids = torch.cat([ids, torch.where(outside, sampled, -1)], dim=1)
        values = torch.cat([values, torch.where(outside, logprobs.gather(1, sampled), float("-inf"))], dim=1)
    beyond = [v for v in range(vocab, vocab + padded) if v not in ids[0].tolist()]  # the padded tokens' entries
    ids, values = torch.cat([ids, torch.tensor([beyond], dtype=torch.long)], dim=1), torch.cat([values, logprobs[:, beyond]], dim=1)

    logits = served[:, :vocab]
    # p as the server's (fp32) log-probabilities give it, over the shared vocabulary, like b
    shared = max(1.0 - float(logprobs[0, vocab:].double().exp().sum()), 1e-300)
    p = logprobs[0, :vocab].double().exp() / shared
    b, top1, squares = float(top.values[0, -1].double().exp()) / shared, float(p.max()), float(p.square().sum())
    cumulative = p.sort().values.cumsum(0)  # C at each token, least likely first
    kind = draw(st.sampled_from(sorted(SUPPORTED, key=lambda kind: kind.value)))
    if kind == Kind.LOGISTIC:  # kept iff p_v >= λ; exact iff b < λ
        rule = kk.Dual(_parameter(draw, 0.0, 1.0, b, p))
    elif kind == Kind.PERCEPTRON:  # kept iff p_v >= P − μ; exact iff b < P − μ; all kept iff P <= μ
        rule = kk.Dual(mu=_parameter(draw, 0.0, 1.0, draw(st.sampled_from([top1 - b, top1])), top1 - p), loss="perceptron")
    elif kind == Kind.ZERO_ONE:  # μ < 1 keeps the arg-max, μ >= 1 everything
        rule = kk.Dual(mu=draw(st.one_of(st.just(1.0), st.floats(0.0, 2.0))), loss="zero_one")
    elif kind == Kind.SQUARED:  # kept iff p_v >= t = (1 + S − μ)/2: μ that puts t on b, on a p_v or on 0
        critical = draw(st.sampled_from([1 + squares - 2 * b, 1 + squares]))
        rule = kk.Dual(mu=_parameter(draw, 0.0, 2.0, critical, 1 + squares - 2 * p), loss="squared")
    elif kind == Kind.PRIMAL:  # exact iff the mass at or below b fits the budget
        rule = kk.Primal(_parameter(draw, 0.0, 1.2, float(p[p <= b].sum()), cumulative))
    else:  # NUDGING: everything kept iff P >= λ
        rule = kk.Nudging(_parameter(draw, 0.0, 1.0, top1, p))
    return logits, TopK(ids, values, k), rule


@settings(max_examples=100 * settings.default.max_examples)
@given(case=served_rows())
def test_exact_says_exact_only_where_the_top_k_gives_the_mixture(case):
    logits, top, rule = case
    vocab = logits.shape[1]
    note(f"{rule!r}, V = {vocab}, k = {top.k}, ids {top.ids.tolist()}")
    sampled, greedy = bool(exact(rule, 1.0, top, vocab)[0]), bool(exact(rule, 0.0, top, vocab)[0])
    if not greedy:
        assert not sampled  # greedy reads π at T = 1
        return
    completed = completed_logits(top, vocab)
    q = torch.randn(1, vocab, generator=torch.Generator().manual_seed(vocab)) * 3
    _, param = rule.spec(1, torch.device("cpu"))
    for row in (logits, completed):  # a decision within fp32 rounding of its threshold: no promise
        p64, q64 = (softmax(x, dtype=torch.float64) for x in (row, q))
        if ambiguous_rows(FORMULA[rule.kind], float(param), p64, q64, p_logits=row)[0]:
            return
    true, approx = kk.mixture(logits, q, rule), kk.mixture(completed, q, rule)
    if sampled:
        torch.testing.assert_close(approx.probs, true.probs, atol=2e-6, rtol=1e-4)
        torch.testing.assert_close(approx.alpha, true.alpha, atol=2e-6, rtol=1e-4)
    first, second = true.probs[0].double().topk(2).values.tolist()
    if first - second > 1e-5:
        assert torch.equal(kk.sample(completed, q, rule, 0.0), kk.sample(logits, q, rule, 0.0))


def test_the_kinds_served_exactly_are_those_whose_mask_reads_p_alone():
    """``SUPPORTED`` (what a server's top-k can score) and ``Rule.mask_from_p`` (what the loop's
    speculative shortcuts rely on) state one fact twice: a rule of every kind holds them together."""
    from kad_kernels.rules import _FORM_KIND, _LOSS_KIND

    rules = [kk.Dual(mu=0.5, loss=loss) for loss in _LOSS_KIND] + [kk.Threshold(0.3, form) for form in _FORM_KIND]
    rules += [kk.Primal(0.3), kk.Nudging(0.3), kk.ImplicitReward()]
    assert {rule.kind for rule in rules} == set(Kind)  # one of every kind
    assert {rule.kind for rule in rules if rule.mask_from_p} == SUPPORTED
