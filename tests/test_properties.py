"""Properties of the mixture π = p⊙(1−d) + α q (docs/design.md §1) on every backend.

The expected values come from the rules' definitions written out in
``helpers`` (not from ``kad_kernels.reference``); the reference backend is then
the yardstick of every other backend (``test_matches_reference``).
"""

from __future__ import annotations

import math

import pytest
import torch

import kad_kernels as kk
from helpers import (
    DTYPE_PARAMS,
    NEG_INF,
    ambiguous_rows,
    implicit_reward_formula,
    make_logits,
    masked,
    mixture_from_mask,
    neg_inf_mask,
    primal_cumulative,
    primal_mask_loop,
    rule_mask,
    size_params,
    skip_if_too_big,
    softmax,
)
from kad_kernels import Dual, ImplicitReward, Nudging, Primal, Threshold

# Tolerances of fp32 results computed by different code (kernels vs the formulas).
PROBS_TOL = dict(rtol=1e-4, atol=1e-7)
ALPHA_TOL = dict(rtol=0.0, atol=1e-5)
FORMULA_TOL = dict(rtol=1e-5, atol=1e-7)

# id -> (rule, formula name for helpers.rule_mask / ambiguous_rows, parameter)
RULES = {
    "dual": (Dual(0.002), "logistic", 0.002),
    "dual_mu": (Dual(mu=3.0), "logistic", math.exp(-3.0)),
    "perceptron": (Dual(mu=0.01, loss="perceptron"), "perceptron", 0.01),
    "zero_one": (Dual(mu=0.5, loss="zero_one"), "zero_one", 0.5),
    "squared": (Dual(mu=0.99, loss="squared"), "squared", 0.99),
    "primal": (Primal(0.9), "primal", 0.9),
    "nudging": (Nudging(0.1), "max", 0.1),
    "max_q_minus": (Threshold(0.01, "max_q_minus"), "max_q_minus", 0.01),
    "max_q_plus": (Threshold(0.001, "max_q_plus"), "max_q_plus", 0.001),
    "max_p_plus": (Threshold(0.0, "max_p_plus"), "max_p_plus", 0.0),
    "minus_max_p_plus": (Threshold(0.0, "minus_max_p_plus"), "minus_max_p_plus", 0.0),
    "implicit_reward": (ImplicitReward(), None, None),
}
RULE_PARAMS = [pytest.param(key, id=key) for key in RULES]


def _inputs(batch, vocab, *, dtype=torch.float32, device="cpu", seed=0, with_ref=False):
    p = make_logits((batch, vocab), seed=seed, dtype=dtype, device=device)
    q = make_logits((batch, vocab), seed=seed + 1, dtype=dtype, device=device)
    ref = make_logits((batch, vocab), seed=seed + 2, dtype=dtype, device=device) if with_ref else None
    return p, q, ref


def sum_tol(vocab: int) -> float:
    """Σπ = 1 up to fp32 accumulation over V terms (torch's own softmax reaches 1e-5 at V = 152k)."""
    return 1e-6 + 3e-10 * vocab


def _mixture(p, q, rule, temperature=1.0, *, ref=None, backend="torch"):
    mix = kk.mixture(p, q, rule, temperature, ref_logits=ref, backend=backend)
    assert mix.probs.dtype == torch.float32 and mix.alpha.dtype == torch.float32
    assert mix.probs.shape == p.shape and mix.alpha.shape == p.shape[:1]
    assert mix.probs.device == p.device and mix.alpha.device == p.device
    return mix.probs.cpu(), mix.alpha.cpu()


# --------------------------------------------------------------------------- Σπ = 1


