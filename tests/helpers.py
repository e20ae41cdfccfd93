"""Test helpers: logits, the rules' formulas written out independently, statistics.

Nothing here imports ``kad_kernels.reference``: the formulas below are the
tests' own reading of docs/design.md §1, so the reference backend is checked against
them rather than against itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from kad_kernels.rules import Kind

NEG_INF = float("-inf")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_PARAMS = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in DTYPES]

VOCABS = [1, 7, 1000, 50257, 151936]
BATCHES = [1, 5, 64]

# Largest sizes an interpreted (slow) backend is asked to run.
SLOW_MAX_VOCAB = 1000
SLOW_MAX_ROWS = 8


def size_params(vocabs=VOCABS, batches=BATCHES) -> list:
    """``(batch, vocab)`` grid; large vocabularies carry the ``slow`` mark."""
    params = []
    for vocab in vocabs:
        for batch in batches:
            marks = [pytest.mark.slow] if vocab > SLOW_MAX_VOCAB else []
            params.append(pytest.param(batch, vocab, id=f"B{batch}-V{vocab}", marks=marks))
    return params


def skip_if_too_big(slow: bool, *, rows: int = 1, vocab: int = 1, dtype: torch.dtype | None = None) -> None:
    """Large sizes run for compiled backends only (torch anywhere, triton on GPU).

    An interpreted backend (~0.2 s per row and kernel) also runs the half-precision
    dtypes only at V = SLOW_MAX_VOCAB: the dtype is handled where the logits are
    loaded, independently of V."""
    if not slow:
        return
    if vocab > SLOW_MAX_VOCAB or rows > SLOW_MAX_ROWS:
        pytest.skip(f"{rows} rows x V={vocab} is too big for an interpreted backend")
    if dtype is not None and dtype != torch.float32 and vocab < SLOW_MAX_VOCAB:
        pytest.skip(f"interpreted backends run {dtype} at V={SLOW_MAX_VOCAB} only")


# ----------------------------------------------------------------------------- logits


def make_logits(shape, *, seed: int, dtype=torch.float32, device="cpu", scale: float = 3.0) -> torch.Tensor:
    """Gaussian logits (scale 3 gives peaked, LM-like softmaxes), made on CPU for determinism."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float32) * scale
    return x.to(dtype).to(device)


def neg_inf_mask(shape, *, seed: int, fraction: float = 0.3) -> torch.Tensor:
    """Bool mask of about ``fraction`` of the entries, never a whole row (one column per
    row, chosen at random, stays unmasked)."""
    shape = tuple(shape)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < fraction
    keep = torch.randint(0, shape[-1], shape[:-1], generator=g)
    mask.scatter_(-1, keep[..., None], False)
    return mask


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(mask.to(x.device), NEG_INF)


# ----------------------------------------------------------------------------- formulas


