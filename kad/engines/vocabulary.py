"""The vocabulary checks: KAD mixes distributions id by id, so one id must mean one token
in every model.

Tokenizers at hand are compared whole (:func:`check_same_vocabulary`).  An engine whose
runtime has a tokenizer of its own (vLLM's, the GGUF's) is probed instead: comparing
whole vocabularies is slow over HTTP and brittle across tokenizer libraries; a probe
text with the cases that tell tokenizers apart (digits, whitespace runs, accents, CJK,
emoji, a special token) plus a few ids read back catches a different model family or
version.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from transformers import PreTrainedTokenizerBase


def check_same_vocabulary(tokenizers: Mapping[str, PreTrainedTokenizerBase]) -> None:
    """Raise ``ValueError`` unless every tokenizer maps the same tokens to the same ids.

    The keys name the tokenizers in the error.  KAD mixes the models' next-token
    distributions id by id, so one token must have one id in every model."""
    (first_name, first), *others = tokenizers.items()
    expected = first.get_vocab()
    for name, tokenizer in others:
        vocab = tokenizer.get_vocab()
        if vocab != expected:
            token = min(t for t in expected.keys() | vocab.keys() if expected.get(t) != vocab.get(t))
            raise ValueError(
                f"the tokenizers of {first_name} and {name} differ: {len(expected)} vs {len(vocab)} tokens, "
                f"and {token!r} has id {expected.get(token)} in {first_name} but {vocab.get(token)} in {name}; "
                "KAD mixes the models' distributions token by token, so they must share one vocabulary"
            )


PROBE = "KAD check: 17 * 3 = 51;\n\tnaïve café, 東京 🚀 <|endoftext|> def f(x):  return x**2"


def probe_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """:data:`PROBE` as ``tokenizer`` reads it back: itself for a byte-level tokenizer;
    for a tokenizer without some of its characters, the text with its unknown token
    in their place, which the other side must then read the same way."""
    return _text(tokenizer, tokenizer(PROBE, add_special_tokens=False).input_ids)


def _text(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """``tokenizer``'s text of one sequence (``decode`` is typed for a batch too)."""
    return cast(str, tokenizer.decode(ids))


def vocabulary_mismatch(
    tokenizer: PreTrainedTokenizerBase,
    tokenize: Callable[[str], Sequence[int] | None],
    token_text: Callable[[int], str | None],
) -> str | None:
    """How the other side's tokenizer differs from ``tokenizer``, or ``None``.

    ``tokenize(text)``: its ids for ``text`` (special tokens parsed, none added);
    ``token_text(id)``: its text of one id (``None`` for an unusable answer)."""
    text = probe_text(tokenizer)
    local = tokenizer(text, add_special_tokens=False).input_ids
    other = tokenize(text)
    if other is None:
        return f"{text!r} has no ids there"
    if list(other) != local:  # from the first difference on, a few ids: the probe text is long
        first = next(i for i, (a, b) in enumerate(itertools.zip_longest(other, local)) if a != b)
        return f"{text!r} is {_ids_from(other, first)} there but {_ids_from(local, first)} here"
    size = len(tokenizer)
    for i in sorted({0, 1, size // 3, size // 2, size - 1}):
        theirs, ours = token_text(i), _text(tokenizer, [i])
        if not _same_piece(theirs, ours):
            return f"token {i} is {theirs!r} there but {ours!r} here"
    return None


def _ids_from(ids: Sequence[int], first: int, shown: int = 4) -> str:
    """``"[…, 5, 6, 7, 8, …]"``: the ids from position ``first`` on, a few of them."""
    head = ", ".join(map(str, ids[first : first + shown]))
    return f"[{'…, ' if first else ''}{head}{', …' if len(ids) > first + shown else ''}]"


def _same_piece(theirs: str | None, ours: str) -> bool:
    """Whether two texts of one token agree.  A SentencePiece decoder drops the space of a
    ``▁`` piece at the start of a text, so transformers decodes that token alone as ``"m"``
    where llama.cpp's piece is ``" m"``: one leading space is not a difference."""
    return theirs is not None and (theirs == ours or theirs.removeprefix(" ") == ours.removeprefix(" "))