@pytest.mark.parametrize("batch,vocab", size_params())
@pytest.mark.parametrize("key", RULE_PARAMS)
def test_mixture_is_a_distribution(backend, device, slow, key, batch, vocab):
    skip_if_too_big(slow, rows=batch, vocab=vocab)
    rule = RULES[key][0]
    p, q, ref = _inputs(batch, vocab, dtype=torch.bfloat16, device=device, seed=10, with_ref=rule.needs_ref)
    probs, alpha = _mixture(p, q, rule, ref=ref, backend=backend)
    assert torch.isfinite(probs).all()
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.double().sum(-1), torch.ones(batch, dtype=torch.float64), rtol=0, atol=sum_tol(vocab))
    assert ((alpha >= 0) & (alpha <= 1)).all()
    if rule.needs_ref:
        assert torch.equal(alpha, torch.zeros(batch)), "ImplicitReward reports alpha = 0"


# --------------------------------------------------------------------------- edge parameters


def _assert_probs_equal(case, probs, expected, what):
    if case.is_reference:
        assert torch.equal(probs, expected), f"{what}: the reference must be exact"
    else:
        torch.testing.assert_close(probs, expected, **PROBS_TOL)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("batch,vocab", size_params())
def test_budget_zero_gives_p(backend_case, slow, batch, vocab, dtype):
    skip_if_too_big(slow, rows=batch, vocab=vocab, dtype=dtype)
    p, q, _ = _inputs(batch, vocab, dtype=dtype, device=backend_case.device, seed=20)
    budgets = [0.0, torch.zeros(batch, device=backend_case.device)] if vocab <= 1000 and not slow else [0.0]
    for budget in budgets:
        probs, alpha = _mixture(p, q, Primal(budget), backend=backend_case.name)
        _assert_probs_equal(backend_case, probs, softmax(p), "budget 0")
        assert torch.equal(alpha, torch.zeros(batch)), "budget 0 defers no mass"


