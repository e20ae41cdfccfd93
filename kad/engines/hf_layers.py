"""What :class:`~kad.engines.HFEngine` can do with a transformers model, read from its
class and config (docs/design.md §6.2).

The batch layout (:mod:`kad.batch`) asks three things of a model: its cache must
drop a batch's trailing columns (rejected drafts) and rows (finished ones), and
its attention must skip masked columns in the middle of a row (holes) while
counting positions by real tokens.  Full attention does all three.  The other
kinds of layer fall in three groups:

* **sliding windows** (Mistral, Gemma, Qwen2's ``use_sliding_window``) can, with
  masks the engine builds (:func:`window_by_position`) and every column kept;
* **recurrent state** (convolutions, linear attention: Mamba, LFM2, Qwen3-Next,
  Jamba's and Falcon-H1's mamba layers) cannot drop tokens, so no speculative
  modes; rows are dropped by ``reorder_cache``.  transformers' Mamba scans
  ignore the cached state when continuing with several tokens, so after the
  prompt the engine feeds them one column per forward;
* **windows or biases by cache column** that no mask reaches (GPT-Neo's local
  layers, MPT's ALiBi, chunked attention) are exact without holes, so again no
  speculative modes.

Models that keep their state outside a ``DynamicCache`` (RWKV, RecurrentGemma,
MiniMax) or take no ``cache`` argument are refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel
from transformers.cache_utils import get_layer_types_and_kwargs

# Layers whose cache the engine can crop to a column and whose masks honour holes.
_CROPPABLE = frozenset({"full_attention", "sliding_attention", "dummy"})
# Layers with a recurrent state (updated token by token), alone or beside attention.
_RECURRENT = frozenset({"linear_attention", "conv", "hybrid", "hybrid_sliding"})
_ATTENTION_FREE = frozenset({"linear_attention", "conv", "dummy"})
# Models that keep state on their modules, where neither reset nor select reaches it.
_STATE_ON_MODULES = frozenset({"recurrent_gemma"})


class ModelLayers:
    """The layer types of ``model`` (called ``name`` in messages) and what they allow."""

    def __init__(self, model: PreTrainedModel, name: str):
        config = model.config.get_text_config(decoder=True)
        if (
            "cache" not in inspect.signature(model.forward).parameters
            # transformers' own list of the exceptions (GenerationMixin's; a model without it may still do)
            or not getattr(type(model), "_supports_default_dynamic_cache", lambda: True)()
            or config.model_type in _STATE_ON_MODULES
        ):
            raise ValueError(
                f"{name!r} ({config.model_type}) keeps its state outside a transformers DynamicCache, "
                "which the torch engine needs"
            )
        self.types: list[str] = get_layer_types_and_kwargs(config)[0]
        self.window: int | None = config.sliding_window if "sliding_attention" in self.types else None
        self.recurrent = bool(set(self.types) & _RECURRENT)
        self.attention_free = set(self.types) <= _ATTENTION_FREE
        self.no_drafts = self._no_drafts(config)

    def _no_drafts(self, config: PretrainedConfig) -> str | None:
        """Why the model cannot take speculative drafts (its layers), or ``None``."""
        others = sorted(set(self.types) - _CROPPABLE)
        if others:
            return f"{', '.join(others)} layers"
        if "local" in (getattr(config, "attention_layers", None) or ()):
            return "local attention layers windowed by cache column"
        if config.model_type == "mpt":
            return "ALiBi biases by cache column"
        return None


def window_by_position(positions: Tensor, window: int) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """A transformers mask function: query column ``q`` sees key column ``kv`` of row ``b``
    when ``kv`` is not later and at most ``window − 1`` real tokens earlier (``positions``
    i64 ``[B, W]``: the batch's position ids).  OR-ed with transformers' sliding mask
    (by column, never wider) and AND-ed with the padding mask, it windows by real tokens."""

    def sees(batch_idx: Tensor, head_idx: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx <= q_idx) & (positions[batch_idx, q_idx] - positions[batch_idx, kv_idx] < window)

    return sees
