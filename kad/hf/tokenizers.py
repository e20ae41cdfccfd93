"""The tokenizers of the models handed to :mod:`kad.hf`: read from the files saved with a
model (never downloaded), and compared (:func:`~kad.engines.vocabulary.check_same_vocabulary`) once
per pair: KAD mixes two distributions id by id."""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Mapping

from huggingface_hub import try_to_load_from_cache
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..engines.vocabulary import check_same_vocabulary

# Tokenizer pairs already found to share a vocabulary, with their sizes then (comparing
# 150k-token vocabularies takes ~0.2 s: once per pair, not once per generate call).
_SAME_VOCABULARY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_once(tokenizers: Mapping[str, PreTrainedTokenizerBase]) -> None:
    """:func:`~kad.engines.vocabulary.check_same_vocabulary` of two tokenizers, remembered while they
    live and keep their sizes (a token added to one is checked again)."""
    first, second = tokenizers.values()
    sizes = (len(first), len(second))
    if first is second or _SAME_VOCABULARY.get(first, {}).get(second) == sizes:
        return
    check_same_vocabulary(tokenizers)
    _SAME_VOCABULARY.setdefault(first, weakref.WeakKeyDictionary())[second] = sizes


# A tokenizer's own files, one of which a saved tokenizer has: without them transformers
# builds an empty tokenizer from the model's config alone, which no vocabulary check may read.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _has_tokenizer_files(name_or_path: str) -> bool:
    if os.path.isdir(name_or_path):
        return any(os.path.isfile(os.path.join(name_or_path, f)) for f in _TOKENIZER_FILES)
    try:
        return any(isinstance(try_to_load_from_cache(name_or_path, f), str) for f in _TOKENIZER_FILES)
    except ValueError:  # not a hub id either (HFValidationError)
        return False


@functools.lru_cache(maxsize=8)
def local_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a model, if it is on this machine (never downloads); ``None``
    for a model saved without one."""
    if not name_or_path or not _has_tokenizer_files(name_or_path):
        return None
    try:
        if os.path.isdir(name_or_path):
            return AutoTokenizer.from_pretrained(name_or_path)
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError):
        return None