@pytest.mark.parametrize("budget", [1.0, 1.5, math.inf, "tensor"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("batch,vocab", size_params())
def test_budget_at_least_one_gives_q_exactly(backend_case, slow, batch, vocab, dtype, budget):
    skip_if_too_big(slow, rows=batch, vocab=vocab, dtype=dtype)
    if vocab > 1000 and budget in (1.5, math.inf):
        pytest.skip("budgets 1.5 and inf run on small sizes")
    if slow and budget != 1.0:
        pytest.skip("budget 1.0 is enough under the interpreter (per-row budgets: test_per_row_*)")
    device = backend_case.device
    if budget == "tensor":
        budget = torch.linspace(1.0, 3.0, batch, device=device)
    temperature = 0.7
    p, q, _ = _inputs(batch, vocab, dtype=dtype, device=device, seed=30)
    probs, alpha = _mixture(p, q, Primal(budget), temperature, backend=backend_case.name)
    assert torch.equal(alpha, torch.ones(batch)), "budget >= 1 defers everything: alpha == 1 exactly"
    if backend_case.is_reference:
        assert torch.equal(probs, softmax(q, temperature)), "budget >= 1: pi == q exactly"
    else:
        # The backend's own q (p of the swapped call with budget 0), bit for bit.
        own_q, _ = _mixture(q, p, Primal(0.0), temperature, backend=backend_case.name)
        assert torch.equal(probs, own_q), "budget >= 1: pi == q exactly"
        torch.testing.assert_close(probs, softmax(q, temperature), **PROBS_TOL)


@pytest.mark.parametrize("rule", [Dual(0.0), Dual(torch.zeros(5)), Nudging(0.0), Nudging(torch.zeros(5))], ids=repr)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("vocab", [1, 7, 1000, pytest.param(151936, marks=pytest.mark.slow)])
def test_lam_zero_gives_p(backend_case, slow, vocab, dtype, rule):
    batch = 5
    skip_if_too_big(slow, rows=batch, vocab=vocab, dtype=dtype)
    if isinstance(rule.param, torch.Tensor):
        rule = type(rule)(rule.param.to(backend_case.device))
    p, q, _ = _inputs(batch, vocab, dtype=dtype, device=backend_case.device, seed=40)
    probs, alpha = _mixture(p, q, rule, backend=backend_case.name)
    _assert_probs_equal(backend_case, probs, softmax(p), "lam 0")
    assert torch.equal(alpha, torch.zeros(batch))


# --------------------------------------------------------------------------- primal


def _primal_expected_alpha(p: torch.Tensor, p_logits: torch.Tensor, budget: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy-knapsack α in float64 (the largest C_v within the budget, C over tie groups of
    equal logits in logit order) and the rows where some C_v is within 1e-5 of the budget."""
    cumulative = primal_cumulative(p, p_logits)
    alpha = torch.where(cumulative <= budget, cumulative, torch.zeros_like(cumulative)).amax(-1)
    ambiguous = ((cumulative - budget).abs() <= 1e-5).any(-1)
    return alpha, ambiguous


@pytest.mark.parametrize("budget", [0.05, 0.3, 0.9, 0.99])
@pytest.mark.parametrize("batch,vocab", size_params(batches=[5, 64]))
def test_primal_alpha_is_the_greedy_knapsack(backend, device, slow, batch, vocab, budget):
    skip_if_too_big(slow, rows=batch, vocab=vocab)
    p, q, _ = _inputs(batch, vocab, dtype=torch.bfloat16, device=device, seed=50)
    probs, alpha = _mixture(p, q, Primal(budget), backend=backend)
    assert (alpha <= budget + 1e-6).all(), f"alpha {alpha.max().item()} exceeds the budget {budget}"
    expected, ambiguous = _primal_expected_alpha(softmax(p), p, budget)
    rows = ~ambiguous
    assert rows.sum() >= batch // 2
    # α is a ratio of fp32 sums over V terms: their rounding depends on the order of the sums,
    # so on the CPU's vector width and thread count (1.3e-5 at V = 152k on one machine, < 1e-5 on another).
    torch.testing.assert_close(alpha[rows].double(), expected[rows], rtol=0, atol=max(1e-5, sum_tol(vocab)))


def _tie_logits() -> torch.Tensor:
    """One row of 12 logits in tie groups of sizes 3, 2, 4, 1, 2 (exactly equal values)."""
    groups = [(-1.0, 3), (0.0, 2), (0.5, 4), (1.5, 1), (2.0, 2)]
    values = [v for v, n in groups for _ in range(n)]
    perm = torch.randperm(len(values), generator=torch.Generator().manual_seed(0))
    return torch.tensor(values)[perm]


def _inferred_mask(probs, alpha, p, q):
    """``d`` read back from π: deferred tokens have π_v = α q_v, kept ones π_v = p_v + α q_v
    (valid where p_v is far above rounding, as in the tie tests)."""
    rest = probs - alpha[:, None] * q
    return rest.abs() < p / 2


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_primal_defers_ties_together(backend, device, slow, dtype):
    row = _tie_logits()
    n = 16 if slow else 40
    budgets = torch.linspace(0.0, 0.999, n)
    p_logits = row.expand(n, -1).to(dtype).contiguous().to(device)
    q_logits = make_logits((n, 12), seed=60, dtype=dtype, device=device)
    probs, alpha = _mixture(p_logits, q_logits, Primal(budgets.to(device)), backend=backend)
    p, q = softmax(p_logits), softmax(q_logits)
    assert torch.unique(p[0]).numel() == 5, "the tie groups must survive the softmax exactly"
    d = _inferred_mask(probs, alpha, p, q)
    seen = set()
    for b, budget in enumerate(budgets.tolist()):
        for value in torch.unique(p[b]):
            group = d[b][p[b] == value]
            assert group.all() or not group.any(), f"budget {budget}: a tie group was split: {group.tolist()}"
        expected = primal_mask_loop(p[b], budget, p_logits[b].cpu())
        assert torch.equal(d[b], expected), f"budget {budget}: mask {d[b].tolist()} != {expected.tolist()}"
        torch.testing.assert_close(alpha[b].double(), (p[b].double() * expected).sum(), rtol=0, atol=1e-6)
        seen.add(int(expected.sum()))
    assert len(seen) >= 5, "the budgets should walk through several tie groups"


def _tie_heavy_case(name: str) -> tuple[torch.Tensor, float, float]:
    """``(p_logits [B, V], T, budget)`` where ties decide the primal mask: distinct logits
    whose fp32 p round alike, many exactly equal logits, tiny vocabularies."""
    g = torch.Generator().manual_seed(90)
    if name == "distinct-logits-equal-p":  # docs/design.md §1.4: p = [0.5, 0.5], C = [0.5, 1]
        return torch.tensor([[1.17e-7, 1.86e-7]] * 3).bfloat16(), 3.0, 0.9
    if name == "near-constant-bf16":  # a few exact bf16 values, p nearly uniform at T = 100
        return (1.0 + 0.01 * torch.randn(16, 301, generator=g)).bfloat16(), 100.0, 0.05
    if name == "fp16-tiny-V":
        return (3 * torch.randn(16, 31, generator=g)).half(), 1.0, 0.3
    if name == "high-T-fp32":  # distinct fp32 logits, p equal to a few ulps
        return (5.0 + 1e-6 * torch.randn(16, 97, generator=g)), 50.0, 0.5
    raise KeyError(name)


@pytest.mark.parametrize(
    "case", ["distinct-logits-equal-p", "near-constant-bf16", "fp16-tiny-V", "high-T-fp32"]
)
def test_primal_ties_are_equal_logits(backend, device, case):
    """Every backend ranks by the logits (docs/design.md §1.4): a tie group is a set of
    equal logits, deferred whole or kept whole, and α is the float64 greedy knapsack in
    logit order, except where a group's C lies within 1e-5 of the budget."""
    p_logits, temperature, budget = _tie_heavy_case(case)
    q_logits = make_logits(tuple(p_logits.shape), seed=91, dtype=p_logits.dtype)
    probs, alpha = _mixture(p_logits.to(device), q_logits.to(device), Primal(budget), temperature, backend=backend)
    p, q = softmax(p_logits, temperature), softmax(q_logits, temperature)
    expected, ambiguous = _primal_expected_alpha(p, p_logits, budget)
    rows = ~ambiguous
    assert rows.sum() >= max(1, p.shape[0] // 2), "the case must have rows away from the budget"
    torch.testing.assert_close(alpha[rows].double(), expected[rows], rtol=0, atol=1e-5)
    if case == "distinct-logits-equal-p":
        assert torch.equal(p[:, 0], p[:, 1]) and torch.equal(alpha, torch.full((3,), 0.5))
    expected_mask = rule_mask("primal", budget, p, q, p_logits)
    rest = probs - alpha[:, None] * q  # p_v on kept tokens, 0 on deferred ones
    kept = rest.abs() > p / 2
    for b in rows.nonzero()[:, 0].tolist():
        assert torch.equal(~kept[b], expected_mask[b]), f"row {b}: mask {(~kept[b]).tolist()}"


# --------------------------------------------------------------------------- formulas

AUTHORS = [
    ("token_wise", 0.02),
    ("token_wise", 0.2),
    ("max", 0.3),
    ("max_q_minus", 0.1),
    ("max_q_plus", 0.05),
    ("max_p_plus", 0.0),
    ("max_p_plus", 0.02),
    ("minus_max_p_plus", 0.0),
    ("minus_max_p_plus", 0.05),
    ("token_v2", 0.1),
    ("token_max", 0.3),
    ("budget_lr", 0.3),
    ("budget_lr", 0.9),
]

EXPECTED_RULES = {
    "token_wise": lambda a: Dual(a),
    "max": lambda a: Nudging(a),
    "max_q_minus": lambda a: Threshold(a, "max_q_minus"),
    "max_q_plus": lambda a: Threshold(a, "max_q_plus"),
    "max_p_plus": lambda a: Threshold(a, "max_p_plus"),
    "minus_max_p_plus": lambda a: Threshold(a, "minus_max_p_plus"),
    "token_v2": lambda a: Dual(mu=a, loss="perceptron"),
    "token_max": lambda a: Dual(mu=0.0, loss="zero_one"),
    "budget_lr": lambda a: Primal(a),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_RULES))
def test_rule_from_name_builds_the_rule(name):
    assert kk.rule_from_name(name, 0.25) == EXPECTED_RULES[name](0.25)


def _varied_logits(batch, vocab, *, seed, device, dtype=torch.float32, low=0.3, high=4.0):
    """Rows of increasing sharpness, so that every rule defers in some rows and not others."""
    scale = torch.linspace(low, high, batch)[:, None]
    return (make_logits((batch, vocab), seed=seed, scale=1.0) * scale).to(dtype).to(device)


def _check_rule_formula(backend_case, rule, d, p_logits, q_logits, name, param, temperature=1.0):
    p, q = softmax(p_logits, temperature), softmax(q_logits, temperature)
    assert not ambiguous_rows(name, param, p, q, p_logits=p_logits).any(), "test data too close to the threshold"
    probs, alpha = _mixture(p_logits, q_logits, rule, temperature, backend=backend_case.name)
    expected, expected_alpha = mixture_from_mask(p, q, d)
    tol = FORMULA_TOL if backend_case.is_reference else PROBS_TOL
    torch.testing.assert_close(probs, expected, **tol)
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,param", AUTHORS, ids=[f"{n}-{a}" for n, a in AUTHORS])
def test_authors_rule_matches_formula(backend_case, name, param):
    batch, vocab = 8, 50
    device = backend_case.device
    p_logits = _varied_logits(batch, vocab, seed=70, device=device)
    q_logits = _varied_logits(batch, vocab, seed=71, device=device, low=0.5, high=6.0)
    p, q = softmax(p_logits), softmax(q_logits)
    d = rule_mask(name, param, p, q, p_logits)
    assert d.any() and not d.all(), f"{name}({param}): the test data must defer some tokens and keep others"
    if name == "max":
        assert d.all(-1).any() and not d.all(-1).all()
    formula = {"token_wise": "logistic", "token_v2": "perceptron", "token_max": "zero_one", "budget_lr": "primal"}
    _check_rule_formula(
        backend_case, kk.rule_from_name(name, param), d, p_logits, q_logits, formula.get(name, name), param
    )


DUAL_LOSSES = [
    ("perceptron", 0.0),
    ("perceptron", 0.05),
    ("perceptron", 0.3),
    ("zero_one", 0.0),
    ("zero_one", 0.5),
    ("squared", 0.5),
    ("squared", 0.9),
    ("squared", 0.99),
]


@pytest.mark.parametrize("loss,mu", DUAL_LOSSES, ids=[f"{l}-{m}" for l, m in DUAL_LOSSES])
def test_dual_loss_matches_formula(backend_case, loss, mu):
    batch, vocab = 8, 50
    device = backend_case.device
    p_logits = _varied_logits(batch, vocab, seed=80, device=device)
    q_logits = make_logits((batch, vocab), seed=81, device=device)
    p = softmax(p_logits)
    max_p = p.amax(-1, keepdim=True)
    if loss == "perceptron":
        d = p < max_p - mu
    elif loss == "zero_one":
        d = torch.ones_like(p, dtype=torch.bool)
        d.scatter_(-1, p.argmax(-1, keepdim=True), False)  # every non-arg-max token
    else:
        d = 1 - 2 * p + (p * p).sum(-1, keepdim=True) > mu
    assert d.any() and not d.all()
    _check_rule_formula(backend_case, Dual(mu=mu, loss=loss), d, p_logits, q_logits, loss, mu, temperature=1.0)


@pytest.mark.parametrize("mu", [0.0, 1.0, 5.0])
def test_zero_one_keeps_tied_argmaxes_and_nothing_above_one(backend, device, mu):
    # Two tokens tie for the maximum: neither is deferred; mu >= 1 defers nothing.
    p_logits = torch.tensor([[2.0, 0.5, 2.0, -1.0, 0.0, 1.0]], device=device)
    q_logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, -1.0]], device=device)
    p, q = softmax(p_logits), softmax(q_logits)
    probs, alpha = _mixture(p_logits, q_logits, Dual(mu=mu, loss="zero_one"), backend=backend)
    d = torch.tensor([[False, True, False, True, True, True]]) if mu < 1 else torch.zeros(1, 6, dtype=torch.bool)
    expected, expected_alpha = mixture_from_mask(p, q, d)
    torch.testing.assert_close(probs, expected, **FORMULA_TOL)
    torch.testing.assert_close(alpha, expected_alpha, **FORMULA_TOL)


