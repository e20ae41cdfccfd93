"""Loading models by hub id or local path, and the shared-vocabulary check."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


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


def load(
    name_or_path: str, device: torch.device, dtype: str | torch.dtype = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (in eval mode, on ``device``) and its tokenizer, by hub id or local path.

    Attention is SDPA: the decoding loop masks columns in the middle of a sequence
    (see :mod:`kad.batch`), which SDPA and eager attention honour exactly."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval(), tokenizer
