"""Public entry points (docs/design.md §2.1): validate, normalize, dispatch to a backend."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import Tensor

from . import _validate
from ._backends import Backend, philox_draws, resolve
from ._random import as_int64_scalar
from .rules import Kind, Param, Rule


class Mixture(NamedTuple):
    """``probs``: π, f32 ``[B, V]``; ``alpha``: deferred mass α, f32 ``[B]``."""

    probs: Tensor
    alpha: Tensor


class Verified(NamedTuple):
    """``tokens``: i64 ``[B, γ+1]``, −1 after the ``num_accepted + 1`` emitted ones;
    ``num_accepted``: i64 ``[B]``."""

    tokens: Tensor
    num_accepted: Tensor


def resolve_backend(rule: Rule, device: torch.device | str, backend: str = "auto") -> str:
    """The name of the backend that ``backend`` (``"auto"``: the fastest here) runs
    ``rule`` with on tensors on ``device``, loaded: a backend loads on its first use
    (the C++ extension may be built then, about a minute), so calling this first keeps
    that out of a timed region.  ``RuntimeError`` as the entry points raise it."""
    _validate.rule_type(rule)
    _validate.backend_name(backend)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        # No tensor can live there, so no backend would run: naming one would mislead.
        raise RuntimeError(f"device {str(device)!r}: CUDA is not available here (torch {torch.__version__})")
    return resolve(backend, device, rule.kind).name


def _prepare(
    p_logits: Tensor, q_logits: Tensor, ref_logits: Tensor | None, rule: Rule, temperature: float | Tensor, ndim: int,
    backend: str, check: bool,
) -> tuple[Backend, Kind, Param, Param]:  # fmt: skip
    _validate.logits(p_logits, q_logits, ref_logits, rule, ndim)
    _validate.backend_name(backend)
    batch, device = p_logits.shape[0], p_logits.device
    kind, param = rule.spec(batch, device)
    t = _validate.temperature(temperature, batch, device)
    if check and isinstance(temperature, Tensor):
        _validate.temperature_values(temperature)  # the given values: a float64 1e-50 would read as 0 in f32
    return resolve(backend, device, kind), kind, param, t


def _randomness(
    impl: Backend,
    batch: int,
    positions: int,
    device: torch.device,
    generator: torch.Generator | None,
    seed: int | Tensor | None,
    offset: int | Tensor | None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(uniforms [B, positions], seed, offset)``: exactly one of uniforms or seed is set."""
    _validate.generator(generator)
    if seed is None:
        if offset is not None:
            raise ValueError("offset needs seed")
        return torch.rand(batch, positions, generator=generator, device=device, dtype=torch.float32), None, None
    if generator is not None:
        raise ValueError("pass either generator or seed/offset, not both")
    seed_t = as_int64_scalar("seed", seed, device)
    offset_t = as_int64_scalar("offset", 0 if offset is None else offset, device)
    if impl.philox_in_kernel:
        return None, seed_t, offset_t
    return philox_draws(seed_t, offset_t, batch, positions), None, None


def _maybe_greedy(temperature: float | Tensor) -> bool:
    """False only when no row can be greedy: a float T > 0 (a tensor is not read, a host sync)."""
    return isinstance(temperature, Tensor) or temperature == 0


def _refuse_mixed_randomness(uniforms: object, generator: object, seed: object, offset: object) -> None:
    if uniforms is not None and (generator is not None or seed is not None or offset is not None):
        raise ValueError("uniforms fixes the randomness: do not also pass generator, seed or offset")


def mixture(
    p_logits: Tensor,
    q_logits: Tensor,
    rule: Rule,
    temperature: float | Tensor = 1.0,
    *,
    ref_logits: Tensor | None = None,
    backend: str = "auto",
    check: bool = True,
) -> Mixture:
    """The target distribution ``π = p⊙(1−d) + α q`` and ``α`` for logits ``[B, V]``.

    For analysis and tests; decoding should call :func:`sample` or :func:`verify`,
    which never materialize π.  Only the ``torch`` backend differentiates π; the
    kernels' π requires no grad (backward through it would leave the logits' ``.grad`` empty)."""
    impl, kind, param, t = _prepare(p_logits, q_logits, ref_logits, rule, temperature, 2, backend, check)
    with contextlib.nullcontext() if impl.name == "torch" else torch.no_grad():
        probs, alpha, flags = impl.mixture(kind, param, p_logits, q_logits, ref_logits, t)
    if check:
        _validate.raise_on_bad_logits(flags)
    return Mixture(probs, alpha)