@pytest.mark.parametrize("mu", [0.5, 1.2, 3.0])
def test_dual_mu_is_logistic_lam(backend, device, mu):
    p_logits = _varied_logits(6, 40, seed=90, device=device)
    q_logits = make_logits((6, 40), seed=91, device=device)
    probs, alpha = _mixture(p_logits, q_logits, Dual(mu=mu), backend=backend)
    p, q = softmax(p_logits), softmax(q_logits)
    d = p < math.exp(-mu)  # the logistic loss -log p_v > mu
    assert d.any() and not d.all()
    expected, expected_alpha = mixture_from_mask(p, q, d)
    torch.testing.assert_close(probs, expected, **PROBS_TOL)
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- implicit reward


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.8])
@pytest.mark.parametrize("vocab", [1, 7, 1000])
def test_implicit_reward_formula(backend, device, vocab, temperature):
    p, q, ref = _inputs(5, vocab, device=device, seed=100, with_ref=True)
    probs, alpha = _mixture(p, q, ImplicitReward(), temperature, ref=ref, backend=backend)
    expected = implicit_reward_formula(p, q, ref, temperature)
    torch.testing.assert_close(probs.double(), expected, rtol=1e-4, atol=1e-7)
    assert torch.equal(alpha, torch.zeros(5))


