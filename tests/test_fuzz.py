"""Differential fuzz of the public API: every backend against the reference, on inputs
drawn by hypothesis (docs/design.md §3.5).

A case is an operation (``mixture``, ``sample``, ``verify``), a shape (B, V, γ), a
dtype, a kind of logits (ordinary, extreme, flat, mostly −inf, near-constant), a
memory layout (contiguous, or rows of a wider buffer, or every other row), a rule
with its parameter, and a temperature (0 for greedy rows, per row or one for all).
Randomness is always ``uniforms``, so the tokens are comparable.  What must hold
is what the design promises, no more:

- π and α: within fp32 tolerance of the reference, except rows where a deferral
  decision lies within 1e-5 of its threshold (``helpers.ambiguous_rows``);
- tokens: the reference's token when ``u`` is more than δ = 1e-5 from every inner
  CDF boundary; otherwise a token of positive weight whose CDF interval contains
  ``u`` within δ (§2.4); greedy rows the arg-max, up to π values within 1e-5.

CI runs the ``kad-ci`` profile (a few dozen cases per backend, derandomized, so a
run is reproducible).  The long profile is a script::

    python tests/test_fuzz.py --examples 2000        # every backend of this machine
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import kad_kernels as kk
from helpers import FORMULA, ambiguous_rows, cdf_boundary_distance, expected_verify, softmax

DELTA = 1e-5  # the draw's promise (docs/design.md §2.4)
PROBS_TOL = dict(rtol=1e-4, atol=1e-6)
ALPHA_TOL = dict(rtol=0.0, atol=1e-5)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LOGITS = ("ordinary", "extreme", "flat", "mostly-neg-inf", "near-constant")
LAYOUTS = ("contiguous", "wide-rows", "every-other-row")

# The hypothesis profiles (kad-ci, kad-long) are registered in conftest.py.
# The interpreter runs Triton kernels in Python: its cases stay small.
MAX_BATCH, MAX_VOCAB = (64, 20000) if os.environ.get("KAD_FUZZ_PROFILE") == "kad-long" else (8, 4099)

RULES = st.one_of(
    st.builds(kk.Dual, st.floats(0.0, 1.0)),
    st.builds(lambda mu, loss: kk.Dual(mu=mu, loss=loss), st.floats(0.0, 2.0),
              st.sampled_from(["perceptron", "zero_one", "squared", "logistic"])),
    st.builds(kk.Primal, st.floats(0.0, 1.2)),
    st.builds(kk.Nudging, st.floats(0.0, 1.0)),
    st.builds(kk.Threshold, st.floats(0.0, 1.0),
              st.sampled_from(["max_q_minus", "max_q_plus", "max_p_plus", "minus_max_p_plus"])),
    st.just(kk.ImplicitReward()),
)


@st.composite
def cases(draw, op: str):
    """One call: ``dict`` of the logits (p, q, ref), rule, temperature, randomness."""
    batch = draw(st.integers(1, MAX_BATCH))
    vocab = draw(st.one_of(st.integers(1, 40), st.integers(41, MAX_VOCAB)))
    gamma = draw(st.integers(1, 8)) if op == "verify" else 0
    dtype = draw(st.sampled_from(DTYPES))
    kind_of_logits = draw(st.sampled_from(LOGITS))
    layout = draw(st.sampled_from(LAYOUTS))
    rule = draw(RULES)
    seed = draw(st.integers(0, 2**31 - 1))
    greedy_share = draw(st.sampled_from([0.0, 0.5, 1.0]))
    scalar_t = draw(st.sampled_from([None, 0.0, 0.3, 1.0, 2.5]))
    g = torch.Generator().manual_seed(seed)
    shape = (batch, vocab) if op != "verify" else (batch, gamma + 1, vocab)

    def logits() -> torch.Tensor:
        return _logits(kind_of_logits, shape, dtype, layout, g)

    p, q = logits(), logits()
    ref = logits() if rule.needs_ref else None
    if scalar_t is not None:
        temperature: float | torch.Tensor = scalar_t
    else:
        t = torch.empty(batch).uniform_(0.05, 4.0, generator=g)
        temperature = torch.where(torch.rand(batch, generator=g) < greedy_share, 0.0, t)
    u = torch.rand(batch, generator=g)
    a = torch.rand(batch, max(gamma, 1), generator=g)[:, :gamma]
    draft = torch.randint(0, vocab, (batch, gamma), generator=g)
    return dict(p=p, q=q, ref=ref, rule=rule, temperature=temperature, u=u, a=a, draft=draft)


def _logits(kind: str, shape: tuple[int, ...], dtype: torch.dtype, layout: str, g: torch.Generator) -> torch.Tensor:
    """Logits of one kind in one memory layout; every row keeps a finite entry."""
    x = torch.randn(shape, generator=g)
    if kind == "ordinary":
        x = x * float(torch.empty(()).uniform_(0.1, 8.0, generator=g))
    elif kind == "extreme":
        x = x * 1e4
    elif kind == "flat":
        x = torch.zeros(shape)
    elif kind == "mostly-neg-inf":
        x = torch.where(torch.rand(shape, generator=g) < 0.9, float("-inf"), 3 * x)
        x[..., int(torch.randint(shape[-1], (), generator=g))] = 0.5
    else:  # near-constant: many exact ties once rounded to the dtype
        x = 1.0 + 1e-2 * x
    x = x.to(dtype)
    if layout == "wide-rows":  # rows of a wider buffer: a row stride > V
        wide = torch.zeros(*shape[:-1], shape[-1] + 7, dtype=dtype)
        wide[..., : shape[-1]] = x
        return wide[..., : shape[-1]]
    if layout == "every-other-row":
        both = torch.stack([x, torch.zeros_like(x)], dim=1).flatten(0, 1)
        return both[::2]
    return x


def _to(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _flat_temperature(temperature, batch: int, positions: int = 1) -> torch.Tensor:
    t = torch.as_tensor(temperature, dtype=torch.float32).expand(batch)
    return t.repeat_interleave(positions)


def _ambiguous(rule: kk.Rule, p_logits, q_logits, temperature: torch.Tensor) -> torch.Tensor:
    """Rows [N] of flattened logits whose deferral decision sits within 1e-5 of its threshold.

    p and q in float64: fp32 can round both sides of a decision to the same value (p_v
    and max q both 1.0 when each misses 1 by less than half an ulp), which
    ``ambiguous_rows`` reads as an exact tie, reproduced by every backend; it is not one,
    and which side each backend's fp32 lands on depends on its order of summation."""
    name = FORMULA.get(rule.kind)
    if name is None:
        return torch.zeros(p_logits.shape[0], dtype=torch.bool)
    _, param = rule.spec(p_logits.shape[0], torch.device("cpu"))
    value = float(param) if not isinstance(param, torch.Tensor) else float(param.flatten()[0])
    tempered = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    p, q = (softmax(x, tempered, dtype=torch.float64) for x in (p_logits, q_logits))
    return ambiguous_rows(name, value, p, q, p_logits=p_logits)


