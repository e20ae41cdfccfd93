"""The Hugging Face engine: a transformers causal LM with a ``DynamicCache``;
what it does with sliding windows and recurrent layers is :mod:`.hf_layers`."""

from __future__ import annotations

import numbers
from typing import cast

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import create_masks_for_generate

from ..batch import Batch
from ..settings import Settings
from .base import Engine
from .hf_layers import ModelLayers, window_by_position


def token_ids(value: object) -> list[int]:
    """Token ids as a generation config holds them (``eos_token_id``, ``pad_token_id``):
    None, an int, a list, a numpy or torch array."""
    return [] if value is None else [int(i) for i in torch.as_tensor(value).flatten().tolist()]


def output_logits(model: PreTrainedModel) -> int:
    """The rows of ``model``'s lm_head: its logits per position (the vocabulary, maybe padded)."""
    return model.get_output_embeddings().weight.shape[0]


def checked_model(name: str, model: object) -> PreTrainedModel | Engine:
    """``model`` if it is a transformers ``PreTrainedModel`` or a :class:`~kad.engines.Engine`
    (what every front end takes); ``TypeError`` naming the argument ``name`` otherwise."""
    if not isinstance(model, (PreTrainedModel, Engine)):
        raise TypeError(f"{name} must be a transformers PreTrainedModel or a kad.engines.Engine, got {model!r}")
    return model


def checked_vocab_size(vocab_size: object) -> int | None:
    """``vocab_size`` (the logits kept per position) as a Python int, or None; ``ValueError``
    unless it is None or an int >= 1 (numpy's too)."""
    if vocab_size is None:
        return None
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an int >= 1, got {vocab_size!r}")
    return int(vocab_size)


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
        logits = output_logits(model)
        self._vocab_size = logits if vocab_size is None else vocab_size
        if not 0 < self._vocab_size <= logits:
            raise ValueError(f"vocab_size must be in [1, {logits}] (the model's output logits), got {vocab_size}")
        self._stop_ids = frozenset(token_ids(getattr(model.generation_config, "eos_token_id", None)))
        self._max_length = _max_length(model)
        self._layers = ModelLayers(model, self.name)
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
        if settings is not None and settings.speculative and self._layers.no_drafts:
            raise ValueError(
                f"{settings.mode} needs a model whose cache can drop rejected drafts; {self.name!r} has "
                f"{self._layers.no_drafts}: use a mode without drafts"
            )
        cache = DynamicCache(config=self.model.config)
        for i, layer_type in enumerate(self._layers.types):
            if layer_type == "sliding_attention":
                cache.layers[i] = DynamicLayer()  # every column kept: croppable, windowed by the mask
        self.cache, self._cached = cache, 0  # together: a reset interrupted half-way leaves the old pair

    def advance(self, batch: Batch, keep: int = 1) -> Tensor:
        if self._layers.recurrent and self._cached > 0 and batch.width - self._cached > 1:
            # transformers' Mamba scans drop the cached state when continuing with several tokens
            steps = [self._forward(batch, end, 1) for end in range(self._cached + 1, batch.width + 1)]
            return torch.cat(steps, dim=1)[:, -keep:]
        return self._forward(batch, batch.width, keep)

    def _forward(self, batch: Batch, end: int, keep: int) -> Tensor:
        """The model fed columns ``[cached, end)``; logits of the last ``keep``."""
        start, device = self._cached, self.model.device
        tokens, positions = batch.tokens[:, start:end].to(device), batch.positions[:, start:end].to(device)
        # Attention layers take the mask of every column; attention-free ones multiply it into their inputs.
        mask = batch.mask[:, start if self._layers.attention_free else 0 : end].to(device)
        if self._layers.window is not None:
            mask = create_masks_for_generate(
                config=self.model.config,
                inputs_embeds=torch.empty(*tokens.shape, 0, dtype=self.model.dtype, device=device),  # shape, dtype only
                attention_mask=mask,
                cache=self.cache,
                position_ids=positions,
                or_mask_function=window_by_position(batch.positions[:, :end].to(device), self._layers.window),
            )
        out = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
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
        # reorder_cache index-selects every layer's tensors, recurrent states included
        # (batch_select_indices is missing on some recurrent layers, partial on others).
        self.cache.reorder_cache(cast(torch.LongTensor, rows.to(self.model.device)))  # rows: i64 [B']
