"""``kad.hf.generate``: KAD as a transformers ``custom_generate`` decoding method.

    out = base.generate(**inputs, custom_generate=kad.hf.generate, aligned_model=aligned,
                        rule=kk.Dual(0.4), gamma=4, max_new_tokens=64, do_sample=True)

transformers prepares the call (generation config, inputs, special tokens,
length) and hands it here; the tokens come from :func:`kad.loop.decode` with the
calling model as the base engine.  What the generation config asks for is
either honoured or refused with a ``ValueError`` naming the option: KAD draws
every token from π, so nothing that would reshape the distribution (top-k,
top-p, penalties, other logits processors) can silently apply or be dropped.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation import GenerateDecoderOnlyOutput, GenerationMode, LogitsProcessorList, StoppingCriteriaList

import kad_kernels as kk

from ..choices import GAMMA
from ..engines import Engine, HFEngine
from ..engines.arguments import checked_tokenizer
from ..engines.huggingface import checked_model, checked_vocab_size, output_logits, token_ids
from ..errors import keep_partial, partial_of
from ..loop import KEEPS_PARTIAL, decode, draw_device, refuse_missing_reference
from ..settings import Settings
from ..stats import GenerationStats
from ..stops import StopStrings
from .options import changes_nothing, setting
from .tokenizers import check_once, local_tokenizer

# The Hub-layout folder (README.md, custom_generate/generate.py, requirements.txt) that calls this module.
RECIPE_DIR = Path(__file__).resolve().parent / "recipe"

# transformers' global default top_k, applied whenever do_sample is set and neither
# the call nor the model's generation config sets top_k: not a request for top-k.
_DEFAULT_TOP_K = GenerationConfig._get_default_generation_params().get("top_k")

# Processors that change nothing KAD draws: temperature is applied by the kernels
# themselves, and renormalized scores are not returned.
_HONOURED_PROCESSORS = {"TemperatureLogitsWarper", "LogitNormalization"}
_HONOURED_CRITERIA = {"MaxLengthCriteria", "EosTokenCriteria"}
# Decoding methods KAD replaces (transformers' assisted decoding is lossless, so its
# prompt lookup can be dropped); the others, by the option that selects them.
_KAD_MODES = {GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE, GenerationMode.ASSISTED_GENERATION}
_MODE_OPTIONS = {
    GenerationMode.CONTRASTIVE_SEARCH: "penalty_alpha",
    GenerationMode.DOLA_GENERATION: "dola_layers",
    GenerationMode.CONSTRAINED_BEAM_SEARCH: "force_words_ids/constraints",
}
_OPTION_OF_CRITERION = {"MaxTimeCriteria": "max_time", "StopStringCriteria": "stop_strings"}
# Outputs beside the sequences that KAD does not produce.
_UNSUPPORTED_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
# Model inputs the decoding loop builds itself (positions, cache) or reads (mask).
_MODEL_KWARGS_HANDLED = {"attention_mask", "position_ids", "logits_to_keep", "cache", "past_key_values", "use_cache"}


@dataclass
class KADGenerateOutput(GenerateDecoderOnlyOutput):
    """``GenerateDecoderOnlyOutput`` (``return_dict_in_generate=True``) with KAD's
    statistics: ``kad_stats`` for all rows together (tokens/s, acceptance rate,
    mean α, rounds: :class:`~kad.GenerationStats`), ``kad_row_stats`` per row."""

    kad_stats: GenerationStats | None = None
    kad_row_stats: list[GenerationStats] | None = None


def generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer: Any = None,
    *,
    aligned_model: PreTrainedModel | Engine | None = None,
    rule: kk.Rule | None = None,
    gamma: int = GAMMA,
    mode: str | None = None,
    reference_model: PreTrainedModel | Engine | None = None,
    generator: torch.Generator | None = None,
    base_tokenizer: PreTrainedTokenizerBase | None = None,
    aligned_tokenizer: PreTrainedTokenizerBase | None = None,
    vocab_size: int | None = None,
    track_alpha: bool = True,
    stop_strings: str | Sequence[str] | None = None,
    **model_kwargs: Any,
) -> Tensor | KADGenerateOutput:
    """KAD decoding inside ``model.generate(..., custom_generate=kad.hf.generate)``.

    transformers calls this with the prepared ``input_ids`` ``[B, L]`` (left padded,
    with ``attention_mask`` in ``model_kwargs`` when there is padding), its
    ``generation_config`` and processor lists; the keyword arguments below are
    passed to ``generate`` by the user.

    Honoured: ``max_new_tokens``/``max_length``; ``eos_token_id`` (one id or
    several, as ints or an array: a row stops after any); ``stop_strings`` (a
    string or a list: a row stops after the token that completes one, as in
    transformers, :mod:`kad.stops`, its left padding not read as text; read
    with the first of ``base_tokenizer``, the base model's saved tokenizer,
    ``aligned_tokenizer``, the aligned model's); ``pad_token_id`` (fills
    finished rows); ``do_sample=False`` (greedy: arg-max of π) or ``do_sample=True`` with
    ``temperature`` (p and q* are both tempered before mixing); a ``streamer``;
    ``num_return_sequences``; ``return_dict_in_generate`` (a
    :class:`KADGenerateOutput` with ``sequences`` and the KAD statistics).
    Refused (``ValueError`` naming the option): beam search, ``assistant_model``,
    top-k/top-p/min-p/typical/ε/η sampling, penalties and every other logits
    processor, stopping criteria other than length and EOS, the call's own
    ``logits_processor`` and ``stopping_criteria`` instances (set the generation
    options instead), score/logit/attention outputs (with ``return_dict_in_generate``),
    a streamer with more than one row, model inputs beyond ``input_ids`` and
    ``attention_mask`` (the caller's ``position_ids`` too: KAD positions both models'
    tokens itself).  An option at
    its neutral value (``min_p=0.0``, ``suppress_tokens=[]``, ``min_new_tokens=0``)
    changes nothing and is not refused.  A Ctrl-C (``KeyboardInterrupt``), an
    ``EngineError`` or a device out of memory leaves with each row's new tokens so
    far (a :class:`kad.loop.Decoded`) as its ``partial`` (None if it came before the
    generation began, while the call was checked).
    transformers' global default ``top_k=50`` is not a request and is
    not applied; a ``top_k`` argument of the call or of the model's generation
    config is refused (a ``generation_config=`` object's ``top_k=50`` cannot be
    told from the default once transformers has merged it).  The caches are kad's
    own ``DynamicCache`` s (``cache_implementation`` does not apply; ``"paged"``
    must not be set: transformers then runs continuous batching without calling
    this function or any logits processor).

    Randomness: ``generator`` (a ``torch.Generator`` on the model's device; with
    ``mode="aligned"``, the aligned model's: :func:`kad.loop.draw_device`) or,
    without it, one seeded from torch's global generator, so ``torch.manual_seed``
    fixes the output.

    KAD arguments: ``aligned_model`` (required: the small aligned model, a
    transformers model or a :class:`~kad.engines.Engine`); ``rule`` (a
    ``kad_kernels`` rule, e.g. ``kk.Dual(0.4)``); ``gamma`` drafts per speculative
    round (``0``: plain KAD, one draw per step); ``mode``: any of
    :data:`kad.MODES` (default ``kad-spec``, or ``kad`` when ``gamma=0``);
    ``reference_model`` for ImplicitReward; ``track_alpha``: α in the
    statistics.  ``base_tokenizer`` and ``aligned_tokenizer``: the vocabulary
    check (``ValueError`` naming both models when they differ); a tokenizer not
    given is loaded from the model's local files when it can be (never
    downloaded).  ``vocab_size``: the logits are cut to this many tokens
    (models may pad their lm_head); default ``len`` of a tokenizer, else the
    fewest logits of the models.  (``generate`` keeps its own ``tokenizer=``
    argument to itself, so the base tokenizer goes by ``base_tokenizer=``: with a
    ``custom_generate`` function transformers loses it.  ``stop_strings`` reaches
    kad as an argument of the call; from a ``generation_config`` it ends, as
    ``token_healing`` does, in transformers' own error asking for a tokenizer:
    pass ``stop_strings=`` to the call instead.)
    """
    out = None
    try:
        try:
            call = _generate_call(model)
            streamer = streamer if streamer is not None else call.get("streamer")
            _refuse_unsupported(
                model, generation_config, logits_processor, stopping_criteria, call, model_kwargs,
                prompt_width=input_ids.shape[1],
            )  # fmt: skip
            if generator is not None and not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator (on the model's device), got {generator!r}")
            run = _prepared(
                model, generation_config, aligned_model=aligned_model, reference_model=reference_model, rule=rule,
                gamma=gamma, mode=mode, track_alpha=track_alpha, base_tokenizer=base_tokenizer,
                aligned_tokenizer=aligned_tokenizer, vocab_size=vocab_size, stop_strings=stop_strings,
            )  # fmt: skip
            prompts = _prompts(input_ids, model_kwargs.get("attention_mask"))
            if streamer is not None and len(prompts) > 1:
                raise ValueError(f"a streamer takes one row, got {len(prompts)}: KAD's rows advance by different counts")
            budget = generation_config.max_length - input_ids.shape[1]
            stop_ids = frozenset(token_ids(generation_config.eos_token_id))
            if generator is None:
                generator = _seeded_generator(draw_device(run.engines, run.settings), run.settings)
            out = decode(
                run.engines,
                prompts,
                [budget] * len(prompts),
                run.settings,
                stop_ids=stop_ids,
                generator=generator,
                streamer=streamer,
                stop_strings=run.stop_strings,
            )
            sequences = _sequences(input_ids, out.token_ids, _pad_id(generation_config))
            if generation_config.return_dict_in_generate:
                return KADGenerateOutput(sequences=sequences, kad_stats=out.stats, kad_row_stats=out.row_stats)
            return sequences
        finally:  # transformers has put the prompt to the streamer: a consumer waits for end(), also after a refusal
            if streamer is None:  # or not read yet from the caller, a Ctrl-C landing first
                streamer = _generate_call(model).get("streamer")
            if streamer is not None:
                streamer.end()
    except KEEPS_PARTIAL as error:  # also one in the streamer's end()
        # decode's own partial; the whole result where decode had returned; None before the
        # generation began (the call being checked)
        if partial_of(error) is None:
            keep_partial(error, out)
        raise


@dataclass
class _Run:
    """What :func:`generate` decodes with, its arguments checked."""

    engines: dict[str, Engine]  # "base" (the calling model), "aligned", and "reference" where given
    settings: Settings
    stop_strings: StopStrings | None


def _prepared(
    model: PreTrainedModel,
    config: GenerationConfig,
    *,
    aligned_model: PreTrainedModel | Engine | None,
    reference_model: PreTrainedModel | Engine | None,
    rule: kk.Rule | None,
    gamma: int,
    mode: str | None,
    track_alpha: bool,
    base_tokenizer: PreTrainedTokenizerBase | None,
    aligned_tokenizer: PreTrainedTokenizerBase | None,
    vocab_size: int | None,
    stop_strings: str | Sequence[str] | None,
) -> _Run:
    """:func:`generate`'s KAD arguments checked (``TypeError``/``ValueError`` naming the
    first that is wrong), and the engines they make, of one vocabulary."""
    if aligned_model is None:
        raise ValueError("kad.hf.generate needs aligned_model= (the small aligned model, same vocabulary)")
    for name, value in (("aligned_model", aligned_model), ("reference_model", reference_model)):
        if value is not None:
            checked_model(name, value)
    for name, value in (("base_tokenizer", base_tokenizer), ("aligned_tokenizer", aligned_tokenizer)):
        if value is not None:
            checked_tokenizer(name, value)
    vocab_size = checked_vocab_size(vocab_size)
    settings = _settings(mode, rule, gamma, config, track_alpha)
    refuse_missing_reference(settings.checked_rule(), reference_model is not None, ": pass reference_model=")

    given = {"base": model, "aligned": aligned_model, "reference": reference_model}
    models = {role: m for role, m in given.items() if m is not None}
    tokenizers = _tokenizers(models, base_tokenizer, aligned_tokenizer)
    vocab_size = _shared_vocab_size(models, tokenizers, vocab_size)
    engines = {role: m if isinstance(m, Engine) else HFEngine(m, vocab_size) for role, m in models.items()}
    if any(e.vocab_size != vocab_size for e in engines.values()):
        sizes = ", ".join(f"{role} {e.vocab_size}" for role, e in engines.items())
        raise ValueError(
            f"the engines return different numbers of logits ({sizes}): they must share one vocabulary "
            f"(give each engine those {vocab_size}: HFEngine(model, vocab_size={vocab_size}))"
        )
    stops = None
    if stop_strings is not None:
        tokenizer = next((t for t in tokenizers.values() if t is not None), None)
        if tokenizer is None:
            raise ValueError("stop_strings needs the models' tokenizer, and none is saved with them: pass "
                             "base_tokenizer= (generate's own tokenizer= does not reach a custom_generate method)")
        stops = StopStrings(stop_strings, tokenizer)
    return _Run(engines, settings, stops)


def _generate_call(model: PreTrainedModel) -> Mapping[str, Any]:
    """The local variables of the ``GenerationMixin.generate`` call that runs us.

    With a callable ``custom_generate``, transformers (5.x) replaces the
    decoding method's ``streamer`` and ``assistant_model`` by the callable's own
    keyword arguments (``GenerationMixin._extract_generation_mode_kwargs``),
    after it has already put the prompt to the streamer.  Reading them from the
    caller keeps the streamer fed and lets an ``assistant_model`` be refused
    rather than ignored.  Empty if no such frame is found."""
    frame: FrameType | None = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            break
        if frame.f_code.co_name == "generate" and frame.f_locals.get("self") is model:
            return dict(frame.f_locals)
        frame = frame.f_back
    return {}


def _refuse_unsupported(
    model: PreTrainedModel,
    config: GenerationConfig,
    processors: LogitsProcessorList,
    criteria: StoppingCriteriaList,
    call: Mapping[str, Any],
    model_kwargs: Mapping[str, Any],
    *,
    prompt_width: int,
) -> None:
    """``ValueError`` naming the first option of the call that KAD cannot honour (an option at
    its neutral value, whose processor changes nothing for prompts ``prompt_width`` wide, is none)."""

    def refuse(option: str, why: str) -> None:
        raise ValueError(f"kad.hf.generate does not support {option}: {why}")

    if model.config.is_encoder_decoder:
        refuse("encoder-decoder models", "KAD mixes two decoder-only causal LMs")
    method = config.get_generation_mode()
    if method not in _KAD_MODES:
        option = _MODE_OPTIONS.get(method, f"num_beams={config.num_beams}")
        refuse(option, f"{method.value.replace('_', ' ')}; KAD samples or decodes greedily from π")
    if call.get("assistant_model") is not None:
        refuse("assistant_model", "kad-spec already drafts with aligned_model and verifies against π")
    for name in _UNSUPPORTED_OUTPUTS:  # without return_dict_in_generate transformers returns none of them either
        if getattr(config, name, False) and config.return_dict_in_generate:
            refuse(f"{name}=True", "KAD returns the sequences and its statistics (kad_stats)")
    for name, why in [("logits_processor", "KAD draws every token from the mixture π as it is"),
                      ("stopping_criteria", "rows stop at EOS or the length (max_new_tokens, eos_token_id)")]:  # fmt: skip
        for given in call.get(name) or []:  # the user's own instances, which the generation config does not show
            refuse(f"{name} [{type(given).__name__}]", why)
    for processor in processors:
        kind = type(processor).__name__
        if kind in _HONOURED_PROCESSORS or (kind == "TopKLogitsWarper" and _is_default_top_k(model, config, call)):
            continue
        if changes_nothing(processor, prompt_width):
            continue
        refuse(setting(processor), "KAD draws every token from the mixture π as it is")
    for criterion in criteria:
        kind = type(criterion).__name__
        if kind not in _HONOURED_CRITERIA:
            refuse(_OPTION_OF_CRITERION.get(kind, f"stopping_criteria [{kind}]"), "rows stop at EOS or the length")
    extra = sorted(k for k, v in model_kwargs.items() if v is not None and k not in _MODEL_KWARGS_HANDLED)
    if (call.get("kwargs") or {}).get("position_ids") is not None:  # the caller's, not those generate builds
        extra = sorted([*extra, "position_ids"])
    if extra:
        refuse(f"the model inputs {', '.join(extra)}", "KAD feeds both models token ids only")


def _is_default_top_k(model: PreTrainedModel, config: GenerationConfig, call: Mapping[str, Any]) -> bool:
    """Whether ``top_k`` is transformers' global default rather than a request of the call's
    arguments or the model's generation config.  (A ``generation_config=`` object of the call
    is merged with the defaults before kad sees it: its ``top_k=50`` reads as the default.)"""
    asked = (call.get("kwargs") or {}).get("top_k")
    return config.top_k == _DEFAULT_TOP_K and asked is None and getattr(model.generation_config, "top_k", None) is None


def _settings(
    mode: str | None, rule: kk.Rule | None, gamma: int, config: GenerationConfig, track_alpha: bool
) -> Settings:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Integral) or gamma < 0:
        raise ValueError(f"gamma (drafts per speculative round; 0: plain KAD) must be an int >= 0, got {gamma!r}")
    if mode is None:
        mode = "kad-spec" if gamma > 0 else "kad"
    temperature = (1.0 if config.temperature is None else float(config.temperature)) if config.do_sample else 0.0
    settings = Settings(mode, rule, gamma, temperature, track_alpha)  # type: ignore[arg-type]
    settings.checked_rule()
    return settings


def _tokenizers(
    models: Mapping[str, PreTrainedModel | Engine],
    base_tokenizer: PreTrainedTokenizerBase | None,
    aligned_tokenizer: PreTrainedTokenizerBase | None,
) -> dict[str, PreTrainedTokenizerBase | None]:
    """The base and aligned models' tokenizers: the arguments, else those saved with the
    models on this machine (no download), else None."""
    tokenizers = {"base": base_tokenizer, "aligned": aligned_tokenizer}
    for role in tokenizers:
        model = models[role]
        if tokenizers[role] is None and isinstance(model, PreTrainedModel):
            tokenizers[role] = local_tokenizer(model.name_or_path)
    return tokenizers


def _shared_vocab_size(
    models: Mapping[str, PreTrainedModel | Engine],
    tokenizers: Mapping[str, PreTrainedTokenizerBase | None],
    vocab_size: int | None,
) -> int:
    """The vocabulary the logits are cut to, after checking the tokenizers (:func:`_tokenizers`)
    agree; with fewer than two, only the logit counts can be checked."""
    names = {role: f"the {role} model {_name(models[role])!r}" for role in tokenizers}
    known = {names[role]: t for role, t in tokenizers.items() if t is not None}
    if len(known) == 2:
        check_once(known)
    widths = {role: _logits(m) for role, m in models.items()}
    for name, tokenizer in known.items():  # the logits must be the tokenizer's tokens, no more, no fewer
        if vocab_size is not None and vocab_size != len(tokenizer):
            raise ValueError(f"vocab_size={vocab_size} but the tokenizer of {name} has {len(tokenizer)} tokens")
    if vocab_size is None:
        vocab_size = next((len(t) for t in known.values()), min(widths.values()))
    for role, width in widths.items():
        if width < vocab_size:
            raise ValueError(f"the {role} model has {width} output logits, fewer than the vocabulary's {vocab_size}")
    return vocab_size


def _name(model: PreTrainedModel | Engine) -> str:
    return model.name if isinstance(model, Engine) else model.name_or_path or type(model).__name__


def _logits(model: PreTrainedModel | Engine) -> int:
    return model.vocab_size if isinstance(model, Engine) else output_logits(model)


def _prompts(input_ids: Tensor, attention_mask: Tensor | None) -> list[list[int]]:
    """Each row's real tokens; ``ValueError`` for right padding or an empty row."""
    if attention_mask is None:
        return input_ids.tolist()
    mask = attention_mask.bool()
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise ValueError(
            "attention_mask has padding after a real token: KAD needs left padding (tokenizer padding_side='left')"
        )
    rows = [ids[m].tolist() for ids, m in zip(input_ids, mask)]
    if any(not row for row in rows):
        raise ValueError("a row of input_ids has no real token (attention_mask is all 0)")
    return rows