def softmax(logits: torch.Tensor, temperature=1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``softmax(logits / T)`` in ``dtype`` (fp32 as the kernels compute it, or fp64 for the
    exact value) on CPU over the last dim; ``T`` a float or a tensor of the leading shape,
    0 (greedy) meaning 1.  The row max is subtracted before the division, as
    docs/design.md §1.1 specifies."""
    x = logits.to(dtype).cpu()
    shift = x.amax(-1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    t = torch.as_tensor(temperature, dtype=torch.float32).to(dtype).cpu().expand(x.shape[:-1])
    t = torch.where(t > 0, t, torch.ones_like(t))
    return torch.softmax((x - shift) / t[..., None], dim=-1)


def primal_mask_loop(p_row: torch.Tensor, budget: float, logits_row: torch.Tensor) -> torch.Tensor:
    """Greedy knapsack over the distinct logit values of one row, least likely first
    (p rises with the logit): a whole tie group of equal logits is deferred iff the
    cumulative mass up to and including it is ``<= budget``; ``budget >= 1`` defers
    everything."""
    if budget >= 1:
        return torch.ones(p_row.numel(), dtype=torch.bool)
    masses = p_row.double().tolist()
    logits = (logits_row.double() + 0.0).tolist()  # −0 + 0 = +0
    d = [False] * len(masses)
    cumulative = 0.0
    for value in sorted(set(logits)):
        group = [i for i, x in enumerate(logits) if x == value]
        cumulative += sum(masses[i] for i in group)
        if cumulative > budget:
            break
        for i in group:
            d[i] = True
    return torch.tensor(d, dtype=torch.bool)


def primal_cumulative(p: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """``C_v = Σ_{u: x_u ≤ x_v} p_u`` in float64 with ``x`` the logits, ``[N, V]``: the mass
    in logit order up to the end of v's tie group of equal logits (−0 = +0)."""
    x = p_logits.double() + 0.0
    order = torch.sort(x, dim=-1, stable=True)
    cumulative = p.double().gather(-1, order.indices).cumsum(-1)
    return cumulative.gather(-1, torch.searchsorted(order.values, x, right=True) - 1)


def _primal_logits(p_logits: torch.Tensor | None) -> torch.Tensor:
    if p_logits is None:
        raise ValueError("primal ranks tokens by p's logits: pass p_logits")
    return p_logits


def rule_mask(name: str, param: float, p: torch.Tensor, q: torch.Tensor, p_logits: torch.Tensor | None = None) -> torch.Tensor:
    """The deferral mask ``d`` [N, V] of the authors' rule ``name`` (and the Dual losses),
    straight from the definitions of docs/design.md §1.3; ``p``/``q`` are fp32 probabilities,
    ``p_logits`` rank the tokens for primal (§1.4)."""
    max_p = p.amax(-1, keepdim=True)
    max_q = q.amax(-1, keepdim=True)
    if name in ("token_wise", "logistic"):
        return p < param
    if name == "max":  # Nudging: the whole row iff max p < lam
        return (max_p < param).expand_as(p)
    if name == "max_q_minus":
        return p < max_q - param
    if name == "max_q_plus":
        return p < max_q + param
    if name == "max_p_plus":
        return q < max_p + param
    if name == "minus_max_p_plus":
        return q > max_p + param
    if name in ("token_v2", "perceptron"):  # p_v < max p - mu
        return (max_p - p) > param
    if name == "token_max":  # every token but the arg-max(es)
        return p < max_p
    if name == "zero_one":
        return (p < max_p).float() > param
    if name == "squared":  # ||p - e_v||^2 = 1 - 2 p_v + ||p||^2
        return 1 - 2 * p + (p * p).sum(-1, keepdim=True) > param
    if name in ("budget_lr", "primal"):
        return torch.stack([primal_mask_loop(row, param, x) for row, x in zip(p, _primal_logits(p_logits))])
    raise KeyError(name)


def mixture_from_mask(p: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``π = p (1 − d) + α q`` with ``α = Σ p d``."""
    d = d.float()
    alpha = (p * d).sum(-1)
    return p * (1 - d) + alpha[:, None] * q, alpha


def implicit_reward_formula(p_logits, q_logits, ref_logits, temperature: float = 1.0) -> torch.Tensor:
    """``π ∝ p q / q_ref`` in float64."""
    p, q, r = (softmax(x, temperature).double() for x in (p_logits, q_logits, ref_logits))
    w = torch.where(r > 0, p * q / r, torch.zeros_like(p))
    return w / w.sum(-1, keepdim=True)


# The formula names of decision_sides (and rule_mask), by rule kind.
FORMULA = {
    Kind.LOGISTIC: "logistic", Kind.PERCEPTRON: "perceptron", Kind.ZERO_ONE: "zero_one", Kind.SQUARED: "squared",
    Kind.NUDGING: "max", Kind.MAX_Q_MINUS: "max_q_minus", Kind.MAX_Q_PLUS: "max_q_plus",
    Kind.MAX_P_PLUS: "max_p_plus", Kind.MINUS_MAX_P_PLUS: "minus_max_p_plus", Kind.PRIMAL: "primal",
}  # fmt: skip


def decision_sides(name: str, param: float, p: torch.Tensor, q: torch.Tensor, p_logits: torch.Tensor | None = None):
    """``(lhs, rhs)`` float64 [N, V] of the comparison that decides ``d_v`` (None for no mask);
    ``p_logits`` rank the tokens for primal."""
    p, q = p.double(), q.double()
    max_p = p.amax(-1, keepdim=True).expand_as(p)
    max_q = q.amax(-1, keepdim=True).expand_as(p)
    const = torch.full_like(p, float(param))
    sides = {
        "logistic": (p, const),
        "max": (max_p, const),
        "max_q_minus": (p, max_q - param),
        "max_q_plus": (p, max_q + param),
        "max_p_plus": (q, max_p + param),
        "minus_max_p_plus": (q, max_p + param),
        "perceptron": (max_p - p, const),
        "zero_one": (p, max_p),
        "squared": (1 - 2 * p + (p * p).sum(-1, keepdim=True), const),
    }
    if name == "primal":
        if param >= 1:
            return None
        return primal_cumulative(p, _primal_logits(p_logits)), const
    return sides.get(name)


def ambiguous_rows(
    name: str, param: float, p: torch.Tensor, q: torch.Tensor, rel: float = 1e-5, p_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows [N] where some token's deferral decision lies within ``rel`` (relative) of its
    threshold, so that fp32 rounding differences between backends may flip it.  Exact
    equality is not ambiguous (ties of equal logits are reproduced exactly)."""
    sides = decision_sides(name, param, p, q, p_logits)
    if sides is None:
        return torch.zeros(p.shape[0], dtype=torch.bool)
    lhs, rhs = sides
    gap = (lhs - rhs).abs()
    scale = torch.maximum(lhs.abs(), rhs.abs())
    finite = torch.isfinite(gap)
    return ((gap > 0) & (gap <= rel * scale) & finite).any(-1)


# ----------------------------------------------------------------------------- draws


def inverse_cdf_np(weights: np.ndarray, u: float) -> int:
    """Smallest ``v`` with ``Σ_{w ≤ v} weights_w > u Σ weights`` (float64)."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    hits = np.nonzero(cdf > u * cdf[-1])[0]
    return int(hits[0])


def cdf_boundary_distance(weights: np.ndarray, u: float) -> float:
    """Distance of ``u`` to the nearest inner CDF boundary of ``weights`` (normalized),
    counting only the upper ends of positive-weight tokens other than the last one:
    0 and 1 are exact in every backend, so ``u`` near them is no excuse."""
    w = np.asarray(weights, dtype=np.float64)
    cdf = np.cumsum(w) / w.sum()
    positive = np.nonzero(w > 0)[0]
    inner = cdf[positive[:-1]]
    return float(np.abs(inner - u).min()) if inner.size else np.inf


def expected_verify(pi, q, drafts, accept_u, draw_u, greedy, tol: float = 1e-5):
    """Speculative verification written out in float64 numpy, row by row.

    ``pi``, ``q``: [B, γ+1, V]; ``drafts``, ``accept_u``: [B, γ]; ``draw_u``, ``greedy``:
    [B].  Returns ``(tokens [B, γ+1], num_accepted [B], ambiguous [B])``; a row is
    ambiguous where an accept test or the draw lies within ``tol`` of its boundary.
    """
    pi, q = np.asarray(pi, np.float64), np.asarray(q, np.float64)
    drafts = np.asarray(drafts)
    batch, positions, _ = pi.shape
    gamma = positions - 1
    tokens = np.full((batch, positions), -1, dtype=np.int64)
    accepted = np.zeros(batch, dtype=np.int64)
    ambiguous = np.zeros(batch, dtype=bool)
    for b in range(batch):
        n = 0
        while n < gamma:
            x = int(drafts[b, n])
            if greedy[b]:
                top = np.sort(pi[b, n])[-2:] if pi.shape[-1] > 1 else pi[b, n]
                if top.size == 2 and 0 < top[1] - top[0] <= tol * top[1]:
                    ambiguous[b] = True
                ok = x == int(np.argmax(pi[b, n]))
            else:
                lhs, rhs = accept_u[b, n] * q[b, n, x], pi[b, n, x]
                if abs(lhs - rhs) <= tol * max(abs(lhs), abs(rhs)):
                    ambiguous[b] = True
                ok = lhs < rhs
            if not ok:
                break
            tokens[b, n] = x
            n += 1
        accepted[b] = n
        if greedy[b]:
            top = np.sort(pi[b, n])[-2:] if pi.shape[-1] > 1 else pi[b, n]
            if top.size == 2 and 0 < top[1] - top[0] <= tol * top[1]:
                ambiguous[b] = True
            tokens[b, n] = int(np.argmax(pi[b, n]))
            continue
        weights = pi[b, n]
        if n < gamma:
            residual = np.maximum(pi[b, n] - q[b, n], 0)
            if 0 < residual.sum() <= tol:
                ambiguous[b] = True
            if residual.sum() > 0:
                weights = residual
        if cdf_boundary_distance(weights, float(draw_u[b])) <= tol:
            ambiguous[b] = True
        tokens[b, n] = inverse_cdf_np(weights, float(draw_u[b]))
    return tokens, accepted, ambiguous


# ----------------------------------------------------------------------------- statistics

P_MIN = 1e-3  # p-value threshold of the statistical tests (fixed seeds: deterministic)


def chisquare_pvalue(counts, probs) -> float:
    """Goodness of fit of ``counts`` to ``probs``; cells of expected count < 5 are pooled.

    Fails outright if a cell of probability 0 was drawn."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    zero = probs == 0
    assert counts[zero].sum() == 0, f"drew tokens of probability 0: {np.nonzero(zero & (counts > 0))[0].tolist()}"
    n = counts.sum()
    expected, observed = n * probs[~zero], counts[~zero]
    small = expected < 5
    if small.any():
        expected = np.append(expected[~small], expected[small].sum())
        observed = np.append(observed[~small], observed[small].sum())
    if expected.size < 2:
        return 1.0
    return float(scipy.stats.chisquare(observed, expected).pvalue)
