"""Text in, text out: :class:`Decoder` runs KAD decoding (docs/design.md §5) on a base, an
aligned and optionally a reference model, by hub id, local path, transformers
model or any :class:`~kad.engines.Engine`.  It tokenizes (optionally in the
aligned model's chat template), runs :func:`kad.loop.decode` and detokenizes;
the modes and the loop are described in :mod:`kad.loop`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jinja2 import TemplateError  # chat templates are jinja2 (a dependency of torch)
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

import kad_kernels as kk

from .choices import GAMMA, PARAMETERLESS_RULES, SYSTEM_PROMPT, EngineKind, Mode, rule_name
from .choices import RULES  # noqa: F401  (build_rule's names, importable from here too)
from .engines import Engine, HFEngine, refuse_shared_engines
from .engines.arguments import checked_stop_ids, checked_tokenizer
from .engines.huggingface import checked_model, output_logits
from .engines.vocabulary import check_same_vocabulary
from .errors import keep_partial, partial_of
from .loop import (
    KEEPS_PARTIAL,
    Decoded,
    checked_inputs,
    decode,
    draw_device,
    is_count,
    refuse_missing_reference,
)
from .models import ModelChoice, load_models
from .settings import Settings
from .stats import GenerationStats
from .stops import StopStrings


def chat_messages(user_message: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The conversation to pass to ``tokenizer.apply_chat_template``: a system
    turn with ``system_prompt`` (none if empty or ``None``), then the user turn;
    ``TypeError`` for a ``system_prompt`` that is not a string (a template would print it)."""
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise TypeError(f"system_prompt must be a str or None, got {system_prompt!r:.80}")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user_message})
    return messages


@dataclass
class Generation:
    """What :meth:`Decoder.generate` returns, one entry per prompt in prompt order.

    ``token_ids`` are the new tokens (a final stop token included); ``texts`` their
    decoding without special tokens.  ``stats`` counts all rows together;
    ``row_stats`` each row alone, its wall time ending when the row finished."""

    texts: list[str]
    token_ids: list[list[int]]
    stats: GenerationStats
    row_stats: list[GenerationStats]


def build_rule(mode: str, name: str | None, lam: float | None) -> kk.Rule | None:
    """The rule of ``mode`` (see :func:`rule_name`) with parameter ``lam`` (λ, μ or the
    primal budget; ``None`` or ignored for the :data:`PARAMETERLESS_RULES`)."""
    name = rule_name(mode, name)
    if name is None:
        return None
    if name == "implicit-reward":
        return kk.ImplicitReward()
    if lam is None and name not in PARAMETERLESS_RULES:
        raise ValueError(f"rule {name!r} needs its parameter (lam)")
    constructors = {"dual": kk.Dual, "primal": kk.Primal, "nudging": kk.Nudging}
    if name in constructors:
        return constructors[name](lam)
    return kk.rule_from_name(name, 0.0 if lam is None else lam)  # None: token_max, which ignores it