def sample(
    p_logits: Tensor,
    q_logits: Tensor,
    rule: Rule,
    temperature: float | Tensor = 1.0,
    *,
    ref_logits: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | Tensor | None = None,
    offset: int | Tensor | None = None,
    uniforms: Tensor | None = None,
    backend: str = "auto",
    check: bool = True,
) -> Tensor:
    """One token per row from π, i64 ``[B]``, for logits ``[B, V]``.

    Randomness: ``uniforms`` f32 ``[B]`` (inverse CDF in vocabulary order, the same
    tokens on every backend), else ``seed``/``offset`` (Philox, graph-capturable),
    else ``generator`` (or torch's default generator).  Greedy rows (T = 0) take
    the arg-max of π."""
    _refuse_mixed_randomness(uniforms, generator, seed, offset)
    impl, kind, param, t = _prepare(p_logits, q_logits, ref_logits, rule, temperature, 2, backend, check)
    batch, device = p_logits.shape[0], p_logits.device
    u: Tensor | None
    if uniforms is not None:
        u = _validate.uniforms("uniforms", uniforms, (batch,), device, check)
        seed_t = offset_t = None
    else:
        u, seed_t, offset_t = _randomness(impl, batch, 1, device, generator, seed, offset)
        u = None if u is None else u[:, 0]
    tokens, flags = impl.sample(
        kind, param, p_logits, q_logits, ref_logits, t, u, seed_t, offset_t, maybe_greedy=_maybe_greedy(temperature)
    )
    if check:
        _validate.raise_on_bad_logits(flags)
    return tokens


def verify(
    p_logits: Tensor,
    q_logits: Tensor,
    draft_tokens: Tensor,
    rule: Rule,
    temperature: float | Tensor = 1.0,
    *,
    ref_logits: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | Tensor | None = None,
    offset: int | Tensor | None = None,
    uniforms: tuple[Tensor, Tensor] | None = None,
    backend: str = "auto",
    check: bool = True,
) -> Verified:
    """Speculative verification with draft distribution q and target π.

    Logits ``[B, γ+1, V]``, ``draft_tokens`` ``[B, γ]`` drawn from q.  Draft ``x_i`` is
    accepted iff ``a_i · q_i(x_i) < π_i(x_i)``, in order; at the first rejection a
    token is drawn from ``max(π_i − q_i, 0)`` (π_i if that is empty), and if all γ
    pass a bonus token from π_γ.  ``uniforms = (a [B, γ], s [B])`` fixes the coins
    and the draw; otherwise as :func:`sample`."""
    _refuse_mixed_randomness(uniforms, generator, seed, offset)
    impl, kind, param, t = _prepare(p_logits, q_logits, ref_logits, rule, temperature, 3, backend, check)
    batch, positions, vocab = p_logits.shape
    device = p_logits.device
    if positions < 2:
        raise ValueError(f"verify needs γ >= 1 drafts: p_logits must be [B, γ+1, V], got {list(p_logits.shape)}")
    gamma = positions - 1
    _validate.draft_tokens(draft_tokens, batch, gamma, vocab, device, check)
    seed_t = offset_t = None
    accept: Tensor | None
    draw: Tensor | None
    if uniforms is not None:
        if not isinstance(uniforms, (tuple, list)) or len(uniforms) != 2:
            raise TypeError("uniforms must be a pair (accept [B, γ], draw [B])")
        accept = _validate.uniforms("uniforms[0] (accept)", uniforms[0], (batch, gamma), device, check)
        draw = _validate.uniforms("uniforms[1] (draw)", uniforms[1], (batch,), device, check)
    else:
        u, seed_t, offset_t = _randomness(impl, batch, positions, device, generator, seed, offset)
        accept, draw = (None, None) if u is None else (u[:, :gamma], u[:, gamma])
    tokens, accepted, flags = impl.verify(
        kind, param, p_logits, q_logits, ref_logits, draft_tokens, t, accept, draw, seed_t, offset_t,
        maybe_greedy=_maybe_greedy(temperature),
    )
    if check:
        _validate.raise_on_bad_logits(flags)
    return Verified(tokens, accepted)