@pytest.mark.parametrize("temperature", [1e-30, 1e-37, 2.0**-126])  # 2⁻¹²⁶: the smallest T taken
def test_implicit_reward_at_a_tiny_temperature_is_the_arg_max_of_its_score(backend, device, temperature):
    """The limit T → 0 of π ∝ p q / q_ref is the arg-max of x_p + x_q − x_ref, though p, q and
    q_ref then each round to one-hot on their own arg-max (so p q = 0 everywhere when those differ)."""
    p, q, ref = _inputs(6, 40, device=device, seed=105, with_ref=True)
    best = (p + q - ref).argmax(-1).cpu()
    assert (best != p.argmax(-1).cpu()).any()  # a row a one-hot p would leave without common support
    probs, _ = _mixture(p, q, ImplicitReward(), temperature, ref=ref, backend=backend)
    torch.testing.assert_close(probs, torch.nn.functional.one_hot(best, 40).float(), rtol=0, atol=1e-6)


def test_implicit_reward_at_the_largest_temperature_is_uniform(backend, device):
    p, q, ref = _inputs(3, 40, device=device, seed=106, with_ref=True)
    probs, _ = _mixture(p, q, ImplicitReward(), 3.0e38, ref=ref, backend=backend)
    torch.testing.assert_close(probs, torch.full((3, 40), 1 / 40), rtol=1e-5, atol=0)