def _score_rounding(rule: kk.Rule, p_logits, q_logits, ref_logits, temperature: torch.Tensor) -> torch.Tensor:
    """Relative error [N] that fp32 alone puts on π, beyond the kernels' own: ImplicitReward's
    score x_p + x_q − x_ref is rounded at the logits' magnitude, eps·(|x_p| + |x_q| + |x_ref|),
    which 1/T then scales (the mixture rules exponentiate (x − max)/T, whose rounding
    is relative and stays below the tolerances for every token of noticeable mass)."""
    if not rule.needs_ref:
        return torch.zeros(p_logits.shape[0], dtype=torch.float64)
    magnitude = sum(x.double().nan_to_num(0.0, 0.0, 0.0).abs().amax(-1) for x in (p_logits, q_logits, ref_logits))
    tempered = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).double()
    return 4 * 2.0**-24 * magnitude / tempered


def _reference_mixture(case, p, q, ref, temperature):
    mix = kk.mixture(p, q, case["rule"], temperature, ref_logits=ref, backend="torch")
    return mix.probs.double(), mix.alpha.double()


def _check_draw(
    token: int, expected: int, weights: np.ndarray, u: float, greedy: bool, where: str, delta: float = DELTA
) -> None:
    """The promise of docs/design.md §2.4 for one drawn token."""
    if greedy:
        assert weights[token] >= weights.max() * (1 - delta) and weights[token] > 0, (
            f"{where}: greedy token {token} (π {weights[token]}) is not the arg-max {expected} (π {weights.max()})"
        )
        return
    if cdf_boundary_distance(weights, u) > delta:
        assert token == expected, f"{where}: token {token}, the reference draws {expected} at u = {u}"
        return
    cdf = np.cumsum(weights) / weights.sum()
    low = cdf[token - 1] if token > 0 else 0.0
    assert weights[token] > 0 and low - delta <= u <= cdf[token] + delta, (
        f"{where}: token {token} ([{low}, {cdf[token]}]) does not hold u = {u} within {delta}"
    )


