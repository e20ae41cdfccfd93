"""Checks of an engine's constructor arguments: a bad value is a ``ValueError`` naming
the argument when the engine is made, not a Python error from deep inside a later call."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from transformers import PreTrainedTokenizerBase


def check_count(name: str, value: object, *, minimum: int = 1, maximum: int | None = None, optional: bool = False) -> None:
    """``ValueError`` naming the argument unless ``value`` is an int in ``[minimum, maximum]`` (or None)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    count = int(value)
    if count < minimum or (maximum is not None and count > maximum):
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


def check_flag(name: str, value: object) -> None:
    """``TypeError`` naming the argument unless ``value`` is a bool (a string such as
    ``"no"`` would count as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r:.80}")


def checked_stop_ids(ids: object, vocab_size: int | None = None) -> frozenset[int]:
    """``ids`` (an iterable of token ids) as a frozenset of Python ints; ``TypeError`` naming
    ``stop_ids`` otherwise, and ``ValueError`` for an id outside ``[0, vocab_size)`` where given."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"stop_ids must be a set of token ids, got {ids!r:.80}")
    ids = frozenset(ids)
    if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"stop_ids must be token ids (ints), got {sorted(ids, key=repr)!r:.80}")
    if vocab_size is not None and not all(0 <= i < vocab_size for i in ids):
        raise ValueError(f"stop_ids must be in [0, {vocab_size}), got {sorted(ids)!r:.80}")
    return frozenset(int(i) for i in ids)
