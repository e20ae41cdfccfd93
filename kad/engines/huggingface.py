"""The Hugging Face engine: a transformers causal LM with a ``DynamicCache``.

Sliding-window attention (Mistral, Gemma, Qwen2's ``use_sliding_window``) needs
care: transformers windows by cache *column*, but a batch's columns include
rejected drafts (:mod:`kad.batch`), so a query would see fewer than a window of
its row's real tokens; and transformers' sliding cache layers keep only the last
window of columns, which cannot be cropped back.  So the engine keeps every column
of those layers (a full ``DynamicLayer``) and builds the masks itself, windowing
by position id, which counts a row's real tokens: a query sees its row's last
``sliding_window`` real tokens, as a fresh forward over the row would.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer, get_layer_types_and_kwargs
from transformers.masking_utils import create_masks_for_generate

from ..batch import Batch
from ..settings import Settings
from .base import EngineError


def token_ids(value: object) -> list[int]:
    """Token ids as a generation config holds them (``eos_token_id``, ``pad_token_id``):
    None, an int, a list, a numpy or torch array."""
    return [] if value is None else [int(i) for i in torch.as_tensor(value).flatten().tolist()]


def _max_length(model: PreTrainedModel) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


# Layer types whose cache the engine can crop (rejected drafts) and whose mask honours holes.
_CROPPABLE = frozenset({"full_attention", "sliding_attention", "dummy"})


def _layer_types(model: PreTrainedModel) -> list[str]:
    """The attention type of each decoder layer, as transformers builds the cache from it."""
    return get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))[0]


def _window_by_position(positions: Tensor, window: int):
    """A transformers mask function: query column ``q`` sees key column ``kv`` of row ``b``
    when ``kv`` is not later and at most ``window − 1`` real tokens earlier (``positions``
    i64 ``[B, W]``: the batch's position ids).  OR-ed with transformers' sliding mask
    (by column, never wider) and AND-ed with the padding mask, it windows by real tokens."""

    def sees(batch_idx, head_idx, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (positions[batch_idx, q_idx] - positions[batch_idx, kv_idx] < window)

    return sees


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
        self._layer_types = _layer_types(model)
        self._windowed = "sliding_attention" in self._layer_types
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
        others = sorted(set(self._layer_types) - _CROPPABLE)
        if settings is not None and settings.speculative and others:
            raise ValueError(
                f"{settings.mode} needs a model whose cache can drop rejected drafts; {self.name!r} has "
                f"{', '.join(others)} layers (full and sliding-window attention can): use a mode without drafts"
            )
        self.cache = DynamicCache(config=self.model.config)
        for i, layer_type in enumerate(self._layer_types):
            if layer_type == "sliding_attention":
                self.cache.layers[i] = DynamicLayer()  # every column kept: croppable, windowed by the mask
        self._cached = 0

    def advance(self, batch: Batch, keep: int = 1) -> Tensor:
        start, end = self._cached, batch.width
        device = self.model.device
        tokens, positions = batch.tokens[:, start:end].to(device), batch.positions[:, start:end].to(device)
        mask = batch.mask[:, :end].to(device)
        if self._windowed:
            mask = create_masks_for_generate(
                config=self.model.config,
                inputs_embeds=torch.empty(*tokens.shape, 0, dtype=self.model.dtype, device=device),  # shape, dtype only
                attention_mask=mask,
                cache=self.cache,
                position_ids=positions,
                or_mask_function=_window_by_position(
                    batch.positions[:, :end].to(device), self.model.config.get_text_config(decoder=True).sliding_window
                ),
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
        fixed = sorted({t for t, layer in zip(self._layer_types, self.cache.layers) if not hasattr(layer, "batch_select_indices")})
        if fixed:  # transformers' recurrent-state layers cannot drop rows of their batch
            raise EngineError(
                f"{self.name!r} cannot drop a finished row from its cache ({', '.join(fixed)} layers): "
                "decode its prompts one at a time"
            )
        self.cache.batch_select_indices(rows.to(self.model.device))