def test_implicit_reward_is_uniform_without_common_support(backend, device):
    # p and q are -inf on complementary halves: p q = 0 everywhere.
    vocab = 10
    p = make_logits((3, vocab), seed=110)
    q = make_logits((3, vocab), seed=111)
    ref = make_logits((3, vocab), seed=112)
    p[:, : vocab // 2] = NEG_INF
    q[:, vocab // 2 :] = NEG_INF
    probs, _ = _mixture(p.to(device), q.to(device), ImplicitReward(), ref=ref.to(device), backend=backend)
    torch.testing.assert_close(probs, torch.full((3, vocab), 1 / vocab), rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- per-row parameters

PER_ROW = {
    "dual": (Dual, torch.tensor([0.0, 0.01, 0.05, 0.2, 0.5, 1.0])),
    "perceptron": (lambda m: Dual(mu=m, loss="perceptron"), torch.tensor([0.0, 0.02, 0.1, 0.3, 0.6, 2.0])),
    "zero_one": (lambda m: Dual(mu=m, loss="zero_one"), torch.tensor([0.0, 0.5, 1.0, 0.99, 2.0, 0.1])),
    "squared": (lambda m: Dual(mu=m, loss="squared"), torch.tensor([0.5, 0.8, 0.9, 0.95, 0.99, 1.2])),
    "primal": (Primal, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0, 3.0])),
    "nudging": (Nudging, torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])),
    "max_q_minus": (lambda a: Threshold(a, "max_q_minus"), torch.tensor([0.0, 0.05, 0.1, 0.2, 0.5, 1.0])),
    "max_p_plus": (lambda a: Threshold(a, "max_p_plus"), torch.tensor([0.0, 0.01, 0.05, 0.1, 0.3, 1.0])),
}


