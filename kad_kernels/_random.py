"""Randomness (docs/design.md §2.4): every mode becomes uniforms in [0, 1) before a draw.

``seed``/``offset`` follow Triton's ``tl.rand(seed, offset)`` bit for bit —
Philox-4x32-10, key = seed, counter = (offset, offset >> 32, 0, 0), first
output word — so a kernel can draw its own uniforms inside a CUDA graph and
still agree with the reference.  Counter layout of one call: row ``b`` of
``sample`` uses ``offset + b``; ``verify`` uses ``offset + b·(γ+1) + i`` for the
accept coin of draft ``i`` and ``offset + b·(γ+1) + γ`` for the draw.  A call
thus consumes ``B·(γ+1)`` counters (``B`` for ``sample``): advance ``offset`` by
that much between calls.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def _mul_hi_lo(a: Tensor, b: int) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of ``a · b`` for 32-bit ``a`` (int64 tensor) and ``b``,
    assembled from 16-bit halves so no int64 product overflows."""
    low = a * (b & 0xFFFF)
    high = a * (b >> 16)
    middle = high + (low >> 16)
    return middle >> 16, ((middle & 0xFFFF) << 16) | (low & 0xFFFF)


def philox_uniform(seed: Tensor, counter: Tensor) -> Tensor:
    """``tl.rand(seed, counter)``: f32 uniforms of the shape of int64 ``counter``."""
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    c0, c1 = counter & _MASK32, (counter >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(c2, _ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    # Triton's uint_to_uniform_float: fold the int32 sign, scale by 2^-31.
    signed = torch.where(c0 >= 2**31, c0 - 2**32, c0)
    folded = torch.where(signed < 0, -signed - 1, signed).to(torch.int32)
    return folded.float() * 4.6566127342e-10


def as_int64_scalar(name: str, value: int | Tensor, device: torch.device) -> Tensor:
    """``seed``/``offset`` as a 1-element int64 tensor on ``device`` (graph-capturable)."""
    if isinstance(value, Tensor):
        if value.dtype != torch.int64 or value.numel() != 1:
            raise ValueError(f"{name} must be an int or a 1-element int64 tensor, got {value.dtype} {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device}, logits on {device}")
        return value.reshape(1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or a 1-element int64 tensor, got {type(value).__name__}")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{name} must fit in int64, got {value}")
    return torch.tensor([value], dtype=torch.int64, device=device)
