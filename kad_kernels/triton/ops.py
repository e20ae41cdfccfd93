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
from ..rules import Kind
from . import mixture as _mixture
from . import sample as _sample
from . import verify as _verify


def _given(values: Optional[Tensor], value: float) -> Tensor | float:
    return values if values is not None else value


def _same_strides(p: Tensor, *others: Optional[Tensor]) -> tuple[Tensor, ...]:
    """The kernels address p, q and ref with p's strides: copy in the rare case they differ."""
    tensors = (p, *others)
    if all(t is None or t.stride() == p.stride() for t in others):
        return tensors
    return tuple(None if t is None else t.contiguous() for t in tensors)


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


def mixture_op(kind, param, p, q, ref, temperature):
    return _mixture_op(int(kind), *value_args(param), p, q, ref, *value_args(temperature))


def sample_op(kind, param, p, q, ref, temperature, uniforms, seed, offset, maybe_greedy=True):
    return _sample_op(
        int(kind), *value_args(param), p, q, ref, *value_args(temperature), uniforms, seed, offset, maybe_greedy
    )


def verify_op(
    kind, param, p, q, ref, draft, temperature, accept_uniforms, draw_uniforms, seed, offset, maybe_greedy=True
):
    return _verify_op(
        int(kind), *value_args(param), p, q, ref, draft, *value_args(temperature), accept_uniforms, draw_uniforms, seed,
        offset, maybe_greedy,
    )
