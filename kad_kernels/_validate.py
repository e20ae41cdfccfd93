"""Argument checks shared by every public entry point (docs/design.md §2.1–§2.2).

Everything here that reads tensor *values* (token ranges, uniforms, the
bad-logits flags) costs a host sync and runs only with ``check=True``; shape,
dtype and device checks are free and always run.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .reference import BAD_ALL_NEG_INF, BAD_NONFINITE
from .rules import Rule

# The logits' dtypes every backend takes (public as kad_kernels.LOGIT_DTYPES).
LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_FLAG_TENSORS = ("p_logits", "q_logits", "ref_logits")  # 2 flag bits each, in this order


def rule_type(rule: object) -> None:
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be a kad_kernels rule (Dual, Primal, ...), got {type(rule).__name__}")


def backend_name(backend: object) -> None:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a backend's name (a str, e.g. 'auto'), got {backend!r:.60}")


def generator(value: object) -> None:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(value).__name__}")


def logits(p_logits: Tensor, q_logits: Tensor, ref_logits: Tensor | None, rule: Rule, ndim: int) -> None:
    """p/q (and ref) share shape, dtype and device; ``ndim`` dims; last dim contiguous."""
    rule_type(rule)
    named = {"p_logits": p_logits, "q_logits": q_logits}
    if rule.needs_ref:
        if ref_logits is None:
            raise ValueError(f"{type(rule).__name__} needs ref_logits (the unaligned model's logits)")
        named["ref_logits"] = ref_logits
    elif ref_logits is not None:
        raise ValueError(f"ref_logits is only used by ImplicitReward, not {type(rule).__name__}")
    for name, x in named.items():
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        if x.dtype not in LOGIT_DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
        if x.dim() != ndim:
            raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
        if x.shape[-1] == 0:
            raise ValueError(f"{name} has an empty vocabulary: shape {tuple(x.shape)}")
        if x.stride(-1) != 1 and x.shape[-1] > 1:
            raise ValueError(f"{name} must be contiguous in its last dim, got strides {x.stride()}")
        if x.shape != p_logits.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but p_logits has {tuple(p_logits.shape)}")
        if x.dtype != p_logits.dtype:
            raise TypeError(f"{name} is {x.dtype} but p_logits is {p_logits.dtype}")
        if x.device != p_logits.device:
            raise ValueError(f"{name} is on {x.device} but p_logits on {p_logits.device}")


# A positive T is a normal float32: the kernels scale logits by 1/T in fp32, which a
# subnormal T overflows (and a T beyond fp32's range does not convert).
_F32 = torch.finfo(torch.float32)
_NORMAL = f"a float32 normal number when > 0 ([{_F32.tiny:.3g}, {_F32.max:.3g}])"
# What every front end says of a temperature out of range: "temperature must be " + this.
TEMPERATURE_RANGE = f"finite and >= 0 (0 = greedy), {_NORMAL}"


def temperature_in_range(value: float) -> bool:
    """Whether a float temperature is one the kernels take: 0 (greedy) or a normal float32
    (an int or a numpy number too; not a bool, which the entry points refuse)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return value == 0 or _F32.tiny <= value <= _F32.max


def temperature(value: float | Tensor, rows: int, device: torch.device) -> float | Tensor:
    """T as f32 ``[rows]`` on ``device``, or a float for every row (no device tensor:
    backends take it as a kernel argument); T = 0 marks a greedy row, T < 0, inf,
    NaN and T outside float32's normal range are refused."""
    if isinstance(value, Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != rows):
            raise ValueError(f"temperature must be a float or a tensor [{rows}], got shape {tuple(value.shape)}")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"temperature must be a real tensor, got {value.dtype}")
        if value.device != device:
            raise ValueError(f"temperature is on {value.device}, logits on {device}")
        t = value.to(torch.float32).expand(rows).contiguous()
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy's float32 is no float
        if not temperature_in_range(value):
            raise ValueError(f"temperature must be {TEMPERATURE_RANGE}, got {value}")
        return float(value)
    else:
        raise TypeError(f"temperature must be a float or a tensor, got {type(value).__name__}")
    return t


def temperature_values(t: Tensor) -> None:
    """Value check of a tensor temperature in its own dtype (host sync)."""
    if not (torch.isfinite(t) & ((t == 0) | ((t >= _F32.tiny) & (t <= _F32.max)))).all():
        raise ValueError(f"temperature must be {TEMPERATURE_RANGE}, got {t.tolist()}")


def uniforms(name: str, u: Tensor, shape: tuple[int, ...], device: torch.device, check: bool) -> Tensor:
    """A float32 tensor of ``shape`` on ``device`` with values in [0, 1)."""
    if not isinstance(u, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(u).__name__}")
    if tuple(u.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(u.shape)}")
    if u.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {u.dtype}")
    if u.device != device:
        raise ValueError(f"{name} is on {u.device}, logits on {device}")
    if check and u.numel() and not ((u >= 0) & (u < 1)).all():
        raise ValueError(f"{name} must lie in [0, 1)")
    return u


def draft_tokens(draft: Tensor, batch: int, gamma: int, vocab: int, device: torch.device, check: bool) -> None:
    """int32/int64 ``[B, γ]`` on ``device``, ids in ``[0, V)``."""
    if not isinstance(draft, Tensor):
        raise TypeError(f"draft_tokens must be a tensor, got {type(draft).__name__}")
    if draft.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"draft_tokens must be int32 or int64, got {draft.dtype}")
    if tuple(draft.shape) != (batch, gamma):
        raise ValueError(
            f"draft_tokens must have shape [B, γ] = [{batch}, {gamma}] for logits [B, γ+1, V], got {list(draft.shape)}"
        )
    if draft.device != device:
        raise ValueError(f"draft_tokens is on {draft.device}, logits on {device}")
    if check and draft.numel():
        bad = ((draft < 0) | (draft >= vocab)).nonzero()
        if bad.numel():
            b, i = bad[0].tolist()
            raise ValueError(f"draft_tokens[{b}, {i}] = {int(draft[b, i])} is outside the vocabulary [0, {vocab})")


def raise_on_bad_logits(flags: Tensor) -> None:
    """Turn the per-row flags of a backend (``[N]`` or ``[B, γ+1]``) into a ValueError."""
    bad = flags.nonzero()
    if not bad.numel():
        return
    index = bad[0].tolist()
    flag = int(flags[tuple(index)])
    where = ", ".join(map(str, index))
    for k, name in enumerate(_FLAG_TENSORS):
        bits = (flag >> (2 * k)) & 3
        if bits & BAD_NONFINITE:
            raise ValueError(f"{name} row [{where}] contains NaN or +inf")
        if bits & BAD_ALL_NEG_INF:
            raise ValueError(f"{name} row [{where}] is -inf everywhere")