def _seeded_generator(device: torch.device, settings: Settings) -> torch.Generator:
    """A generator on ``device`` seeded from torch's global generator (``torch.manual_seed``);
    greedy decoding draws nothing, so it leaves the global generator as transformers' does."""
    if settings.temperature == 0:
        return torch.Generator(device)
    seed = int(torch.randint(2**62, (), dtype=torch.long))
    return torch.Generator(device).manual_seed(seed)


def _pad_id(config: GenerationConfig) -> int:
    """What fills a finished row: pad, else the first EOS (transformers' fallback), else 0."""
    pad, eos = token_ids(config.pad_token_id), token_ids(config.eos_token_id)
    return pad[0] if pad else eos[0] if eos else 0


def _sequences(input_ids: Tensor, new_tokens: list[list[int]], pad_id: int) -> torch.LongTensor:
    """i64 ``[B, L + n]`` (as transformers' own decoding returns, whatever the prompt's
    integer dtype): the prompts as given, then each row's new tokens, padded on the right."""
    width = max(len(t) for t in new_tokens)
    new = torch.full((len(new_tokens), width), pad_id, dtype=torch.long)
    for row, tokens in enumerate(new_tokens):
        new[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return cast(torch.LongTensor, torch.cat([input_ids.long(), new.to(input_ids.device)], dim=1))
