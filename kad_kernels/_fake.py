"""Output shapes of the backend ops, for their fake (meta) implementations: what
``torch.compile`` traces in place of a kernel (the Triton custom ops and the C++
``kad::native_*`` ops share them).  A batch of no rows gets these empty outputs
from the Triton ops too, which have no launch for it."""

from __future__ import annotations

import torch
from torch import Tensor


# The custom ops' arguments: the rule kind as an int, param and temperature each as
# (f32 [B] tensor or None, the one float otherwise) (_backend.value_args).
def mixture(
    kind: int, param: Tensor | None, param_value: float, p: Tensor, q: Tensor, ref: Tensor | None,
    temperature: Tensor | None, temperature_value: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """probs f32 [N, V], alpha f32 [N], flags i32 [N]."""
    batch, vocab = p.shape
    return (
        p.new_empty(batch, vocab, dtype=torch.float32),
        p.new_empty(batch, dtype=torch.float32),
        p.new_empty(batch, dtype=torch.int32),
    )


def sample(
    kind: int, param: Tensor | None, param_value: float, p: Tensor, q: Tensor, ref: Tensor | None,
    temperature: Tensor | None, temperature_value: float, uniforms: Tensor | None, seed: Tensor | None,
    offset: Tensor | None, maybe_greedy: bool = True,
) -> tuple[Tensor, Tensor]:
    """tokens i64 [N], flags i32 [N]."""
    batch = p.shape[0]
    return p.new_empty(batch, dtype=torch.int64), p.new_empty(batch, dtype=torch.int32)


def verify(
    kind: int, param: Tensor | None, param_value: float, p: Tensor, q: Tensor, ref: Tensor | None, draft: Tensor,
    temperature: Tensor | None, temperature_value: float, accept_uniforms: Tensor | None,
    draw_uniforms: Tensor | None, seed: Tensor | None, offset: Tensor | None, maybe_greedy: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """tokens i64 [B, γ+1], num_accepted i64 [B], flags i32 [B, γ+1]."""
    batch, positions, _ = p.shape
    return (
        p.new_empty(batch, positions, dtype=torch.int64),
        p.new_empty(batch, dtype=torch.int64),
        p.new_empty(batch, positions, dtype=torch.int32),
    )
