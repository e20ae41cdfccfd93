"""Draws: ``sample`` and ``verify`` are exact (χ² at fixed seeds), greedy rows take the
arg-max, ``uniforms`` mode is the inverse CDF of docs/design.md §2.4 on every backend, and the
``generator`` / ``seed``+``offset`` modes are reproducible with the documented
Philox counter layout.

The statistical tests use fixed seeds, so they are deterministic, with a p-value
threshold (``P_MIN``) that a wrong distribution fails: each also checks that the
same counts are *rejected* under a plausible wrong answer (p instead of π, or
drafts always accepted), which shows the test has the power to fail.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.stats
import torch

import kad_kernels as kk
from helpers import (
    DTYPE_PARAMS,
    P_MIN,
    ambiguous_rows,
    cdf_boundary_distance,
    chisquare_pvalue,
    expected_verify,
    inverse_cdf_np,
    make_logits,
    masked,
    neg_inf_mask,
    skip_if_too_big,
    softmax,
)
from kad_kernels import Dual, ImplicitReward, Nudging, Primal, Threshold
from kad_kernels._backends import triton_interprets
from kad_kernels._random import philox_uniform

ROWS = 20000  # draws per χ² test

# id -> (rule, formula name for helpers.ambiguous_rows, parameter)
RULES = {
    "dual": (Dual(0.1), "logistic", 0.1),
    "primal": (Primal(0.6), "primal", 0.6),
    "squared": (Dual(mu=0.8, loss="squared"), "squared", 0.8),
    "max_q_minus": (Threshold(0.05, "max_q_minus"), "max_q_minus", 0.05),
    "nudging": (Nudging(0.5), "max", 0.5),
    "implicit_reward": (ImplicitReward(), None, None),
}
STAT_RULES = ["dual", "primal", "squared", "implicit_reward"]


def _skip_statistics(slow: bool) -> None:
    """χ² tests need thousands of rows, minutes under the Triton interpreter (~0.2 s a row).
    There the draws are covered by the uniforms-mode tests below (the same tokens as
    the torch backend for the same uniforms) and the seed/offset layout tests; on GPU
    every backend runs the statistics too."""
    if slow:
        pytest.skip("statistical test: too many rows for an interpreted backend")


def _wrong_answer(pi, *candidates) -> np.ndarray:
    """The candidate (p or q) farthest from π in total variation, for the power checks:
    a χ² test that cannot tell it from π would prove nothing."""
    pi = np.asarray(pi, np.float64)
    candidates = [np.asarray(c, np.float64) for c in candidates]
    distances = [0.5 * np.abs(c - pi).sum() for c in candidates]
    assert max(distances) > 0.1, f"test data should separate pi from p and q (TV {distances})"
    return candidates[int(np.argmax(distances))]


def _to(x, device):
    return None if x is None else x.to(device)


def _mixture_rows(p, q, rule, temperature, ref=None) -> torch.Tensor:
    """π of the reference backend (the specification), [N, V] fp32 on CPU."""
    return kk.mixture(p, q, rule, temperature, ref_logits=ref, backend="torch").probs


# --------------------------------------------------------------------------- sample is exact


def _stat_logits(shape, seed, vocab, needs_ref):
    """Moderately peaked logits with token 3 masked (-inf) in both models when V > 3."""
    p = make_logits(shape, seed=seed, scale=1.5)
    q = make_logits(shape, seed=seed + 1, scale=1.5)
    ref = make_logits(shape, seed=seed + 2, scale=1.5) if needs_ref else None
    if vocab > 3:
        p[..., 3] = q[..., 3] = float("-inf")
    return p, q, ref


@pytest.mark.parametrize("vocab", [7, 50])
@pytest.mark.parametrize("key", STAT_RULES)
def test_sample_follows_pi(backend, device, slow, key, vocab):
    rule = RULES[key][0]
    _skip_statistics(slow)
    rows, temperature = ROWS, 0.8
    p, q, ref = _stat_logits((1, vocab), 200 + vocab, vocab, rule.needs_ref)
    pi = _mixture_rows(p, q, rule, temperature, ref)[0]
    g = torch.Generator(device=device).manual_seed(1234)
    rep = lambda x: None if x is None else x.repeat(rows, 1).to(device)  # noqa: E731
    tokens = kk.sample(rep(p), rep(q), rule, temperature, ref_logits=rep(ref), generator=g, backend=backend)
    assert tokens.dtype == torch.int64 and tokens.shape == (rows,) and tokens.device.type == device.type
    counts = torch.bincount(tokens.cpu(), minlength=vocab).numpy()
    assert counts.size == vocab, "token ids out of range"
    assert chisquare_pvalue(counts, pi.numpy()) > P_MIN
    # Power: the same counts reject p or q, whichever is farther from π.
    wrong = _wrong_answer(pi, softmax(p, temperature)[0], softmax(q, temperature)[0])
    assert chisquare_pvalue(counts, wrong) < P_MIN


# --------------------------------------------------------------------------- verify is exact

VERIFY_GAMMA = 3


@functools.lru_cache(maxsize=32)
def _verify_run(backend: str, device: str, slow: bool, key: str, vocab: int):
    """One large verify call on repeated logits, drafts drawn from q; cached across tests."""
    rule = RULES[key][0]
    rows, gamma, temperature = ROWS, VERIFY_GAMMA, 0.9
    p, q, ref = _stat_logits((1, gamma + 1, vocab), 300 + vocab, vocab, rule.needs_ref)
    pi = _mixture_rows(p[0], q[0], rule, temperature, None if ref is None else ref[0]).double()  # [γ+1, V]
    q_probs = softmax(q[0], temperature).double()
    g = torch.Generator().manual_seed(77)
    drafts = torch.stack([torch.multinomial(q_probs[i], rows, replacement=True, generator=g) for i in range(gamma)], 1)
    rep = lambda x: None if x is None else x.repeat(rows, 1, 1).to(device)  # noqa: E731
    g_verify = torch.Generator(device=device).manual_seed(4321)
    out = kk.verify(
        rep(p), rep(q), drafts.to(device), rule, temperature, ref_logits=rep(ref), generator=g_verify, backend=backend
    )
    return out.tokens.cpu(), out.num_accepted.cpu(), drafts, pi, q_probs


VERIFY_PARAMS = [pytest.param(k, v, id=f"{k}-V{v}") for k in STAT_RULES for v in (7, 50)]


@pytest.mark.parametrize("key,vocab", VERIFY_PARAMS)
def test_verify_output_structure(backend, device, slow, key, vocab):
    _skip_statistics(slow)
    tokens, accepted, drafts, _, _ = _verify_run(backend, str(device), slow, key, vocab)
    rows, gamma = drafts.shape
    assert tokens.shape == (rows, gamma + 1) and tokens.dtype == torch.int64
    assert accepted.shape == (rows,) and accepted.dtype == torch.int64
    assert ((accepted >= 0) & (accepted <= gamma)).all()
    index = torch.arange(gamma + 1)
    emitted = index[None] <= accepted[:, None]
    assert ((tokens >= 0) & (tokens < vocab))[emitted].all(), "emitted tokens must be valid ids"
    assert (tokens[~emitted] == -1).all(), "tokens after the emitted ones must be -1"
    accepted_part = index[None, :gamma] < accepted[:, None]
    assert torch.equal(tokens[:, :gamma][accepted_part], drafts[accepted_part]), "accepted tokens are the drafts"
    assert (accepted < gamma).any() and (accepted == gamma).any(), "test data should reject and accept"


@pytest.mark.parametrize("key,vocab", VERIFY_PARAMS)
def test_verify_first_token_follows_pi0(backend, device, slow, key, vocab):
    _skip_statistics(slow)
    tokens, _, _, pi, q = _verify_run(backend, str(device), slow, key, vocab)
    counts = np.bincount(tokens[:, 0].numpy(), minlength=vocab)
    assert chisquare_pvalue(counts, pi[0].numpy()) > P_MIN
    assert chisquare_pvalue(counts, _wrong_answer(pi[0], q[0])) < P_MIN, "power: the drafts' q must be rejected"


@pytest.mark.parametrize("key,vocab", VERIFY_PARAMS)
def test_verify_second_token_follows_pi1_after_acceptance(backend, device, slow, key, vocab):
    _skip_statistics(slow)
    tokens, accepted, _, pi, q = _verify_run(backend, str(device), slow, key, vocab)
    rows = accepted >= 1
    assert rows.sum() > 500
    counts = np.bincount(tokens[rows, 1].numpy(), minlength=vocab)
    assert chisquare_pvalue(counts, pi[1].numpy()) > P_MIN
    assert chisquare_pvalue(counts, _wrong_answer(pi[1], q[1])) < P_MIN, "power: the drafts' q must be rejected"


def _acceptance(pi: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """β_i = Σ_v min(π_i, q_i): the probability that a draft x ~ q_i is accepted."""
    return torch.minimum(pi, q).sum(-1).numpy()


@pytest.mark.parametrize("key,vocab", VERIFY_PARAMS)
def test_verify_num_accepted_distribution(backend, device, slow, key, vocab):
    _skip_statistics(slow)
    _, accepted, drafts, pi, q = _verify_run(backend, str(device), slow, key, vocab)
    gamma = drafts.shape[1]
    beta = _acceptance(pi[:gamma], q[:gamma])
    assert ((beta > 0.05) & (beta < 0.95)).all(), f"test data should make acceptance uncertain: {beta}"
    # P(n = k) = β_0 … β_{k-1} (1 − β_k) for k < γ, and β_0 … β_{γ-1} for k = γ.
    prefix = np.concatenate([[1.0], np.cumprod(beta)])
    theory = np.append(prefix[:gamma] * (1 - beta), prefix[gamma])
    counts = np.bincount(accepted.numpy(), minlength=gamma + 1)
    assert chisquare_pvalue(counts, theory) > P_MIN
    # Power: acceptance rates off by 0.05 at each position are rejected.
    beta_wrong = np.clip(beta - 0.05, 0, 1)
    prefix_wrong = np.concatenate([[1.0], np.cumprod(beta_wrong)])
    wrong = np.append(prefix_wrong[:gamma] * (1 - beta_wrong), prefix_wrong[gamma])
    assert chisquare_pvalue(counts, wrong) < P_MIN


@pytest.mark.parametrize("key,vocab", VERIFY_PARAMS)
def test_verify_first_acceptance_rate(backend, device, slow, key, vocab):
    _skip_statistics(slow)
    _, accepted, _, pi, q = _verify_run(backend, str(device), slow, key, vocab)
    beta0 = float(_acceptance(pi[:1], q[:1])[0])
    assert 0.05 < beta0 < 0.95, "test data should make acceptance uncertain"
    hits = int((accepted >= 1).sum())
    assert scipy.stats.binomtest(hits, accepted.numel(), beta0).pvalue > P_MIN
    wrong = min(0.99, beta0 + 0.05)
    assert scipy.stats.binomtest(hits, accepted.numel(), wrong).pvalue < P_MIN


# --------------------------------------------------------------------------- greedy rows


def test_sample_greedy_rows_take_the_argmax(backend, device):
    batch, vocab = 8, 30
    rule = RULES["dual"][0]
    p = make_logits((batch, vocab), seed=400)
    q = make_logits((batch, vocab), seed=401)
    # Row 0: π has an exact tie at its maximum (tokens 4 and 9): the lowest index wins.
    p[0] = -5.0
    q[0] = -5.0
    p[0, 4] = p[0, 9] = 3.0
    q[0, 4] = q[0, 9] = 2.0
    temperature = torch.tensor([0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 2.0, 0.0])
    greedy = temperature == 0
    pi = _mixture_rows(p, q, rule, temperature)
    assert pi[0, 4] == pi[0, 9] == pi[0].max()
    g = torch.Generator(device=device).manual_seed(5)
    tokens = kk.sample(p.to(device), q.to(device), rule, temperature.to(device), generator=g, backend=backend).cpu()
    assert tokens[0] == 4
    assert torch.equal(tokens[greedy], pi[greedy].argmax(-1))
    assert (pi[~greedy].gather(-1, tokens[~greedy, None]) > 0).all(), "sampled rows draw tokens of positive π"
    # All-greedy with a float temperature.
    tokens0 = kk.sample(p.to(device), q.to(device), rule, 0.0, backend=backend).cpu()
    assert torch.equal(tokens0, _mixture_rows(p, q, rule, 1.0).argmax(-1))


def test_float_temperature_gives_the_tensor_temperature_tokens(backend, device):
    """A float T > 0 tells the backend no row is greedy (it may skip its arg-max pass);
    the tokens must be those of the same T as a tensor, which promises nothing."""
    batch, vocab, gamma = 4, 700, 3
    rule = RULES["dual"][0]
    p, q = (make_logits((batch, vocab), seed=s).to(device) for s in (410, 411))
    pv, qv = (make_logits((batch, gamma + 1, vocab), seed=s).to(device) for s in (412, 413))
    drafts = torch.randint(0, vocab, (batch, gamma), generator=torch.Generator().manual_seed(414)).to(device)
    u = torch.rand(batch, generator=torch.Generator().manual_seed(415)).to(device)
    a = torch.rand(batch, gamma, generator=torch.Generator().manual_seed(416)).to(device)
    t = torch.full((batch,), 0.7, device=device)
    assert torch.equal(kk.sample(p, q, rule, 0.7, uniforms=u, backend=backend),
                       kk.sample(p, q, rule, t, uniforms=u, backend=backend))
    float_t = kk.verify(pv, qv, drafts, rule, 0.7, uniforms=(a, u), backend=backend)
    tensor_t = kk.verify(pv, qv, drafts, rule, t, uniforms=(a, u), backend=backend)
    assert torch.equal(float_t.tokens, tensor_t.tokens)
    assert torch.equal(float_t.num_accepted, tensor_t.num_accepted)


@pytest.mark.parametrize("key", ["dual", "primal", "implicit_reward"])
def test_verify_greedy_rows(backend, device, slow, key):
    rule = RULES[key][0]
    gamma, vocab = 4, 20
    sampled = 1 if slow else gamma + 1
    batch = gamma + 1 + sampled
    p = make_logits((batch, gamma + 1, vocab), seed=410)
    q = make_logits((batch, gamma + 1, vocab), seed=411)
    ref = make_logits((batch, gamma + 1, vocab), seed=412) if rule.needs_ref else None
    # Rows 0..γ are greedy with their first mismatch at position b (b = γ: all accepted, bonus);
    # rows γ+1.. sample (T = 0.7) and only their structure is checked.
    temperature = torch.tensor([0.0] * (gamma + 1) + [0.7] * sampled)
    flat = lambda x: None if x is None else x.flatten(0, 1)  # noqa: E731
    pi = _mixture_rows(flat(p), flat(q), rule, temperature.repeat_interleave(gamma + 1), flat(ref))
    target = pi.view(batch, gamma + 1, vocab).argmax(-1)  # [B, γ+1]
    drafts = torch.randint(0, vocab, (batch, gamma), generator=torch.Generator().manual_seed(413))
    for b in range(gamma + 1):
        drafts[b, :b] = target[b, :b]
        if b < gamma:
            drafts[b, b] = (target[b, b] + 1) % vocab
    out = kk.verify(
        p.to(device), q.to(device), drafts.to(device), rule, temperature.to(device),
        ref_logits=_to(ref, device), generator=torch.Generator(device=device).manual_seed(0), backend=backend,
    )
    tokens, accepted = out.tokens.cpu(), out.num_accepted.cpu()
    for b in range(gamma + 1):
        expected = torch.full((gamma + 1,), -1)
        expected[: b + 1] = target[b, : b + 1]
        assert accepted[b] == b, f"greedy row {b}: accepted {int(accepted[b])}"
        assert torch.equal(tokens[b], expected), f"greedy row {b}: {tokens[b].tolist()} != {expected.tolist()}"
    for b in range(gamma + 1, batch):
        n = int(accepted[b])
        assert torch.equal(tokens[b, :n], drafts[b, :n]) and (tokens[b, n + 1 :] == -1).all() and tokens[b, n] >= 0


# --------------------------------------------------------------------------- uniforms mode


def _uniform_test_scale(vocab: int) -> float:
    """Logit scale of the uniforms tests: flat for small V; peaked (LM-like) for large V,
    where a flat softmax puts CDF boundaries closer than 1e-5 everywhere."""
    return 1.5 if vocab <= 1000 else 4.0


def _special_uniforms(batch: int, seed: int) -> torch.Tensor:
    """Random uniforms with the extremes 0 and the largest float below 1 in the first rows."""
    u = torch.rand(batch, generator=torch.Generator().manual_seed(seed))
    u[0] = 0.0
    if batch > 1:
        u[1] = 1.0 - 2.0**-24
    return u


UNIFORM_SAMPLE_SIZES = [
    pytest.param(5, 1, id="B5-V1"),
    pytest.param(8, 7, id="B8-V7"),
    pytest.param(64, 7, id="B64-V7"),
    pytest.param(8, 1000, id="B8-V1000"),
    pytest.param(64, 1000, id="B64-V1000"),
    pytest.param(64, 50257, id="B64-V50257", marks=pytest.mark.slow),
    pytest.param(64, 151936, id="B64-V151936", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("batch,vocab", UNIFORM_SAMPLE_SIZES)
@pytest.mark.parametrize("key", ["dual", "primal", "implicit_reward"])
def test_sample_uniforms_is_the_inverse_cdf(backend_case, key, batch, vocab, dtype):
    """The smallest v with cumsum(π)_v > u Σπ, on every backend; rows where u is within
    1e-5 of a CDF boundary (or a deferral decision within rounding of its threshold)
    are excepted.  Non-reference backends must also give the torch backend's tokens."""
    skip_if_too_big(backend_case.slow, rows=batch, vocab=vocab, dtype=dtype)
    rule, name, param = RULES[key]
    scale = _uniform_test_scale(vocab)
    p = make_logits((batch, vocab), seed=500 + vocab, dtype=dtype, scale=scale)
    q = make_logits((batch, vocab), seed=501 + vocab, dtype=dtype, scale=scale)
    ref = make_logits((batch, vocab), seed=502, dtype=dtype, scale=scale) if rule.needs_ref else None
    mask = neg_inf_mask((batch, vocab), seed=503, fraction=0.3)
    p, q = masked(p, mask), masked(q, mask)
    temperature = torch.tensor([1.0, 0.7, 1.3, 1.0])[torch.arange(batch) % 4]
    u = _special_uniforms(batch, seed=504)
    pi = _mixture_rows(p, q, rule, temperature, ref).double().numpy()
    expected = np.array([inverse_cdf_np(pi[b], float(u[b])) for b in range(batch)])
    rows = np.array([cdf_boundary_distance(pi[b], float(u[b])) > 1e-5 for b in range(batch)])
    if name is not None:
        rows &= ~ambiguous_rows(name, param, softmax(p, temperature), softmax(q, temperature), p_logits=p).numpy()
    assert rows.sum() >= max(1, batch // 2)
    dev = backend_case.device
    tokens = kk.sample(
        p.to(dev), q.to(dev), rule, temperature.to(dev), ref_logits=_to(ref, dev), uniforms=u.to(dev),
        backend=backend_case.name,
    ).cpu()
    assert (pi[np.arange(batch), tokens.numpy()] > 0).all(), "never a token of probability 0"
    np.testing.assert_array_equal(tokens.numpy()[rows], expected[rows])
    if not backend_case.is_reference:
        want = kk.sample(p, q, rule, temperature, ref_logits=ref, uniforms=u, backend="torch")
        np.testing.assert_array_equal(tokens.numpy()[rows], want.numpy()[rows])


VERIFY_UNIFORM_SIZES = [
    pytest.param(6, 1, id="B6-V1"),
    pytest.param(8, 7, id="B8-V7"),
    pytest.param(32, 7, id="B32-V7"),
    pytest.param(8, 1000, id="B8-V1000"),
    pytest.param(32, 1000, id="B32-V1000"),
    pytest.param(8, 50257, id="B8-V50257", marks=pytest.mark.slow),
    pytest.param(8, 151936, id="B8-V151936", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("batch,vocab", VERIFY_UNIFORM_SIZES)
@pytest.mark.parametrize("gamma", [1, 4, 8])
@pytest.mark.parametrize("key", ["dual", "primal", "implicit_reward"])
def test_verify_uniforms_follows_the_spec(backend_case, key, gamma, batch, vocab, dtype):
    """``verify(..., uniforms=(a, s))`` equals speculative verification written out in numpy
    (accept iff a q(x) < π(x), inverse CDF of the residual or of π at the stop), and
    the torch backend's tokens; rows within 1e-5 of a boundary excepted."""
    skip_if_too_big(backend_case.slow, rows=batch, vocab=vocab, dtype=dtype)
    if backend_case.slow:  # interpreted kernels cost ~0.2 s per (row, position)
        batch = 4 if gamma < 8 else 2
    rule, name, param = RULES[key]
    shape = (batch, gamma + 1, vocab)
    scale = _uniform_test_scale(vocab)
    p = make_logits(shape, seed=600 + vocab, dtype=dtype, scale=scale)
    q = make_logits(shape, seed=601 + vocab, dtype=dtype, scale=scale)
    ref = make_logits(shape, seed=602, dtype=dtype, scale=scale) if rule.needs_ref else None
    mask = neg_inf_mask(shape, seed=603, fraction=0.2)
    p, q = masked(p, mask), masked(q, mask)
    temperature = torch.tensor([1.0, 0.0, 0.8, 1.2])[torch.arange(batch) % 4]  # row 1 mod 4 greedy
    flat_t = temperature.repeat_interleave(gamma + 1)
    flat = lambda x: None if x is None else x.flatten(0, 1)  # noqa: E731
    pi = _mixture_rows(flat(p), flat(q), rule, flat_t, flat(ref)).view(shape)
    q_probs = softmax(flat(q), flat_t).view(shape)
    g = torch.Generator().manual_seed(604)
    drafts = torch.multinomial(q_probs[:, :gamma].reshape(-1, vocab), 1, generator=g).view(batch, gamma)
    drafts[::3] = torch.randint(0, vocab, (len(range(0, batch, 3)), gamma), generator=g)  # some drafts not from q
    accept = torch.rand(batch, gamma, generator=g)
    draw = _special_uniforms(batch, seed=605)
    want_tokens, want_accepted, ambiguous = expected_verify(
        pi.numpy(), q_probs.numpy(), drafts.numpy(), accept.numpy(), draw.numpy(), (temperature == 0).numpy()
    )
    rows = ~ambiguous
    if name is not None:
        flat_amb = ambiguous_rows(name, param, softmax(flat(p), flat_t), softmax(flat(q), flat_t), p_logits=flat(p))
        rows &= ~flat_amb.view(batch, gamma + 1).any(-1).numpy()
    assert rows.sum() >= max(1, batch // 2)
    dev = backend_case.device
    out = kk.verify(
        p.to(dev), q.to(dev), drafts.to(dev), rule, temperature.to(dev), ref_logits=_to(ref, dev),
        uniforms=(accept.to(dev), draw.to(dev)), backend=backend_case.name,
    )
    tokens, accepted = out.tokens.cpu().numpy(), out.num_accepted.cpu().numpy()
    np.testing.assert_array_equal(accepted[rows], want_accepted[rows])
    np.testing.assert_array_equal(tokens[rows], want_tokens[rows])
    if 1 < vocab <= 1000 and not backend_case.slow:
        assert len(set(want_accepted[rows].tolist())) >= 2, "test data should stop at varied positions"
    if not backend_case.is_reference:
        ref_out = kk.verify(p, q, drafts, rule, temperature, ref_logits=ref, uniforms=(accept, draw), backend="torch")
        np.testing.assert_array_equal(tokens[rows], ref_out.tokens.numpy()[rows])
        np.testing.assert_array_equal(accepted[rows], ref_out.num_accepted.numpy()[rows])


def test_verify_pi_equal_q_accepts_and_empty_residual_draws_from_pi(backend, device):
    """π = q exactly (budget >= 1): a draft with q(x) > 0 is always accepted (a q(x) < q(x)
    for a < 1); a draft of a masked token (q(x) = π(x) = 0) is rejected, the residual
    max(π − q, 0) is empty, and the token is drawn from π itself."""
    gamma, vocab, batch = 2, 9, 6
    shape = (batch, gamma + 1, vocab)
    p, q = make_logits(shape, seed=700), make_logits(shape, seed=701)
    p[:, 0, 0] = q[:, 0, 0] = float("-inf")
    drafts = torch.randint(1, vocab, (batch, gamma), generator=torch.Generator().manual_seed(702))
    draw = torch.linspace(0.05, 0.95, batch)
    accept = torch.full((batch, gamma), 0.999)
    run = lambda d: kk.verify(  # noqa: E731
        p.to(device), q.to(device), d.to(device), Primal(1.0), 1.0,
        uniforms=(accept.to(device), draw.to(device)), backend=backend,
    )
    q_probs = softmax(q).double().numpy()
    assert all(cdf_boundary_distance(q_probs[b, i], float(draw[b])) > 1e-5 for b in range(batch) for i in (0, gamma))
    out = run(drafts)
    assert torch.equal(out.num_accepted.cpu(), torch.full((batch,), gamma))
    assert torch.equal(out.tokens[:, :gamma].cpu(), drafts)
    bonus = [inverse_cdf_np(q_probs[b, gamma], float(draw[b])) for b in range(batch)]
    assert out.tokens[:, gamma].cpu().tolist() == bonus
    drafts[:, 0] = 0  # q_0(0) = 0: rejected at once
    out = run(drafts)
    assert torch.equal(out.num_accepted.cpu(), torch.zeros(batch, dtype=torch.int64))
    first = [inverse_cdf_np(q_probs[b, 0], float(draw[b])) for b in range(batch)]
    assert out.tokens[:, 0].cpu().tolist() == first
    assert (out.tokens[:, 1:] == -1).all()


# --------------------------------------------------------------------------- generator / seed modes


def _rand_inputs(batch, vocab, gamma=None, seed=800):
    shape = (batch, vocab) if gamma is None else (batch, gamma + 1, vocab)
    return make_logits(shape, seed=seed, scale=1.0), make_logits(shape, seed=seed + 1, scale=1.0)


def test_generator_mode_is_reproducible(backend, device, slow):
    batch, vocab, gamma = (8 if slow else 64), 50, 3
    rule = RULES["dual"][0]
    p, q = (x.to(device) for x in _rand_inputs(batch, vocab))
    gen = lambda s: torch.Generator(device=device).manual_seed(s)  # noqa: E731
    a = kk.sample(p, q, rule, generator=gen(11), backend=backend)
    b = kk.sample(p, q, rule, generator=gen(11), backend=backend)
    c = kk.sample(p, q, rule, generator=gen(12), backend=backend)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    p3, q3 = (x.to(device) for x in _rand_inputs(batch, vocab, gamma))
    drafts = torch.randint(0, vocab, (batch, gamma), generator=torch.Generator().manual_seed(1)).to(device)
    v1 = kk.verify(p3, q3, drafts, rule, generator=gen(13), backend=backend)
    v2 = kk.verify(p3, q3, drafts, rule, generator=gen(13), backend=backend)
    v3 = kk.verify(p3, q3, drafts, rule, generator=gen(14), backend=backend)
    assert torch.equal(v1.tokens, v2.tokens) and torch.equal(v1.num_accepted, v2.num_accepted)
    assert not torch.equal(v1.tokens, v3.tokens)


def test_uniforms_are_read_by_their_strides(backend, device, slow):
    """Uniforms given as views (the loop passes the columns of one tensor): the tokens of
    their contiguous copies; generator mode (which passes such views) draws as torch does."""
    batch, vocab, gamma = (4 if slow else 16), 40, 3
    rule = RULES["dual"][0]
    p, q = (x.to(device) for x in _rand_inputs(batch, vocab, gamma, seed=820))
    drafts = p[:, :gamma].argmin(-1)  # unlikely under p: rejections, then draws from the residual
    u = torch.rand(batch, gamma + 1, generator=torch.Generator().manual_seed(821)).to(device)
    strided = kk.verify(p, q, drafts, rule, uniforms=(u[:, :gamma], u[:, gamma]), backend=backend)
    copied = kk.verify(p, q, drafts, rule, uniforms=(u[:, :gamma].contiguous(), u[:, gamma].contiguous()), backend=backend)
    assert (strided.num_accepted < gamma).any()
    assert torch.equal(strided.tokens, copied.tokens) and torch.equal(strided.num_accepted, copied.num_accepted)
    p1, q1 = p[:, 0].contiguous(), q[:, 0].contiguous()
    every_other = torch.rand(2 * batch, generator=torch.Generator().manual_seed(822)).to(device)[::2]
    assert torch.equal(kk.sample(p1, q1, rule, uniforms=every_other, backend=backend),
                       kk.sample(p1, q1, rule, uniforms=every_other.contiguous(), backend=backend))
    gen = lambda: torch.Generator(device=device).manual_seed(13)  # noqa: E731
    ours = kk.verify(p, q, drafts, rule, generator=gen(), backend=backend)
    torch_backend = kk.verify(p, q, drafts, rule, generator=gen(), backend="torch")
    assert torch.equal(ours.tokens, torch_backend.tokens) and torch.equal(ours.num_accepted, torch_backend.num_accepted)


SEEDS = [0, 12345, 2**31 + 5, 2**40 + 7, -3, 2**63 - 1]
OFFSETS = [0, 5, 2**32 + 3]
SLOW_SEED_OFFSETS = {(0, 0), (2**40 + 7, 5), (-3, 2**32 + 3)}


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_sample_seed_offset_counter_layout(backend, device, slow, seed, offset):
    """sample(seed=s, offset=o) == sample(uniforms=philox_uniform(s, o + arange(B)))."""
    if slow and (seed, offset) not in SLOW_SEED_OFFSETS:
        pytest.skip("three seed/offset pairs are enough under the interpreter")
    batch, vocab = (6 if slow else 32), 50
    rule = RULES["primal"][0]
    p, q = (x.to(device) for x in _rand_inputs(batch, vocab))
    tokens = kk.sample(p, q, rule, seed=seed, offset=offset, backend=backend)
    again = kk.sample(p, q, rule, seed=seed, offset=offset, backend=backend)
    as_tensors = kk.sample(
        p, q, rule, seed=torch.tensor([seed], device=device), offset=torch.tensor([offset], device=device),
        backend=backend,
    )
    u = philox_uniform(torch.tensor([seed]), offset + torch.arange(batch))
    via_uniforms = kk.sample(p, q, rule, uniforms=u.to(device), backend=backend)
    assert torch.equal(tokens, again)
    assert torch.equal(tokens, as_tensors)
    assert torch.equal(tokens, via_uniforms)
    if offset == 0:
        assert torch.equal(tokens, kk.sample(p, q, rule, seed=seed, backend=backend)), "offset defaults to 0"
    # Row b draws counter offset + b: dropping the first row and advancing offset by one
    # leaves every other row's draw unchanged, while a shifted offset changes the draws.
    assert torch.equal(tokens[1:], kk.sample(p[1:], q[1:], rule, seed=seed, offset=offset + 1, backend=backend))
    assert not torch.equal(tokens, kk.sample(p, q, rule, seed=seed, offset=offset + 1, backend=backend))


@pytest.mark.parametrize("offset", [0, 2**32 + 3])
@pytest.mark.parametrize("seed", [7, -(2**40)])
@pytest.mark.parametrize("gamma", [1, 4])
def test_verify_seed_offset_counter_layout(backend, device, slow, gamma, seed, offset):
    """Row b uses counters offset + b(γ+1) + i for the coins i < γ and offset + b(γ+1) + γ for the draw."""
    batch, vocab = (4 if slow else 16), 20
    rule = RULES["dual"][0]
    p, q = (x.to(device) for x in _rand_inputs(batch, vocab, gamma))
    q_probs = softmax(q[:, :gamma].flatten(0, 1).cpu())
    drafts = torch.multinomial(q_probs, 1, generator=torch.Generator().manual_seed(9)).view(batch, gamma).to(device)
    out = kk.verify(p, q, drafts, rule, seed=seed, offset=offset, backend=backend)
    again = kk.verify(p, q, drafts, rule, seed=seed, offset=offset, backend=backend)
    u = philox_uniform(torch.tensor([seed]), offset + torch.arange(batch * (gamma + 1))).view(batch, gamma + 1)
    via = kk.verify(p, q, drafts, rule, uniforms=(u[:, :gamma].to(device), u[:, gamma].contiguous().to(device)),
                    backend=backend)
    assert torch.equal(out.tokens, again.tokens) and torch.equal(out.num_accepted, again.num_accepted)
    assert torch.equal(out.tokens, via.tokens) and torch.equal(out.num_accepted, via.num_accepted)
    if not slow:
        assert (out.num_accepted < gamma).any(), "test data should reject some drafts"


# --------------------------------------------------------------------------- Philox


def test_philox_uniform_is_uniform():
    u = philox_uniform(torch.tensor([2024]), torch.arange(200_000))
    assert u.dtype == torch.float32 and ((u >= 0) & (u < 1)).all()
    counts = np.histogram(u.numpy(), bins=20, range=(0, 1))[0]
    assert chisquare_pvalue(counts, np.full(20, 1 / 20)) > P_MIN
    assert abs(np.corrcoef(u[:-1].numpy(), u[1:].numpy())[0, 1]) < 0.01
    other = philox_uniform(torch.tensor([2025]), torch.arange(1000))
    assert not torch.equal(u[:1000], other)


try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is optional
    triton = None

if triton is not None:

    @triton.jit
    def _rand_kernel(out_ptr, offsets_ptr, seed, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = i < n
        offsets = tl.load(offsets_ptr + i, mask=valid, other=0)
        tl.store(out_ptr + i, tl.rand(seed, offsets), mask=valid)


@pytest.mark.skipif(triton is None, reason="triton is not installed")
@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1, 2**31 + 5, 2**32 + 1, 2**62 + 12345, -1, -5, -(2**40), 2**63 - 1])
def test_philox_uniform_matches_tl_rand(seed):
    if not torch.cuda.is_available() and not triton_interprets():
        pytest.skip("triton needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    offsets = torch.cat(
        [
            torch.arange(40),
            torch.tensor([2**32 - 1, 2**32, 2**32 + 7, 2**40 + 3, 2**62, 2**63 - 1, 123456789]),
        ]
    )
    out = torch.empty(offsets.numel(), dtype=torch.float32, device=device)
    _rand_kernel[(triton.cdiv(offsets.numel(), 64),)](out, offsets.to(device), seed, offsets.numel(), BLOCK=64)
    expected = philox_uniform(torch.tensor([seed]), offsets)
    assert torch.equal(out.cpu(), expected)