class Decoder:
    """KAD decoding with a base model, an aligned model and optionally a reference model.

    Each model is a transformers ``PreTrainedModel`` (run by
    :class:`~kad.engines.HFEngine`) or any :class:`~kad.engines.Engine`.
    ``tokenizer`` is the aligned model's: its chat template formats the prompts
    and it decodes the output.  ``base_tokenizer`` / ``reference_tokenizer``, when
    given, must have the same vocabulary (``ValueError`` naming both otherwise).
    Logits are cut to the tokenizer's ``len(tokenizer)`` tokens (models may pad
    their lm_head beyond it); the kernels run on the base model's device.
    ``stop_ids``: the tokens that end a row, from the tokenizers' EOS and the
    models' generation configs (an attribute: replace it to stop elsewhere).
    The engines' caches serve one generation at a time, so calls of
    :meth:`generate` from several threads take turns (:mod:`kad.engines.turns`).
    """

    def __init__(
        self,
        base: PreTrainedModel | Engine,
        aligned: PreTrainedModel | Engine,
        tokenizer: PreTrainedTokenizerBase,
        *,
        reference: PreTrainedModel | Engine | None = None,
        base_tokenizer: PreTrainedTokenizerBase | None = None,
        reference_tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        given = {"base": base, "aligned": aligned, "reference": reference}
        _check_arguments(given, {"tokenizer": tokenizer, "base_tokenizer": base_tokenizer,
                                 "reference_tokenizer": reference_tokenizer})  # fmt: skip
        names = {role: f"the {role} model" + (f" {_name(m)!r}" if _name(m) else "") for role, m in given.items()}
        models = {role: m for role, m in given.items() if m is not None}
        # A model given twice gets an HFEngine per role; an engine object cannot serve two.
        refuse_shared_engines({role: m for role, m in models.items() if not isinstance(m, PreTrainedModel)})
        given_tokenizers = {"aligned": tokenizer, "base": base_tokenizer, "reference": reference_tokenizer}
        tokenizers = {role: t for role, t in given_tokenizers.items() if t is not None}
        check_same_vocabulary({names[role]: t for role, t in tokenizers.items()})

        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.engines: dict[str, Engine] = {role: self._engine(names[role], m) for role, m in models.items()}
        self.device = self.engines["base"].device
        stop_ids = {t.eos_token_id for t in tokenizers.values()}.union(*(e.stop_ids for e in self.engines.values()))
        # An id past the vocabulary (a generation config's, for a padded lm_head) is never drawn.
        self.stop_ids = frozenset(i for i in stop_ids if i is not None and 0 <= i < self.vocab_size)

    @property
    def stop_ids(self) -> frozenset[int]:
        """The token ids that end a row; set it to any iterable of ids in the vocabulary
        (``TypeError``/``ValueError`` naming ``stop_ids`` otherwise)."""
        return self._stop_ids

    @stop_ids.setter
    def stop_ids(self, ids: Iterable[int]) -> None:
        self._stop_ids = checked_stop_ids(ids, self.vocab_size)

    def _engine(self, name: str, model: PreTrainedModel | Engine) -> Engine:
        """``model`` as an engine with the tokenizer's vocabulary."""
        model = checked_model(name, model)
        if isinstance(model, PreTrainedModel):
            logits = output_logits(model)
            if logits < self.vocab_size:
                raise ValueError(
                    f"{name} has {logits} output logits, fewer than the tokenizer's {self.vocab_size} tokens"
                )
            return HFEngine(model, self.vocab_size)
        if model.vocab_size != self.vocab_size:
            raise ValueError(
                f"{name} returns {model.vocab_size} logits per position, the tokenizer has {self.vocab_size} tokens"
            )
        return model

    @classmethod
    def from_pretrained(
        cls,
        base: str | None = None,
        aligned: str | None = None,
        reference: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "auto",
        engine: EngineKind = "auto",
        tokenizer: str | None = None,
        n_ctx: int | None = None,
        base_url: str | None = None,
        base_model: str | None = None,
        api_key: str | None = None,
        approximate: bool = False,
    ) -> Decoder:
        """Load the models and tokenizers (default device: CUDA if available);
        ``ValueError`` (:class:`~kad.models.ModelLoadError`) in one line for a model or
        device that cannot be had.  A missing ``base`` or ``aligned`` is that model of
        the default pair (:mod:`kad.default_pair`), prepared on first use.

        ``engine``: ``"torch"`` runs hub ids or local directories with transformers;
        ``"llama.cpp"`` runs GGUF files with :class:`~kad.engines.LlamaCppEngine` (on
        the CPU; the tokenizer is the aligned GGUF's own); ``"auto"`` (default) runs
        ``.gguf`` files in ``llama.cpp`` and other models in ``torch`` (not mixed), and
        the default pair in ``llama.cpp`` when llama-cpp-python is installed and the
        device is the CPU, else in ``torch``.  ``tokenizer`` (llama.cpp
        only): the aligned model's tokenizer by hub id or directory instead of the GGUF's own;
        ``n_ctx`` (llama.cpp only): positions per row (see :class:`~kad.engines.LlamaCppEngine`);
        ``dtype`` (torch only; llama.cpp runs each GGUF file's own types).

        ``base_url`` (instead of ``base``): the base model is ``base_model`` (default:
        the only one) of that OpenAI-compatible server, a :class:`~kad.engines.RemoteEngine`
        with ``api_key`` and ``approximate``; only the aligned model is loaded here, with
        ``torch`` after the server has answered (a failing server fails in seconds)."""
        models = load_models(ModelChoice(
            base, aligned, reference, device=device, dtype=dtype, engine=engine, tokenizer=tokenizer, n_ctx=n_ctx,
            base_url=base_url, base_model=base_model, api_key=api_key, approximate=approximate,
        ))  # fmt: skip
        return cls(
            models.base,
            models.aligned,
            models.tokenizer,
            reference=models.reference,
            base_tokenizer=models.base_tokenizer,
            reference_tokenizer=models.reference_tokenizer,
        )

    def encode(self, prompt: str, *, chat: bool = False, system_prompt: str | None = SYSTEM_PROMPT) -> list[int]:
        """Token ids of ``prompt``; with ``chat``, wrapped in the aligned model's chat
        template as a user turn after ``system_prompt`` (none if ``None``), ready for
        the assistant's answer."""
        if not chat:
            return self.tokenizer(prompt).input_ids
        if not getattr(self.tokenizer, "chat_template", None):  # transformers' own error names neither fix
            name = getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__
            raise ValueError(f"the aligned model's tokenizer {name!r} has no chat template: pass raw prompts "
                             "(chat=False; kad generate --no-chat), or a tokenizer with one (--tokenizer with llama.cpp)")  # fmt: skip
        try:
            text = self.tokenizer.apply_chat_template(
                chat_messages(prompt, system_prompt), add_generation_prompt=True, tokenize=False
            )
        except TemplateError as error:  # e.g. a template that takes no system message (Gemma's)
            hint = " (without a system prompt: system_prompt=None, --system '')" if system_prompt else ""
            raise ValueError(f"the aligned model's chat template refused the conversation: {error}{hint}") from None
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        mode: Mode = "kad",
        rule: kk.Rule | None = None,
        *,
        gamma: int = GAMMA,
        temperature: float = 1.0,
        max_new_tokens: int | Sequence[int] = 256,
        seed: int | None = None,
        chat: bool = False,
        system_prompt: str | None = SYSTEM_PROMPT,
        streamer: BaseStreamer | None = None,
        track_alpha: bool = True,
        stop_strings: str | Sequence[str] | None = None,
    ) -> Generation:
        """Generate a continuation of each prompt.

        ``prompts``: strings (encoded by :meth:`encode` with ``chat`` and
        ``system_prompt``) or lists of token ids (used as they are).  ``rule``: any
        ``kad_kernels`` rule for ``kad``/``kad-spec``; a ``Nudging`` for the nudging
        modes; ``ImplicitReward()`` (the default) for the implicit-reward modes;
        none for ``base``/``aligned``.  ``gamma``: drafts per speculative round.
        ``temperature``: 0 is greedy.  ``max_new_tokens``: one budget for all
        prompts or one per prompt; a row stops at its budget, after a stop token
        (:attr:`stop_ids`) or after the token that completes one of
        ``stop_strings`` (a string or a list, :mod:`kad.stops`; that token is
        kept, as in transformers), without stopping the others.  ``streamer``: a
        transformers streamer (e.g. ``TextStreamer``), for a single prompt; it
        receives the prompt ids, then the new tokens as they are accepted, and
        ``end()`` on every exit (a refused call's too: a consumer waits for it).
        ``track_alpha``: compute α for the statistics (one more mixture per step
        where the rule needs it).  A Ctrl-C (``KeyboardInterrupt``), an
        :class:`~kad.engines.EngineError` or a device out of memory leaves with
        the :class:`Generation` so far as its ``partial`` (None if it came before
        the generation began, while the arguments were checked).
        """
        decoded = None
        ends = streamer is not None  # ended on every exit, a refused call's too: a consumer waits for end()
        try:
            try:
                if ends and not _is_streamer(streamer):
                    ends = False
                    raise TypeError(f"streamer must be a transformers streamer (with put and end), got {streamer!r:.80}")
                if not isinstance(chat, bool):
                    raise TypeError(f"chat must be True or False, got {chat!r}")
                settings = Settings(mode, rule, gamma, temperature, track_alpha)
                refuse_missing_reference(settings.checked_rule(), "reference" in self.engines, ": pass reference= to Decoder")
                seed = None if seed is None else checked_seed(seed)
                stops = None if stop_strings is None else StopStrings(stop_strings, self.tokenizer)
                ids, budgets = self._inputs(prompts, max_new_tokens, chat, system_prompt, streamed=streamer is not None)
                generator = torch.Generator(draw_device(self.engines, settings))  # "aligned": the aligned model's
                if seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(generator_seed(seed, generator.device))
                if streamer is not None:
                    streamer.put(torch.tensor(ids[0]))
                # kad.loop.decode holds the engines for the generation: threads take turns (design §6.1).
                decoded = decode(self.engines, ids, budgets, settings, stop_ids=self.stop_ids, generator=generator,
                                 streamer=streamer, stop_strings=stops)  # fmt: skip
                return self._generation(decoded)
            finally:  # no call before end(), where a Ctrl-C could land
                if ends and streamer is not None:
                    streamer.end()
        except KEEPS_PARTIAL as error:  # keep what was generated, with its text (also one in end())
            # decode's own partial; the whole result where decode had returned; None before the
            # generation began (the arguments being checked)
            partial = partial_of(error) or decoded
            keep_partial(error, None if partial is None else self._generation(partial))
            raise

    def _inputs(self, prompts: str | Sequence[str] | Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
                chat: bool, system_prompt: str | None, *, streamed: bool) -> tuple[list[list[int]], list[int]]:
        """:meth:`generate`'s prompts as token ids, and a budget for each, checked."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence) or not all(isinstance(p, (str, Sequence)) for p in prompts):
            raise TypeError("prompts must be a string, a list of strings or a list of token-id lists")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: pass at least one prompt")
        if streamed and len(prompts) != 1:
            raise ValueError(f"a streamer takes one prompt, got {len(prompts)}")
        if isinstance(max_new_tokens, (np.ndarray, torch.Tensor)):  # one per prompt, or a 0-d one for all
            max_new_tokens = max_new_tokens.tolist()
        budgets: list[Any]  # checked below, then by checked_inputs
        if isinstance(max_new_tokens, numbers.Integral):
            budgets = [max_new_tokens] * len(prompts)
        else:
            budgets = list(max_new_tokens) if isinstance(max_new_tokens, Sequence) else []
        if len(budgets) != len(prompts) or not all(is_count(b) for b in budgets):
            raise ValueError(f"max_new_tokens must be an int >= 0 or one per prompt, got {max_new_tokens!r}")
        ids = [self.encode(p, chat=chat, system_prompt=system_prompt) if isinstance(p, str) else p for p in prompts]
        return checked_inputs(ids, budgets, self.vocab_size)

    def _generation(self, out: Decoded) -> Generation:
        texts = self.tokenizer.batch_decode(out.token_ids, skip_special_tokens=True)
        return Generation(texts, out.token_ids, out.stats, out.row_stats)


def _is_streamer(streamer: object) -> bool:
    """Whether ``streamer`` has what a transformers streamer has: ``put`` and ``end``."""
    return hasattr(streamer, "put") and hasattr(streamer, "end")


def _check_arguments(models: Mapping[str, object], tokenizers: Mapping[str, object]) -> None:
    """``TypeError`` naming the first argument of :class:`Decoder` that is not a model (an
    engine) or a tokenizer; a name or path is what :meth:`Decoder.from_pretrained` takes."""
    hint = ": Decoder.from_pretrained loads models by name or path"
    for arg, model in models.items():
        if model is not None or arg != "reference":
            try:
                checked_model(arg, model)
            except TypeError as error:
                raise TypeError(f"{error}{hint if isinstance(model, (str, os.PathLike)) else ''}") from None
    for arg, tokenizer in tokenizers.items():
        if tokenizer is not None or arg == "tokenizer":
            try:
                checked_tokenizer(arg, tokenizer)
            except TypeError as error:
                raise TypeError(f"{error}{hint if isinstance(tokenizer, (str, os.PathLike)) else ''}") from None


def checked_seed(seed: int) -> int:
    """``seed`` for ``torch.Generator.manual_seed``, which takes 64 bits (negative ones two's complement)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be an int of 64 bits, in [-2**63, 2**64), got {seed!r}")
    return int(seed)


_MASK64 = 2**64 - 1


def generator_seed(seed: int, device: torch.device) -> int:
    """``seed`` (64 bits, :func:`checked_seed`) as a seed every bit of which counts on
    ``device``: the CPU's generator (mt19937) keeps only the low 32 bits of its seed, so
    that seeds 2**32 apart drew alike (``kad eval``'s batch seeds ``seed · 2**32 + first``
    made every --seed one).  There a larger seed is folded into 32 bits by splitmix64; a
    seed below 2**32 is kept, as is every seed on a GPU (Philox takes all 64 bits)."""
    seed &= _MASK64
    if device.type != "cpu" or seed < 2**32:
        return seed
    z = (seed + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 32


def _name(model: PreTrainedModel | Engine | None) -> str:
    if model is None:
        return ""
    return (model.name_or_path or "") if isinstance(model, PreTrainedModel) else model.name
