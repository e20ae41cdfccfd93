"""The tokenizers of the models handed to :mod:`kad.hf`: read from the files saved with a
model (never downloaded), and compared (:func:`~kad.models.check_same_vocabulary`) once
per pair: KAD mixes two distributions id by id."""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Mapping

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..models import check_same_vocabulary

# Tokenizer pairs already found to share a vocabulary, with their sizes then (comparing
# 150k-token vocabularies takes ~0.2 s: once per pair, not once per generate call).
_SAME_VOCABULARY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_once(tokenizers: Mapping[str, PreTrainedTokenizerBase]) -> None:
    """:func:`~kad.models.check_same_vocabulary` of two tokenizers, remembered while they
    live and keep their sizes (a token added to one is checked again)."""
    first, second = tokenizers.values()
    sizes = (len(first), len(second))
    if first is second or _SAME_VOCABULARY.get(first, {}).get(second) == sizes:
        return
    check_same_vocabulary(tokenizers)
    _SAME_VOCABULARY.setdefault(first, weakref.WeakKeyDictionary())[second] = sizes


@functools.lru_cache(maxsize=8)
def local_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a model, if it is on this machine (never downloads)."""
    if not name_or_path:
        return None
    try:
        if os.path.isdir(name_or_path):
            return AutoTokenizer.from_pretrained(name_or_path)
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError):
        return None
