"""What the tests of kad.hf share: the tiny models, a tokenizer that pads on the left,
prompts, and reading the new tokens out of ``generate``'s sequences."""

from __future__ import annotations

from collections.abc import Collection

import torch
from decoding_helpers import make_models, make_tokenizer
from transformers import LogitsProcessor

import kad

MODELS = make_models()
BASE, ALIGNED = MODELS["base"], MODELS["aligned"]
TOKENIZER = make_tokenizer()
TOKENIZER.pad_token = "<eos>"  # no prompt below starts with it
V = len(TOKENIZER)  # 72 tokens; the base model has 80 logits, the aligned one 76
EOS = TOKENIZER.eos_token_id
DECODER = kad.Decoder(BASE, ALIGNED, TOKENIZER)
TEXTS = {1: ["what is 2 + 2?"], 3: ["hello there", "a", "the quick brown"]}  # 3: ragged, left padded
NEW = 14
# Options at their neutral value: transformers still builds a processor from each, which changes
# nothing, so neither entry point may refuse them ("min_length=L": the prompt's own width).
NEUTRAL_OPTIONS = [dict(min_new_tokens=0), dict(min_p=0.0), dict(suppress_tokens=[]), dict(begin_suppress_tokens=[]),
                   "min_length=L"]  # fmt: skip


def neutral_option(option: dict | str, batch: dict[str, torch.Tensor]) -> dict:
    """``option`` of :data:`NEUTRAL_OPTIONS` as generate's keyword arguments for ``batch``."""
    return dict(min_length=batch["input_ids"].shape[1]) if option == "min_length=L" else option


def inputs(size: int, texts: list[str] | None = None, padding_side: str = "left") -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``TEXTS[size]`` (or ``texts``), padded."""
    texts = TEXTS[size] if texts is None else texts
    return dict(TOKENIZER(texts, return_tensors="pt", padding=True, padding_side=padding_side))


def prompt_ids(size: int) -> list[list[int]]:
    """The token ids of ``TEXTS[size]``, unpadded."""
    return [TOKENIZER(t).input_ids for t in TEXTS[size]]


def new_tokens(sequences: torch.Tensor, width: int, stop_ids: Collection[int] = (EOS,)) -> list[list[int]]:
    """Each row's new tokens (after the first ``width`` columns) up to and including its first stop token."""
    rows = []
    for row in sequences[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in stop_ids), None)
        rows.append(row if stop is None else row[: stop + 1])
    return rows


class BeyondVocabulary(LogitsProcessor):
    """Masks the lm_head rows past the shared vocabulary (the models pad their heads)."""

    def __call__(self, input_ids, scores):
        return scores.index_fill(1, torch.arange(V, scores.shape[1]), float("-inf"))


class Identity(LogitsProcessor):
    """A user's processor that changes nothing (still refused: kad cannot know that)."""

    def __call__(self, input_ids, scores):
        return scores
