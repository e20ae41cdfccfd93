"""Checks of an engine's constructor arguments: a bad value is a ``ValueError`` naming
the argument when the engine is made, not a Python error from deep inside a later call."""

from __future__ import annotations

import math
import numbers

from transformers import PreTrainedTokenizerBase


def check_count(name: str, value: object, *, minimum: int = 1, maximum: int | None = None, optional: bool = False) -> None:
    """``ValueError`` naming the argument unless ``value`` is an int in ``[minimum, maximum]`` (or None)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_seconds(name: str, value: object, *, zero: bool = False, optional: bool = False) -> None:
    """``ValueError`` naming the argument unless ``value`` is a finite number of seconds
    ``> 0`` (``>= 0`` with ``zero``), or None where ``optional``."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be {'>= 0' if zero else '> 0'} seconds, got {value!r}")


def checked_tokenizer(name: str, tokenizer: object) -> PreTrainedTokenizerBase:
    """``tokenizer`` if it is a transformers tokenizer; ``TypeError`` naming the argument
    ``name`` otherwise (a hub id given as a tokenizer has a ``len`` too: that of the id)."""
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(f"{name} must be a transformers tokenizer (PreTrainedTokenizerBase), got {tokenizer!r:.80}")
    return tokenizer
