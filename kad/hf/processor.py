"""``kad.hf.KADLogitsProcessor``: KAD's mixture π inside transformers' own sampling or greedy search.

    kad_pi = kad.hf.KADLogitsProcessor(aligned, kk.Dual(0.4), tokenizer=tok, pad_token_id=tok.pad_token_id)
    out = base.generate(**inputs, logits_processor=[kad_pi], do_sample=True, top_k=0)

Each step transformers hands the processor the base model's scores ``p_logits``;
the processor runs the aligned model on the same tokens (its own KV cache, one
new column per step), mixes ``π = p⊙(1−d) + α q*`` with ``kad_kernels.mixture``
and returns ``log π``.  Sampling ``softmax(log π)`` draws from π; greedy search
takes ``argmax π``.  Anything else in transformers' processor list would change
the scores before or after the mixture, so the processor refuses it by name.

:func:`kad.hf.generate` runs the same decoding (and the speculative version) as a
``custom_generate`` method; this processor is for callers who keep
transformers' decoding loop.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from types import FrameType
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
)

import kad_kernels as kk

from ..batch import Batch
from ..engines import Engine, HFEngine, refuse_served_mixers
from ..engines.arguments import checked_tokenizer
from ..engines.huggingface import checked_model, checked_vocab_size
from ..errors import ContextLengthWarning
from ..loop import checked_inputs
from .options import changes_nothing, option_of, setting
from .tokenizers import check_once, local_tokenizer

# log_softmax changes neither the base scores' π (a per-row shift of p_logits) nor
# log π (already normalized): renormalize_logits=True is harmless before or after.
_HARMLESS = {"LogitNormalization"}
# A tokenizer and how an error names it ("the tokenizer (tokenizer=)").
_Named = tuple[str, PreTrainedTokenizerBase]


class KADLogitsProcessor(LogitsProcessor):
    """Replaces the base model's scores by ``log π``, π = KAD's mixture with an aligned model.

    ``__call__(input_ids [B, L], scores [B, V_base]) -> [B, V_base]`` float32: ``log π``
    on the first ``V`` columns (``-inf`` where π = 0), ``-inf`` on the columns ``≥ V``
    (models may pad their lm_head beyond the vocabulary).  π =
    ``kk.mixture(scores[:, :V], q_logits[:, :V], rule, temperature).probs``, with
    ``q_logits`` the aligned model's logits after the same tokens.

    **Exact** (tokens follow π, as :class:`kad.Decoder` and :func:`kad.hf.generate`
    draw them) when nothing before the processor changes the base scores and
    nothing after it changes ``log π``:

    - sampling: ``generate(..., do_sample=True, top_k=0)`` and no other sampling
      option (``softmax(log π) = π``); transformers samples with ``top_k=50`` unless
      told otherwise, so ``top_k=0`` is required;
    - greedy: ``generate(..., do_sample=False)`` (the arg-max of π, as
      ``Decoder.generate(..., temperature=0)``).

    **Refused** (``ValueError`` naming the option, on the first call of each
    generation): every other processor in transformers' list, before or after
    this one: ``temperature != 1``, ``top_k``, ``top_p``, ``min_p``, ``typical_p``,
    ε/η-cutoff, ``top_h``, penalties, ``no_repeat_ngram_size``, ``min_new_tokens``,
    other ``logits_processor`` entries (by class name); only ``renormalize_logits``
    is let through (a log-softmax changes neither).  Also refused: beam search
    (``num_beams > 1``) and assisted generation (``assistant_model``: transformers
    would run this processor on the assistant's scores too); the speculative
    version of KAD is :func:`kad.hf.generate`.  The list is found by looking at
    the caller (:func:`_generate_call`): when ``__call__`` is not called by a
    ``LogitsProcessorList`` (called directly or by another framework), nothing
    is checked and exactness is the caller's to ensure.  transformers'
    continuous batching (``cache_implementation="paged"``) calls no logits
    processor at all, so it cannot be refused here: it is not KAD.  A generation
    whose rows would run past the context of an aligned engine that cannot go past
    it (a ``LlamaCppEngine``'s ``n_ctx``) is refused before it starts; a transformers
    aligned model runs on past its training context with a ``ContextLengthWarning``.

    **Temperature**: KAD at temperature T mixes ``softmax(p/T)`` and
    ``softmax(q*/T)``; pass ``temperature`` here and leave ``generate``'s at 1
    (transformers would divide ``log π`` by T after this processor, sampling
    ∝ π^(1/T), which is not KAD at T).  For greedy decoding use ``do_sample=False``
    and leave ``temperature`` at 1 (greedy KAD is the arg-max of π at T = 1; another
    value is refused then).

    **Padding**: a processor does not see the attention mask.  For a left-padded
    batch pass ``pad_token_id`` (the pad id of the tokenizer): each row's leading
    run of that token is taken as padding.  A prompt that really starts with the
    pad token would lose those tokens, so the pad token must differ from every
    prompt's first token (a dedicated pad token, or EOS when no prompt starts
    with it).  Inside ``generate`` the base model's attention mask is compared with
    this reading when it can be found, and a mismatch (no ``pad_token_id``, right
    padding, a prompt starting with the pad) is a ``ValueError``.

    **Cache**: the aligned model keeps its own KV cache (:class:`~kad.engines.HFEngine`
    over a :class:`~kad.batch.Batch`): each call feeds it the one new column.  A call
    that is not the previous one plus one column (or from a new ``generate``) starts
    over: the cache is reset and the whole prompt prefilled.  The cache is kept
    after ``generate`` returns until the next generation or :meth:`reset`.

    **Cost**: one aligned-model forward (one token per row) and one mixture per step.

    Arguments: ``aligned_model``, a transformers causal LM or a
    :class:`~kad.engines.Engine`, sharing the base model's vocabulary; ``rule``, a
    ``kad_kernels`` deferral rule (``ImplicitReward`` needs a reference model and is
    refused); ``temperature`` > 0; ``vocab_size`` ``V``, else ``len(tokenizer)``, else
    the fewer of the base scores' and the aligned model's logits.  ``tokenizer`` (else
    the base model's, inside ``generate``) and the tokenizer saved with a transformers
    aligned model, where both are on this machine, must have the same vocabulary
    (``ValueError`` naming both).
    """

    def __init__(
        self,
        aligned_model: PreTrainedModel | Engine,
        rule: kk.Rule,
        *,
        temperature: float = 1.0,
        vocab_size: int | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        pad_token_id: int | None = None,
    ):
        if not isinstance(rule, kk.Rule):
            raise TypeError(f"rule must be a kad_kernels rule (Dual, Primal, ...), got {type(rule).__name__}")
        if rule.needs_ref:
            raise ValueError(
                f"{type(rule).__name__} needs a reference model, which KADLogitsProcessor does not run: "
                "use kad.hf.generate(..., reference_model=...) or kad.Decoder"
            )
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):  # numpy's floats too
            raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
        temperature = float(temperature)
        if temperature == 0 or not kk.temperature_in_range(temperature):
            raise ValueError(
                f"temperature must be finite and > 0 (a float32 normal number), got {temperature}: for greedy "
                "decoding pass do_sample=False to generate"
            )
        vocab_size = checked_vocab_size(vocab_size)
        if pad_token_id is not None:
            if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, numbers.Integral):
                raise TypeError(f"pad_token_id must be a token id (an int) or None, got {pad_token_id!r:.80}")
            pad_token_id = int(pad_token_id) if pad_token_id >= 0 else None  # < 0: older configs' "no pad token"
        if tokenizer is not None:
            checked_tokenizer("tokenizer", tokenizer)
            if vocab_size is not None and vocab_size != len(tokenizer):
                raise ValueError(f"vocab_size={vocab_size} but the tokenizer has {len(tokenizer)} tokens")
            vocab_size = len(tokenizer)
        self.engine: Engine = _engine(aligned_model)
        # The tokenizers whose vocabularies must agree: the aligned model's own, and the shared one (given, or
        # the base model's, found in generate's frame).
        own = local_tokenizer(aligned_model.name_or_path) if isinstance(aligned_model, PreTrainedModel) else None
        self._aligned_tokenizer: _Named | None = None
        if own:
            self._aligned_tokenizer = (f"the aligned model {aligned_model.name_or_path!r}", own)
        self._tokenizer: _Named | None = ("the tokenizer (tokenizer=)", tokenizer) if tokenizer is not None else None
        self._check_vocabularies(self._tokenizer)
        if vocab_size is not None and vocab_size > self.engine.vocab_size:
            raise ValueError(
                f"the aligned model has {self.engine.vocab_size} output logits, "
                f"fewer than the vocabulary's {vocab_size} tokens (vocab_size)"
            )
        self.rule: kk.Rule = rule
        self.temperature: float = temperature
        self.vocab_size: int | None = vocab_size
        self.pad_token_id: int | None = pad_token_id
        self._batch: Batch | None = None
        self._previous: Tensor | None = None  # the last call's input_ids [B, L]
        self._processors: LogitsProcessorList | None = None  # the list of the last call's generate
        self._longest: int = 0  # the longest row's positions
        self._warned: bool = False  # ContextLengthWarning given

    def reset(self) -> None:
        """Drop the aligned model's cache (the next call starts a new generation)."""
        self.engine.reset()
        self._batch = self._previous = self._processors = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``log π`` ``[B, V_base]`` float32 for the base scores ``[B, V_base]`` after ``input_ids`` ``[B, L]``."""
        call = _generate_call(sys._getframe(1), self)
        with torch.no_grad():
            q_logits = self._aligned_logits(input_ids, call)
            return cast(torch.FloatTensor, self._log_mixture(scores, q_logits))

    # ------------------------------------------------------------------ the aligned model

    def _aligned_logits(self, input_ids: Tensor, call: _GenerateCall | None) -> Tensor:
        """The aligned model's logits after each row's tokens, ``[B, V_aligned]``."""
        processors = call.processors if call is not None else None
        if self._continues(input_ids, processors) and self._batch is not None:  # _start set both
            self._batch.append(input_ids[:, -1].to(self._batch.tokens.device))
            self._longest += 1
        else:
            if call is not None:
                _refuse_unsupported(call, self, prompt_width=input_ids.shape[1])
            self._batch = self._start(input_ids, call)
        self._previous, self._processors = input_ids.clone(), processors
        limit = self.engine.max_length
        if limit is not None and self._longest > limit and not self._warned:
            self._warned = True  # once per generation: transformers, not kad, decides where rows stop
            warnings.warn(
                f"a row runs past the context length {limit} of the aligned model {self.engine.name}: "
                "its logits there are outside what it was trained on; lower max_new_tokens",
                ContextLengthWarning,
                stacklevel=4,
            )
        return self.engine.advance(self._batch)[:, 0]

    def _continues(self, input_ids: Tensor, processors: LogitsProcessorList | None) -> bool:
        """Whether ``input_ids`` is the previous call's plus one column, in the same generation."""
        previous = self._previous
        return (
            previous is not None
            and processors is self._processors  # a new generate builds a new list
            and input_ids.shape[0] == previous.shape[0]
            and input_ids.shape[1] == previous.shape[1] + 1
            and input_ids.device == previous.device
            and torch.equal(input_ids[:, :-1], previous)
        )

    def _start(self, input_ids: Tensor, call: _GenerateCall | None) -> Batch:
        """A new generation: reset the cache, lay out each row's real tokens (the batch
        left-pads them itself), and check the padding against generate's mask."""
        if input_ids.shape[1] == 0:
            raise ValueError(
                "input_ids has no tokens (generate given inputs_embeds?): KADLogitsProcessor feeds the aligned "
                "model token ids, so pass input_ids"
            )
        if self._tokenizer is None and call is not None and isinstance(call.model, PreTrainedModel):
            base = local_tokenizer(call.model.name_or_path)
            self._check_vocabularies((f"the base model {call.model.name_or_path!r}", base) if base else None)
        real = self._real_tokens(input_ids)
        if call is not None:  # transformers passes no mask when every token is real
            mask = call.attention_mask if call.attention_mask is not None else torch.ones_like(real)
            self._check_padding(real, mask)
        # Ids past the vocabulary would be fed to the aligned model (past its embedding: an IndexError there).
        prompts, _ = checked_inputs([row[mask].tolist() for row, mask in zip(input_ids, real)], [0] * len(real),
                                    self.vocab_size or self.engine.vocab_size)  # fmt: skip
        if call is not None and call.config is not None and call.config.max_length is not None:
            self._check_context(max(map(len, prompts)), call.config.max_length - input_ids.shape[1])
        self.engine.reset()
        batch = Batch(prompts, self.engine.device)
        self._longest, self._warned = max(len(p) for p in prompts), False  # positions of the longest row
        return batch

    def _check_vocabularies(self, shared: _Named | None) -> None:
        """``ValueError`` naming both if the ``(name, tokenizer)`` pair ``shared`` and the aligned
        model's own tokenizer (where each is known) map a token to different ids."""
        if shared is not None and self._aligned_tokenizer is not None:
            check_once(dict([shared, self._aligned_tokenizer]))

    def _check_context(self, longest: int, new_tokens: int) -> None:
        """``ValueError`` before a generation whose rows would run past the context of an aligned
        engine that cannot go past it (llama.cpp's ``n_ctx``, a server's): it would fail there,
        losing every token.  A transformers model can, with a warning (:meth:`_aligned_logits`)."""
        limit = self.engine.max_length
        needed = longest + new_tokens - 1  # the last token is never fed
        if limit is None or needed <= limit or isinstance(self.engine, HFEngine):
            return
        raise ValueError(
            f"max_new_tokens={new_tokens}: the longest row ({longest} tokens) would need {needed} positions, past the "
            f"context length {limit} of the aligned model {self.engine.name}, which cannot run past it: "
            f"lower max_new_tokens to {max(limit - longest + 1, 0)} or give the engine a longer context"
        )

    def _real_tokens(self, input_ids: Tensor) -> Tensor:
        """bool ``[B, L]``: False on each row's leading run of ``pad_token_id`` (left padding)."""
        if self.pad_token_id is None:
            return torch.ones_like(input_ids, dtype=torch.bool)
        leading_pad = (input_ids == self.pad_token_id).long().cumprod(dim=1).bool()
        empty = leading_pad.all(dim=1).nonzero()
        if empty.numel():
            raise ValueError(f"row {int(empty[0])} of input_ids is all pad_token_id={self.pad_token_id}: no prompt")
        return ~leading_pad

    def _check_padding(self, real: Tensor, attention_mask: Tensor) -> None:
        """``ValueError`` unless generate's mask (its first L columns) is ``real`` ``[B, L]``."""
        batch, length = real.shape
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < length:
            return  # not the mask of these rows: nothing to compare
        mask = attention_mask[:, :length].to(real.device).bool()
        if torch.equal(mask, real):
            return
        if self.pad_token_id is None:
            raise ValueError(
                "the batch is padded (attention_mask has zeros) but KADLogitsProcessor has no pad_token_id: "
                "pass pad_token_id=tokenizer.pad_token_id (and pad on the left)"
            )
        raise ValueError(
            f"attention_mask is not the leading run of pad_token_id={self.pad_token_id} in each row: pad on the left "
            "(tokenizer padding_side='left') with a pad token no prompt starts with"
        )

    # ------------------------------------------------------------------ the mixture

    def _log_mixture(self, scores: Tensor, q_logits: Tensor) -> Tensor:
        """``log π`` on the first V columns of ``scores`` ``[B, V_base]``, −inf after them."""
        vocab = self._vocab(scores.shape[-1])
        p_logits = scores[:, :vocab].float()
        q_logits = q_logits[:, :vocab].to(device=scores.device, dtype=torch.float32)
        pi = kk.mixture(p_logits, q_logits, self.rule, self.temperature).probs
        log_pi = scores.new_full(scores.shape, -math.inf, dtype=torch.float32)
        log_pi[:, :vocab] = pi.log()
        return log_pi

    def _vocab(self, base_width: int) -> int:
        """V: ``vocab_size`` (or the tokenizer's), else the fewer logits of the two models."""
        if self.vocab_size is None:
            return min(base_width, self.engine.vocab_size)
        if base_width < self.vocab_size:
            raise ValueError(
                f"the base model's scores have {base_width} columns, fewer than the vocabulary's {self.vocab_size} "
                "tokens (vocab_size)"
            )
        return self.vocab_size


def _engine(model: PreTrainedModel | Engine) -> Engine:
    """The aligned model behind the engine protocol: its cache over a :class:`~kad.batch.Batch`."""
    model = checked_model("aligned_model", model)
    if isinstance(model, PreTrainedModel):
        return HFEngine(model)  # every logit: V is cut per call
    refuse_served_mixers({"aligned": model})
    return model


# ---------------------------------------------------------------------------- the calling generate


class _GenerateCall(NamedTuple):
    """What the processor can see of the transformers decoding loop that calls it."""

    processors: LogitsProcessorList  # every processor of this generate, the KAD one among them
    method: str  # the decoding method: "_sample" (sampling and greedy), "_beam_search", "_assisted_decoding", ...
    config: GenerationConfig | None  # the decoding method's generation config
    attention_mask: Tensor | None  # the base model's mask [B, ≥ L] (transformers 5 has appended the next column)
    model: Any  # the decoding method's self: the base model


def _generate_call(frame: FrameType | None, processor: KADLogitsProcessor) -> _GenerateCall | None:
    """The generate call behind ``frame``, the caller of ``processor.__call__``; None if there is none.

    A processor's ``__call__`` gets only ``(input_ids, scores)``, but transformers
    calls it from ``LogitsProcessorList.__call__`` (the caller's ``self``, the list
    holding every processor of the call), which the decoding method (``_sample``,
    ``_beam_search``, ...) calls with ``generation_config`` and ``model_kwargs`` as
    locals.  Anything else calling (the user, another framework) gives None."""
    if frame is None:
        return None
    processors = frame.f_locals.get("self")
    if not isinstance(processors, LogitsProcessorList) or not any(p is processor for p in processors):
        return None
    method = frame.f_back
    local: dict[str, Any] = dict(method.f_locals) if method is not None else {}
    config, model_kwargs = local.get("generation_config"), local.get("model_kwargs")
    mask = model_kwargs.get("attention_mask") if isinstance(model_kwargs, dict) else None
    return _GenerateCall(
        processors,
        method.f_code.co_name if method is not None else "",
        config if isinstance(config, GenerationConfig) else None,
        mask if isinstance(mask, Tensor) else None,
        local.get("self"),
    )


def _refuse_unsupported(call: _GenerateCall, kad: KADLogitsProcessor, *, prompt_width: int) -> None:
    """``ValueError`` naming the first thing in ``call`` that would make tokens not follow π
    (an option at its neutral value, whose processor changes nothing for prompts ``prompt_width``
    wide, is none)."""
    config = call.config
    if call.method == "_beam_search" or (config is not None and (config.num_beams or 1) > 1):
        beams = f"num_beams={config.num_beams}" if config is not None else "beam search"
        raise ValueError(
            f"{beams}: KADLogitsProcessor does not support beam search "
            "(use do_sample=True, top_k=0 to sample from π, or do_sample=False for its arg-max)"
        )
    # transformers runs the assistant's own generate with the user's processors too
    if call.method == "_assisted_decoding" or (config is not None and getattr(config, "is_assistant", False)):
        lookup = config is not None and getattr(config, "prompt_lookup_num_tokens", None)
        option = f"prompt_lookup_num_tokens={lookup}" if lookup else "assistant_model"
        raise ValueError(
            f"{option}: KADLogitsProcessor does not support assisted generation (transformers would apply "
            "it to the assistant's scores as well); for speculative KAD use kad.hf.generate"
        )
    if config is not None and not config.do_sample and kad.temperature != 1.0:
        raise ValueError(
            f"KADLogitsProcessor(temperature={kad.temperature}) with do_sample=False: greedy KAD is the arg-max of "
            "π at temperature 1 (docs/design.md §1.2), as Decoder.generate(temperature=0); leave temperature at 1"
        )
    where = "before"
    for processor in call.processors:
        if processor is kad:
            where = "after"
            continue
        if type(processor).__name__ not in _HARMLESS and not changes_nothing(processor, prompt_width):
            raise ValueError(_refusal(processor, where))


def _refusal(processor: LogitsProcessor, where: str) -> str:
    """Why ``processor`` (``where`` = before / after the KAD one) breaks sampling from π, and the fix."""
    option = option_of(processor)
    if option is None:
        return (
            f"{setting(processor)} {where} KADLogitsProcessor changes "
            f"{'the base scores' if where == 'before' else 'log π'}, so tokens would not follow π: remove it"
        )
    if option == "temperature":
        return (
            f"{setting(processor)} in generate {where} KADLogitsProcessor tempers log π into π^(1/T), not KAD at T: "
            f"pass temperature={cast(TemperatureLogitsWarper, processor).temperature!r} to KADLogitsProcessor "
            "instead and leave generate's at 1"
        )
    if option == "top_k":
        return (
            f"{setting(processor)} {where} KADLogitsProcessor truncates π: pass top_k=0 to generate "
            "(transformers samples with top_k=50 unless told otherwise)"
        )
    changes = "changes the base scores p" if where == "before" else "changes log π"
    return f"{setting(processor)} {where} KADLogitsProcessor {changes}, so tokens would not follow π: drop it"