@pytest.mark.parametrize("key", list(PER_ROW))
def test_per_row_params_equal_row_by_row_floats(backend, device, key):
    make_rule, values = PER_ROW[key]
    batch, vocab = 6, 40
    p = _varied_logits(batch, vocab, seed=120, device=device)
    q = _varied_logits(batch, vocab, seed=121, device=device, low=0.5, high=5.0)
    probs, alpha = _mixture(p, q, make_rule(values.to(device)), backend=backend)
    distinct = set()
    for b in range(batch):
        row_probs, row_alpha = _mixture(p[b : b + 1], q[b : b + 1], make_rule(float(values[b])), backend=backend)
        torch.testing.assert_close(probs[b : b + 1], row_probs, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(alpha[b : b + 1], row_alpha, rtol=1e-6, atol=1e-9)
        distinct.add(round(float(row_alpha), 6))
    assert len(distinct) >= 2, "the per-row values should give different mixtures"


def test_per_row_zero_d_tensor_param(backend, device):
    p, q, _ = _inputs(4, 30, device=device, seed=125)
    as_tensor, _ = _mixture(p, q, Primal(torch.tensor(0.6, device=device)), backend=backend)
    as_float, _ = _mixture(p, q, Primal(0.6), backend=backend)
    torch.testing.assert_close(as_tensor, as_float, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("key", ["dual", "primal", "implicit_reward"])
def test_per_row_temperature(backend, device, key):
    rule = RULES[key][0]
    temperature = torch.tensor([0.0, 0.5, 1.0, 2.0, 0.0, 1.3])
    batch, vocab = 6, 40
    p, q, ref = _inputs(batch, vocab, device=device, seed=130, with_ref=rule.needs_ref)
    probs, alpha = _mixture(p, q, rule, temperature.to(device), ref=ref, backend=backend)
    for b, t in enumerate(temperature.tolist()):
        rows = slice(b, b + 1)
        r = None if ref is None else ref[rows]
        row_probs, row_alpha = _mixture(p[rows], q[rows], rule, t, ref=r, backend=backend)
        torch.testing.assert_close(probs[rows], row_probs, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(alpha[rows], row_alpha, rtol=1e-6, atol=1e-9)
        if t == 0:  # greedy rows mix the T = 1 distributions
            one_probs, _ = _mixture(p[rows], q[rows], rule, 1.0, ref=r, backend=backend)
            torch.testing.assert_close(row_probs, one_probs, rtol=1e-6, atol=1e-9)
    # Tempering acts before mixing: a T = 2 row is the formula on softmax(x / 2).
    if key == "dual":
        pt, qt = softmax(p[3:4], 2.0), softmax(q[3:4], 2.0)
        expected, _ = mixture_from_mask(pt, qt, pt < 0.002)
        torch.testing.assert_close(probs[3:4], expected, **PROBS_TOL)
        assert not torch.allclose(probs[3], probs[2], atol=1e-4), "T = 2 and T = 1 rows must differ"


# --------------------------------------------------------------------------- -inf entries


@pytest.mark.parametrize("batch,vocab", [(3, 7), (5, 1000), pytest.param(64, 50257, marks=pytest.mark.slow)])
@pytest.mark.parametrize("key", RULE_PARAMS)
def test_neg_inf_tokens_get_zero(backend, device, slow, key, batch, vocab):
    skip_if_too_big(slow, rows=batch, vocab=vocab)
    rule, name, param = RULES[key]
    p, q, ref = _inputs(batch, vocab, dtype=torch.float16, seed=140, with_ref=rule.needs_ref)
    mask = neg_inf_mask((batch, vocab), seed=141, fraction=0.4)
    p, q = masked(p, mask), masked(q, mask)
    to = (lambda x: None if x is None else x.to(device))
    probs, alpha = _mixture(to(p), to(q), rule, ref=to(ref), backend=backend)
    assert mask.any()
    assert torch.equal(probs[mask], torch.zeros(int(mask.sum()))), "masked tokens must get pi = 0"
    torch.testing.assert_close(probs.double().sum(-1), torch.ones(batch, dtype=torch.float64), rtol=0, atol=sum_tol(vocab))
    if name is not None and name != "primal":
        ps, qs = softmax(p), softmax(q)
        expected, expected_alpha = mixture_from_mask(ps, qs, rule_mask(name, param, ps, qs))
        rows = ~ambiguous_rows(name, param, ps, qs)
        torch.testing.assert_close(probs[rows], expected[rows], **PROBS_TOL)
        torch.testing.assert_close(alpha[rows], expected_alpha[rows], **ALPHA_TOL)


# --------------------------------------------------------------------------- backends agree


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("batch,vocab", size_params())
@pytest.mark.parametrize("key", RULE_PARAMS)
def test_matches_reference(other_case, key, batch, vocab, dtype):
    """Every backend's π and α are the ``torch`` backend's (rows where a deferral decision
    sits within rounding of its threshold excepted)."""
    skip_if_too_big(other_case.slow, rows=batch, vocab=vocab, dtype=dtype)
    rule, name, param = RULES[key]
    p, q, ref = _inputs(batch, vocab, dtype=dtype, seed=150 + vocab, with_ref=rule.needs_ref)
    mask = neg_inf_mask((batch, vocab), seed=151, fraction=0.1)
    p, q = masked(p, mask), masked(q, mask)
    temperature = torch.tensor([0.8, 1.0, 0.0, 1.5])[torch.arange(batch) % 4]
    want_probs, want_alpha = _mixture(p, q, rule, temperature, ref=ref, backend="torch")
    to = (lambda x: None if x is None else x.to(other_case.device))
    got_probs, got_alpha = _mixture(to(p), to(q), rule, to(temperature), ref=to(ref), backend=other_case.name)
    rows = torch.ones(batch, dtype=torch.bool)
    if name is not None:
        rows = ~ambiguous_rows(name, param, softmax(p, temperature), softmax(q, temperature), p_logits=p)
    assert rows.sum() >= max(1, batch // 2)
    torch.testing.assert_close(got_probs[rows], want_probs[rows], **PROBS_TOL)
    torch.testing.assert_close(got_alpha[rows], want_alpha[rows], **ALPHA_TOL)
