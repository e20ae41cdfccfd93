"""Stop strings: a row ends with the first new token that completes one of them.

As transformers' ``stop_strings`` (and vLLM's ``stop``, less its cut of the
text): the token that completes the string is kept, so a row's text holds the
string and may run on past it to the end of that token, and its ids decode to
its text.  A string is found on token ids, not on decoded text, by transformers'
``StopStringCriteria``: it knows each token's text in the vocabulary (byte-level
and byte-fallback pieces too) and matches a string spread over several tokens,
overhanging either end.  A string completed by a row's first new tokens may
begin in the prompt, as in transformers, where the prompt is part of the ids
the criterion reads; a row's left padding is not (transformers' batched
``generate`` reads pad tokens as text there, so a string longer than a short
prompt can reach into them).  Design: docs/design.md §5.5.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase
from transformers.generation import StopStringCriteria

from .engines.arguments import checked_tokenizer


def checked_stop_strings(strings: object) -> tuple[str, ...]:
    """``strings`` (one string or a list of them) as a tuple; ``TypeError``/``ValueError``
    naming ``stop_strings`` for anything else, none or an empty string."""
    if isinstance(strings, str):
        strings = [strings]
    if not isinstance(strings, (list, tuple)) or not all(isinstance(s, str) for s in strings):
        raise TypeError(f"stop_strings must be a string or a list of strings, got {strings!r:.80}")
    if not strings:
        raise ValueError("stop_strings is empty: give at least one string, or None for no stop strings")
    if "" in strings:
        raise ValueError("stop_strings has an empty string, which every row would complete at once")
    return tuple(strings)


class StopStrings:
    """The strings that end a row, matched on the token ids of ``tokenizer``'s vocabulary.

    ``strings``: one string or a list (``TypeError``/``ValueError`` naming
    ``stop_strings`` otherwise, and where no token of the vocabulary can end any
    of them); ``tokenizer``: the models' shared one."""

    def __init__(self, strings: str | Sequence[str], tokenizer: PreTrainedTokenizerBase):
        self.strings = checked_stop_strings(strings)
        self._criterion = _criterion(checked_tokenizer("tokenizer", tokenizer), self.strings)
        # A string of n characters (bytes, for byte-level vocabularies) spans at most n tokens:
        # the criterion reads no further back.
        self._reach = self._criterion.maximum_token_len

    def __repr__(self) -> str:
        return f"StopStrings({list(self.strings)!r})"

    def first_ends(
        self, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]], new: Sequence[Sequence[int]]
    ) -> list[int | None]:
        """For each row, the index in ``new[row]`` (its tokens of this round) of the first
        that completes a stop string, read after its prompt and its earlier tokens
        (``outputs[row]``); ``None`` where none does.  One criterion call per width of
        window: all are ``reach`` tokens wide once a row has that many."""
        windows: dict[int, list[list[int]]] = {}  # width -> the ids ending at each new token
        places: dict[int, list[tuple[int, int]]] = {}  # width -> (row, index in new[row])
        for row, (prompt, output, tail) in enumerate(zip(prompts, outputs, new)):
            ids = [*_last(self._reach - 1, prompt, output), *tail]
            offset = len(ids) - len(tail)
            for j in range(len(tail)):
                window = ids[max(0, offset + j + 1 - self._reach): offset + j + 1]
                windows.setdefault(len(window), []).append(window)
                places.setdefault(len(window), []).append((row, j))
        ends: list[int | None] = [None] * len(new)
        for width, group in windows.items():
            hits = self._criterion(torch.tensor(group, dtype=torch.long), None).tolist()
            for (row, j), hit in zip(places[width], hits):
                end = ends[row]
                if hit and (end is None or j < end):
                    ends[row] = j
        return ends


# Building a criterion reads the whole vocabulary (about a second for 150k tokens, and
# transformers' own cache still sorts and hashes it): kept per tokenizer while it lives,
# for its last few sets of strings and its size (tokens may be added to it).
_BUILT: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, OrderedDict[tuple[int, tuple[str, ...]], StopStringCriteria]]
_BUILT = weakref.WeakKeyDictionary()
_KEPT_PER_TOKENIZER = 8
_BUILT_GUARD = threading.Lock()  # generations of several threads read and trim it


def _criterion(tokenizer: PreTrainedTokenizerBase, strings: tuple[str, ...]) -> StopStringCriteria:
    """transformers' criterion for ``strings`` over ``tokenizer``'s vocabulary; ``ValueError``
    naming ``stop_strings`` where no token can end any of them (transformers refuses only
    that: a string that no token can end among others that one can is never found)."""
    key = (len(tokenizer), strings)
    with _BUILT_GUARD:
        built = _BUILT.setdefault(tokenizer, OrderedDict())
        if key in built:
            built.move_to_end(key)
            return built[key]
    try:
        criterion = StopStringCriteria(tokenizer, list(strings))
    except ValueError:
        unwritten = [s for s in strings if not _written(tokenizer, s)]
        if not unwritten:
            raise
        raise ValueError(f"stop_strings {unwritten!r}: no token of the tokenizer's vocabulary can end "
                         f"{'it' if len(unwritten) == 1 else 'them'} (a character that none of its tokens holds)"
                         ) from None  # fmt: skip
    with _BUILT_GUARD:
        built[key] = criterion
        if len(built) > _KEPT_PER_TOKENIZER:
            built.popitem(last=False)
    return criterion


def _written(tokenizer: PreTrainedTokenizerBase, string: str) -> bool:
    """Whether some token of ``tokenizer`` can end ``string``."""
    try:
        StopStringCriteria(tokenizer, [string])
    except ValueError:
        return False
    return True


def _last(n: int, first: Sequence[int], second: Sequence[int]) -> list[int]:
    """The last ``n`` ids of ``first`` followed by ``second``, without joining them whole."""
    if n <= 0:
        return []
    if len(second) >= n:
        return list(second[len(second) - n:])
    return [*first[max(0, len(first) - (n - len(second))):], *second]