@given(case=cases("mixture"))
def test_mixture_matches_the_reference(other_case, case):
    dev = other_case.device
    want_probs, want_alpha = _reference_mixture(case, case["p"], case["q"], case["ref"], case["temperature"])
    got = kk.mixture(_to(case["p"], dev), _to(case["q"], dev), case["rule"], _to(case["temperature"], dev),
                     ref_logits=_to(case["ref"], dev), backend=other_case.name)
    batch = case["p"].shape[0]
    t = _flat_temperature(case["temperature"], batch)
    rows = ~_ambiguous(case["rule"], case["p"], case["q"], t)
    note(f"rule {case['rule']!r}, rows compared {int(rows.sum())}/{batch}")
    rtol = PROBS_TOL["rtol"] + _score_rounding(case["rule"], case["p"], case["q"], case["ref"], t)
    error = (got.probs.cpu().double() - want_probs).abs() - rtol[:, None] * want_probs.abs()
    worst = error[rows].max().item() if rows.any() else 0.0
    assert worst <= PROBS_TOL["atol"], f"π differs from the reference by {worst:.3g} beyond the tolerance"
    torch.testing.assert_close(got.alpha.cpu().double()[rows], want_alpha[rows], **ALPHA_TOL)


@given(case=cases("sample"))
def test_sample_keeps_the_draw_promise(other_case, case):
    dev = other_case.device
    p, q, ref, temperature, u = case["p"], case["q"], case["ref"], case["temperature"], case["u"]
    batch = p.shape[0]
    want = kk.sample(p, q, case["rule"], temperature, ref_logits=ref, uniforms=u, backend="torch")
    got = kk.sample(_to(p, dev), _to(q, dev), case["rule"], _to(temperature, dev), ref_logits=_to(ref, dev),
                    uniforms=u.to(dev), backend=other_case.name).cpu()
    pi, _ = _reference_mixture(case, p, q, ref, temperature)
    t = _flat_temperature(temperature, batch)
    ambiguous = _ambiguous(case["rule"], p, q, t)
    delta = DELTA + _score_rounding(case["rule"], p, q, ref, t)
    for b in range(batch):
        if ambiguous[b]:
            continue
        _check_draw(int(got[b]), int(want[b]), pi[b].numpy(), float(u[b]), bool(t[b] == 0), f"row {b}", float(delta[b]))


@given(case=cases("verify"))
def test_verify_keeps_the_draw_promise(other_case, case):
    dev = other_case.device
    p, q, ref, temperature = case["p"], case["q"], case["ref"], case["temperature"]
    batch, positions, vocab = p.shape
    uniforms = (case["a"], case["u"])
    got_tokens, got_accepted = kk.verify(
        _to(p, dev), _to(q, dev), case["draft"].to(dev), case["rule"], _to(temperature, dev),
        ref_logits=_to(ref, dev), uniforms=tuple(x.to(dev) for x in uniforms), backend=other_case.name,
    )
    t = _flat_temperature(temperature, batch, positions)
    flat = (lambda x: None if x is None else x.reshape(batch * positions, vocab))
    pi, _ = _reference_mixture(case, flat(p), flat(q), flat(ref), t)
    q_probs = softmax(flat(q), torch.where(t > 0, t, torch.ones_like(t))).double()
    want_tokens, want_accepted, ambiguous = expected_verify(
        pi.view(batch, positions, vocab).numpy(), q_probs.view(batch, positions, vocab).numpy(),
        case["draft"].numpy(), case["a"].numpy(), case["u"].numpy(), (t.view(batch, positions)[:, 0] == 0).numpy(),
        tol=DELTA,
    )
    ambiguous |= _ambiguous(case["rule"], flat(p), flat(q), t).view(batch, positions).any(-1).numpy()
    # Probabilities below fp32's smallest normal may flush to 0 in a kernel (§2.4): an accept test
    # of a draft to which π gives less than that is not promised.
    pi_x = pi.view(batch, positions, vocab)[:, :-1].gather(-1, case["draft"][..., None]).squeeze(-1)
    ambiguous |= (pi_x < torch.finfo(torch.float32).tiny).any(-1).numpy()
    # Where ImplicitReward's score rounds coarser than the draw's δ, verify's tests are not comparable.
    ambiguous |= (_score_rounding(case["rule"], flat(p), flat(q), flat(ref), t) > DELTA).view(batch, positions).any(-1).numpy()
    rows = ~ambiguous
    note(f"rule {case['rule']!r}, rows compared {int(rows.sum())}/{batch}")
    np.testing.assert_array_equal(got_accepted.cpu().numpy()[rows], want_accepted[rows])
    np.testing.assert_array_equal(got_tokens.cpu().numpy()[rows], want_tokens[rows])


if __name__ == "__main__":
    # The long profile: python tests/test_fuzz.py [--examples N] [pytest args...]
    args = sys.argv[1:]
    if "--examples" in args:
        i = args.index("--examples")
        os.environ["KAD_FUZZ_EXAMPLES"] = args[i + 1]
        del args[i : i + 2]
    os.environ["KAD_FUZZ_PROFILE"] = "kad-long"
    sys.exit(pytest.main([__file__, "-p", "no:cacheprovider", "-n", "0", *args]))
