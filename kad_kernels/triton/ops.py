"""``torch.library`` custom ops around the Triton launchers, with fake (meta)
implementations so ``torch.compile`` traces through them without graph breaks.

``param`` and temperature cross an op as ``(tensor or None, float)`` (``value_args``);
the launchers take the tensor, else the float, as the kernels' argument."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _fake
from .._backend import value_args
from ..rules import Kind, Param
from . import mixture as _mixture
from . import sample as _sample
from . import verify as _verify


def _given(values: Optional[Tensor], value: float) -> Tensor | float:
    return values if values is not None else value


def _same_strides(p: Tensor, q: Tensor, ref: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The kernels address p, q and ref with p's strides: copy in the rare case they differ."""
    if q.stride() == p.stride() and (ref is None or ref.stride() == p.stride()):
        return p, q, ref
    return p.contiguous(), q.contiguous(), None if ref is None else ref.contiguous()


@torch.library.custom_op("kad::triton_mixture", mutates_args=())
def _mixture_op(
    kind: int,
    param: Optional[Tensor],
    param_value: float,
    p: Tensor,
    q: Tensor,
    ref: Optional[Tensor],
    temperature: Optional[Tensor],
    temperature_value: float,
) -> tuple[Tensor, Tensor, Tensor]:
    if p.shape[0] == 0:  # no rows: nothing to launch (a layout needs one)
        return _fake.mixture(kind, param, param_value, p, q, ref, temperature, temperature_value)
    p, q, ref = _same_strides(p, q, ref)
    return _mixture.mixture(Kind(kind), _given(param, param_value), p, q, ref, _given(temperature, temperature_value))


_mixture_op.register_fake(_fake.mixture)


@torch.library.custom_op("kad::triton_sample", mutates_args=())
def _sample_op(
    kind: int,
    param: Optional[Tensor],
    param_value: float,
    p: Tensor,
    q: Tensor,
    ref: Optional[Tensor],
    temperature: Optional[Tensor],
    temperature_value: float,
    uniforms: Optional[Tensor],
    seed: Optional[Tensor],
    offset: Optional[Tensor],
    maybe_greedy: bool,
) -> tuple[Tensor, Tensor]:
    if p.shape[0] == 0:
        return _fake.sample(kind, param, param_value, p, q, ref, temperature, temperature_value, uniforms, seed, offset)
    p, q, ref = _same_strides(p, q, ref)
    return _sample.sample(
        Kind(kind), _given(param, param_value), p, q, ref, _given(temperature, temperature_value), uniforms, seed,
        offset, maybe_greedy,
    )


_sample_op.register_fake(_fake.sample)


@torch.library.custom_op("kad::triton_verify", mutates_args=())
def _verify_op(
    kind: int,
    param: Optional[Tensor],
    param_value: float,
    p: Tensor,
    q: Tensor,
    ref: Optional[Tensor],
    draft: Tensor,
    temperature: Optional[Tensor],
    temperature_value: float,
    accept_uniforms: Optional[Tensor],
    draw_uniforms: Optional[Tensor],
    seed: Optional[Tensor],
    offset: Optional[Tensor],
    maybe_greedy: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    if p.shape[0] == 0:
        return _fake.verify(kind, param, param_value, p, q, ref, draft, temperature, temperature_value,
                            accept_uniforms, draw_uniforms, seed, offset)  # fmt: skip
    p, q, ref = _same_strides(p, q, ref)
    return _verify.verify(
        Kind(kind), _given(param, param_value), p, q, ref, draft, _given(temperature, temperature_value),
        accept_uniforms, draw_uniforms, seed, offset, maybe_greedy,
    )


_verify_op.register_fake(_fake.verify)


# Signatures as _backend's MixtureFn, SampleFn and VerifyFn, parameter names and defaults included (the protocols
# FunctionBackend's fields are typed with).
def mixture_op(
    kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, temperature: Param
) -> tuple[Tensor, Tensor, Tensor]:
    return _mixture_op(int(kind), *value_args(param), p, q, ref, *value_args(temperature))


def sample_op(
    kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, temperature: Param, uniforms: Tensor | None,
    seed: Tensor | None = None, offset: Tensor | None = None, maybe_greedy: bool = True,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    return _sample_op(
        int(kind), *value_args(param), p, q, ref, *value_args(temperature), uniforms, seed, offset, maybe_greedy
    )


def verify_op(
    kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, draft: Tensor, temperature: Param,
    accept_uniforms: Tensor | None, draw_uniforms: Tensor | None, seed: Tensor | None = None,
    offset: Tensor | None = None, maybe_greedy: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return _verify_op(
        int(kind), *value_args(param), p, q, ref, draft, *value_args(temperature), accept_uniforms, draw_uniforms, seed,
        offset, maybe_greedy,
    )
