"""The Hugging Face engine: a transformers causal LM with a ``DynamicCache``."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from ..batch import Batch
from ..settings import Settings


def token_ids(value: object) -> list[int]:
    """Token ids as a generation config holds them (``eos_token_id``, ``pad_token_id``):
    None, an int, a list, a numpy or torch array."""
    return [] if value is None else [int(i) for i in torch.as_tensor(value).flatten().tolist()]


def _max_length(model: PreTrainedModel) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


class HFEngine:
    """A transformers causal LM (any ``AutoModelForCausalLM`` with a ``DynamicCache``)
    behind the :class:`~kad.engines.Engine` protocol.

    ``vocab_size``: logits are cut to the first ``vocab_size`` rows of the lm_head
    (models may pad it beyond the tokenizer; default: all of them).  The batch
    is copied to the model's device if it lives elsewhere.  The attention must
    honour a 2-D mask with holes (SDPA and eager do; see :mod:`kad.batch`)."""

    def __init__(self, model: PreTrainedModel, vocab_size: int | None = None):
        self.model = model
        logits = model.get_output_embeddings().weight.shape[0]
        self._vocab_size = logits if vocab_size is None else vocab_size
        if not 0 < self._vocab_size <= logits:
            raise ValueError(f"vocab_size must be in [1, {logits}] (the model's output logits), got {vocab_size}")
        self._stop_ids = frozenset(token_ids(getattr(model.generation_config, "eos_token_id", None)))
        self._max_length = _max_length(model)
        self.reset()

    @property
    def name(self) -> str:
        return self.model.name_or_path or type(self.model).__name__

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def max_length(self) -> int | None:
        return self._max_length

    @property
    def stop_ids(self) -> frozenset[int]:
        return self._stop_ids

    @property
    def cached(self) -> int:
        return self._cached

    def reset(self, settings: Settings | None = None) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self._cached = 0

    def advance(self, batch: Batch, keep: int = 1) -> Tensor:
        start, end = self._cached, batch.width
        device = self.model.device
        out = self.model(
            input_ids=batch.tokens[:, start:end].to(device),
            attention_mask=batch.mask[:, :end].to(device),
            position_ids=batch.positions[:, start:end].to(device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        self._cached = end
        return out.logits[..., : self._vocab_size].contiguous()

    def truncate(self, width: int) -> None:
        if self._cached > width:
            self.cache.crop(width - self._cached)  # a negative count: tokens removed from the end
            self._cached = width

    def select(self, rows: Tensor) -> None:
        self.cache.batch_select_indices(rows.to(self.model.device))
