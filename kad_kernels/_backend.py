"""What every backend shares, a leaf below dispatch and the backends (docs/design.md §3.2).

Imports run one way: ``api`` → ``_backends`` (registry, dispatch) → the backends
(``_backends``' torch functions, ``_native``, ``triton/``) → this module.  It holds
the shape of a backend and the argument helpers they use, and imports no backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .rules import Kind, Param


class MixtureFn(Protocol):
    def __call__(
        self, kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, temperature: Param
    ) -> tuple[Tensor, Tensor, Tensor]:
        """π f32 ``[N, V]``, α f32 ``[N]``, bad-logit flags i32 ``[N]`` of logits ``[N, V]``."""
        ...


class SampleFn(Protocol):
    def __call__(
        self, kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, temperature: Param,
        uniforms: Tensor | None, seed: Tensor | None = None, offset: Tensor | None = None, maybe_greedy: bool = True,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Tokens i64 ``[B]`` drawn from π with ``uniforms`` f32 ``[B]`` (or Philox ``seed``/``offset``), flags i32 ``[B]``."""
        ...


class VerifyFn(Protocol):
    def __call__(
        self, kind: Kind, param: Param, p: Tensor, q: Tensor, ref: Tensor | None, draft: Tensor, temperature: Param,
        accept_uniforms: Tensor | None, draw_uniforms: Tensor | None, seed: Tensor | None = None,
        offset: Tensor | None = None, maybe_greedy: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """From p and q ``[B, γ+1, V]`` and ``draft`` i64 ``[B, γ]``: the emitted tokens
        i64 ``[B, γ+1]``, accepted counts i64 ``[B]``, flags i32 ``[B, γ+1]``."""
        ...


class Backend(Protocol):
    """Three functions on validated, normalized arguments (see :mod:`._backends`)."""

    @property
    def name(self) -> str: ...

    @property
    def mixture(self) -> MixtureFn: ...

    @property
    def sample(self) -> SampleFn: ...

    @property
    def verify(self) -> VerifyFn: ...

    @property
    def philox_in_kernel(self) -> bool:
        """Takes ``seed``/``offset`` and draws inside its kernels (uniforms None)."""
        ...


@dataclass(frozen=True)
class FunctionBackend:
    """A :class:`Backend` made of three functions."""

    name: str
    mixture: MixtureFn
    sample: SampleFn
    verify: VerifyFn
    philox_in_kernel: bool


def as_rows(value: Param, rows: int, device: torch.device) -> Tensor:
    """``param`` or temperature as f32 ``[rows]``, for code that takes tensors only (the reference)."""
    if isinstance(value, Tensor):
        return value
    # Through float64: a finite value beyond float32's range (Primal(1e300)) rounds to inf,
    # as the kernels' float argument does, where a float32 fill would refuse it.
    return torch.full((rows,), value, dtype=torch.float64, device=device).to(torch.float32)


def value_args(value: Param) -> tuple[Tensor | None, float]:
    """``(tensor, float)``, as ops and kernels take ``param`` and temperature (an op
    schema has no "tensor or float"): the float counts only when the tensor is None."""
    return (value, 0.0) if isinstance(value, Tensor) else (None, value)
