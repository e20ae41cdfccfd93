"""The generation option behind each of transformers' logits processors.

Both entry points of :mod:`kad.hf` refuse processors that would reshape the
distribution KAD draws from; this names the option the user set (``top_p=0.9``)
rather than the class transformers built from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from transformers import LogitsProcessor

# Processor class -> (generate option, the processor attribute holding its value).
_OPTIONS: dict[str, tuple[str, str]] = {
    "TemperatureLogitsWarper": ("temperature", "temperature"),
    "TopKLogitsWarper": ("top_k", "top_k"),
    "TopPLogitsWarper": ("top_p", "top_p"),
    "MinPLogitsWarper": ("min_p", "min_p"),
    "TypicalLogitsWarper": ("typical_p", "mass"),
    "EpsilonLogitsWarper": ("epsilon_cutoff", "epsilon"),
    "EtaLogitsWarper": ("eta_cutoff", "epsilon"),
    "TopHLogitsWarper": ("top_h", "top_h"),
    "RepetitionPenaltyLogitsProcessor": ("repetition_penalty", "penalty"),
    "EncoderRepetitionPenaltyLogitsProcessor": ("encoder_repetition_penalty", "penalty"),  # holds 1 / the option
    "NoRepeatNGramLogitsProcessor": ("no_repeat_ngram_size", "ngram_size"),
    "EncoderNoRepeatNGramLogitsProcessor": ("encoder_no_repeat_ngram_size", "ngram_size"),
    "MinLengthLogitsProcessor": ("min_length", "min_length"),
    "MinNewTokensLengthLogitsProcessor": ("min_new_tokens", "min_new_tokens"),
    "NoBadWordsLogitsProcessor": ("bad_words_ids", "bad_words_ids"),
    "SequenceBiasLogitsProcessor": ("sequence_bias", "sequence_bias"),
    "SuppressTokensLogitsProcessor": ("suppress_tokens", "suppress_tokens"),
    "SuppressTokensAtBeginLogitsProcessor": ("begin_suppress_tokens", "begin_suppress_tokens"),
    "ForcedBOSTokenLogitsProcessor": ("forced_bos_token_id", "bos_token_id"),
    "ForcedEOSTokenLogitsProcessor": ("forced_eos_token_id", "eos_token_id"),
    "InfNanRemoveLogitsProcessor": ("remove_invalid_values", "remove_invalid_values"),
    "ExponentialDecayLengthPenalty": ("exponential_decay_length_penalty", ""),  # a pair, held apart: name only
    "UnbatchedClassifierFreeGuidanceLogitsProcessor": ("guidance_scale", "guidance_scale"),
    "WatermarkLogitsProcessor": ("watermarking_config", ""),  # a config object: named only
    "SynthIDTextWatermarkLogitsProcessor": ("watermarking_config", ""),
    "PrefixConstrainedLogitsProcessor": ("prefix_allowed_tokens_fn", ""),  # a function: named only
}
# transformers turns min_new_tokens into min_length (prompt + min_new_tokens).
_SET_BY = {"min_length": "min_length or min_new_tokens"}
# Processors that hold a function of the option's value, and its inverse.
_OPTION_VALUE = {"EncoderRepetitionPenaltyLogitsProcessor": lambda penalty: 1 / penalty}
# Processors transformers builds even from an option's neutral value, and when they leave every
# score as it is: (processor, the prompt's width L) -> bool.  A min_length counts the prompt, and
# the processor masks EOS only while the row is shorter, so one ≤ L never acts (min_new_tokens=0
# arrives as min_length = L).  Keyed by class name, so each reads its own class's attributes (Any).
_NEUTRAL: dict[str, Callable[[Any, int], bool]] = {
    "MinLengthLogitsProcessor": lambda processor, width: processor.min_length <= width,
    "MinNewTokensLengthLogitsProcessor": lambda processor, width: processor.min_new_tokens <= 0,
    "MinPLogitsWarper": lambda processor, width: processor.min_p <= 0,
    "SuppressTokensLogitsProcessor": lambda processor, width: processor.suppress_tokens.numel() == 0,
    "SuppressTokensAtBeginLogitsProcessor": lambda processor, width: processor.begin_suppress_tokens.numel() == 0,
}


def option_of(processor: LogitsProcessor) -> str | None:
    """The generate option behind ``processor`` (``"top_p"``), None for one transformers did not build."""
    known = _OPTIONS.get(type(processor).__name__)
    return known[0] if known else None


def changes_nothing(processor: LogitsProcessor, prompt_width: int) -> bool:
    """Whether ``processor``, built by transformers from an option at its neutral value
    (``min_p=0.0``, ``suppress_tokens=[]``, ``min_new_tokens=0``), leaves every score of a
    generation from prompts ``prompt_width`` tokens wide as it is: such options are no request."""
    neutral = _NEUTRAL.get(type(processor).__name__)
    return neutral is not None and bool(neutral(processor, prompt_width))


def setting(processor: LogitsProcessor) -> str:
    """``"top_p=0.9"`` for a processor transformers built from an option, else
    ``"logits_processor [ClassName]"`` (one the user passed)."""
    name = type(processor).__name__
    if name not in _OPTIONS:
        return f"logits_processor [{name}]"
    option, attribute = _OPTIONS[name]
    value = getattr(processor, attribute, None) if attribute else None
    if isinstance(value, Tensor):  # as the user wrote it: [5] for suppress_tokens, 0.0003 for eta_cutoff
        value = _as_written(value.tolist(), value.dtype.itemsize)
    if value is not None and name in _OPTION_VALUE:
        value = _OPTION_VALUE[name](value)
    text = f"{option}={value!r}" if value is not None else option
    return text + (f" (set by {_SET_BY[option]})" if option in _SET_BY else "")


def _as_written(value: object, itemsize: int) -> object:
    """A tensor's ``tolist()`` with the digits a float32 holds (7), not the double it reads as."""
    if isinstance(value, list):
        return [_as_written(v, itemsize) for v in value]
    if isinstance(value, float) and itemsize < 8:
        return float(f"{value:.{7 if itemsize == 4 else 4}g}")
    return value
