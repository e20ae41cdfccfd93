"""Batched KAD decoding on Hugging Face causal LMs (DESIGN §5).

Every token is drawn by the ``kad_kernels`` API: :func:`kad_kernels.sample` from
the mixture ``π = p⊙(1−d) + α q`` of the base model ``p`` and the aligned model
``q``, or :func:`kad_kernels.verify` for a speculative round.  This module only
runs the models and keeps their KV caches in step (see :mod:`kad.batch`).

=======================  =====================================================
mode                     each step / round
=======================  =====================================================
``base``                 the base model alone (π = p)
``aligned``              the aligned model alone (π = q)
``kad``                  both models, one token from π per step; with a
                         :class:`~kad_kernels.Nudging` rule the aligned model is
                         skipped on steps where no row defers (max p ≥ λ) and
                         catches up on the next step that needs it
``kad-spec``             the aligned model drafts γ tokens (and scores the
                         position after them), the base model scores the γ + 1
                         positions in one forward, ``verify`` accepts a prefix
                         and draws the correction or bonus token
``nudging[-spec]``       ``kad[-spec]`` with a ``Nudging`` rule
``implicit-reward[-spec]``  ``kad[-spec]`` with :class:`~kad_kernels.ImplicitReward`:
                         π ∝ p q / q_ref, q_ref from the reference model (the
                         small *unaligned* model), which runs where the base does
=======================  =====================================================

Drafts are drawn from ``q = softmax(q_logits / T)`` exactly, as ``verify``
assumes, by ``kad_kernels.sample(q, q, Dual(0))``: with p = q the mixture is
``q`` whatever is deferred, and the kernels' temperature, greedy (arg-max,
lowest index on ties) and randomness conventions carry over unchanged.  The
single-model modes sample the same way.  One ``torch.Generator`` seeded with
``seed`` draws every random number, so a seed fixes the whole generation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

import kad_kernels as kk

from . import default_pair
from .batch import Batch, CachedLM
from .models import check_same_vocabulary, load
from .stats import GenerationStats

Mode = Literal[
    "base", "aligned", "kad", "kad-spec", "nudging", "nudging-spec", "implicit-reward", "implicit-reward-spec"
]
MODES: tuple[str, ...] = get_args(Mode)

# The system message the paper prompts every model with (in the aligned model's chat template).
SYSTEM_PROMPT = "Answer the question by walking through the reasoning step by step."

# Defers nothing (no p_v < 0): sample(x, x, _ONE_MODEL) draws from softmax(x / T).
_ONE_MODEL = kk.Dual(0.0)


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


@dataclass
class _Plan:
    """Which cached model fills which logits slot of the kernels, with which rule."""

    rule: kk.Rule
    speculative: bool
    target: CachedLM  # the p slot (verifies in speculative rounds)
    draft: CachedLM | None  # the q slot (drafts); None: q = p
    reference: CachedLM | None  # the ref slot of ImplicitReward

    @property
    def models(self) -> list[CachedLM]:
        return [m for m in (self.target, self.draft, self.reference) if m is not None]


# Rule names of `build_rule` (and `kad --rule`): the paper's rules, then the rule names of the authors' code (kad_kernels.rule_from_name).
_AUTHOR_RULES = (
    "token_wise", "max", "max_q_minus", "max_q_plus", "max_p_plus", "minus_max_p_plus",
    "token_v2", "token_max", "budget_lr",
)  # fmt: skip
RULES = ("dual", "primal", "nudging", "implicit-reward", *_AUTHOR_RULES)


def rule_name(mode: str, name: str | None) -> str | None:
    """The name of the rule ``mode`` runs: none for one model, fixed by the baseline
    modes (``name`` must be absent or that one), else ``name`` (default ``dual``)."""
    family = mode.removesuffix("-spec")
    if family in ("base", "aligned", "nudging", "implicit-reward") and name not in (None, family):
        raise ValueError(f"mode {mode!r} fixes its rule: drop --rule {name}")
    if family in ("base", "aligned"):
        return None
    return family if family in ("nudging", "implicit-reward") else name or "dual"


def build_rule(mode: str, name: str | None, lam: float) -> kk.Rule | None:
    """The rule of ``mode`` (see :func:`rule_name`) with parameter ``lam`` (λ, μ or the
    primal budget; ImplicitReward has none)."""
    name = rule_name(mode, name)
    if name is None:
        return None
    if name == "implicit-reward":
        return kk.ImplicitReward()
    constructors = {"dual": kk.Dual, "primal": kk.Primal, "nudging": kk.Nudging}
    return constructors[name](lam) if name in constructors else kk.rule_from_name(name, lam)


def _resolve_rule(mode: str, rule: kk.Rule | None) -> kk.Rule:
    """The rule ``mode`` samples with; baseline modes fix the rule's class."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    family = mode.removesuffix("-spec")
    if family in ("base", "aligned"):
        if rule is not None:
            raise ValueError(f"mode {mode!r} runs one model and takes no rule, got {rule!r}")
        return _ONE_MODEL
    if family == "implicit-reward" and rule is None:
        return kk.ImplicitReward()
    required = {"nudging": kk.Nudging, "implicit-reward": kk.ImplicitReward}.get(family, kk.Rule)
    if rule is None:
        example = "Nudging" if family == "nudging" else "Dual"
        raise ValueError(f"mode {mode!r} needs a rule, e.g. rule=kad_kernels.{example}(0.4)")
    if not isinstance(rule, required):
        raise TypeError(f"mode {mode!r} needs a {required.__name__} rule, got {rule!r}")
    return rule


def _stop_ids(tokenizers: Sequence[PreTrainedTokenizerBase], models: Sequence[PreTrainedModel]) -> frozenset[int]:
    """The tokenizers' EOS ids and those of the models' generation configs (instruct
    models often stop on an end-of-turn token besides the tokenizer's EOS)."""
    ids = {t.eos_token_id for t in tokenizers}
    for model in models:
        config_ids = getattr(model.generation_config, "eos_token_id", None)
        ids.update(config_ids if isinstance(config_ids, list) else [config_ids])
    return frozenset(i for i in ids if i is not None)


def _common_dtype(*logits: Tensor | None) -> list[Tensor | None]:
    """The kernels take p, q (and ref) of one dtype: fp32 if the models' dtypes differ."""
    dtypes = {x.dtype for x in logits if x is not None}
    if len(dtypes) == 1:
        return list(logits)
    return [None if x is None else x.float() for x in logits]


class Decoder:
    """KAD decoding with a base model, an aligned model and optionally a reference model.

    ``tokenizer`` is the aligned model's: its chat template formats the prompts
    and it decodes the output.  ``base_tokenizer`` / ``reference_tokenizer``, when
    given, must have the same vocabulary (``ValueError`` naming both otherwise).
    All models must live on one device; their logits are cut to the tokenizer's
    ``len(tokenizer)`` tokens (models may pad their lm_head beyond it).
    ``stop_ids``: the tokens that end a row, from the tokenizers' EOS and the
    models' generation configs (an attribute: replace it to stop elsewhere).
    """

    def __init__(
        self,
        base: PreTrainedModel,
        aligned: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        reference: PreTrainedModel | None = None,
        base_tokenizer: PreTrainedTokenizerBase | None = None,
        reference_tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        models = {"base": base, "aligned": aligned, "reference": reference}
        names = {role: f"the {role} model" + (f" {m.name_or_path!r}" if m and m.name_or_path else "")
                 for role, m in models.items()}  # fmt: skip
        self.models = {role: m for role, m in models.items() if m is not None}
        tokenizers = {"aligned": tokenizer, "base": base_tokenizer, "reference": reference_tokenizer}
        tokenizers = {role: t for role, t in tokenizers.items() if t is not None}
        check_same_vocabulary({names[role]: t for role, t in tokenizers.items()})

        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.device = base.device
        for role, model in self.models.items():
            logits = model.get_output_embeddings().weight.shape[0]
            if logits < self.vocab_size:
                raise ValueError(
                    f"{names[role]} has {logits} output logits, fewer than the tokenizer's {self.vocab_size} tokens"
                )
            if model.device != self.device:
                raise ValueError(f"{names[role]} is on {model.device}, the base model on {self.device}: use one device")
        self.stop_ids = _stop_ids(list(tokenizers.values()), list(self.models.values()))

    @classmethod
    def from_pretrained(
        cls,
        base: str | None = None,
        aligned: str | None = None,
        reference: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "auto",
    ) -> Decoder:
        """Load the models and tokenizers by hub id or local path (default device: CUDA
        if available).  A missing ``base`` or ``aligned`` is that model of the default
        pair (:mod:`kad.default_pair`), prepared on first use."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        base = base or str(default_pair.local_path(default_pair.BASE))
        aligned = aligned or str(default_pair.local_path(default_pair.ALIGNED))
        base_model, base_tokenizer = load(base, device, dtype)
        aligned_model, tokenizer = load(aligned, device, dtype)
        ref_model, ref_tokenizer = load(reference, device, dtype) if reference else (None, None)
        return cls(
            base_model,
            aligned_model,
            tokenizer,
            reference=ref_model,
            base_tokenizer=base_tokenizer,
            reference_tokenizer=ref_tokenizer,
        )

    def encode(self, prompt: str, *, chat: bool = False, system_prompt: str | None = SYSTEM_PROMPT) -> list[int]:
        """Token ids of ``prompt``; with ``chat``, wrapped in the aligned model's chat
        template as a user turn after ``system_prompt`` (none if ``None``), ready for
        the assistant's answer."""
        if not chat:
            return self.tokenizer(prompt).input_ids
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        mode: Mode = "kad",
        rule: kk.Rule | None = None,
        *,
        gamma: int = 4,
        temperature: float = 1.0,
        max_new_tokens: int | Sequence[int] = 256,
        seed: int | None = None,
        chat: bool = False,
        system_prompt: str | None = SYSTEM_PROMPT,
        streamer: BaseStreamer | None = None,
        track_alpha: bool = True,
    ) -> Generation:
        """Generate a continuation of each prompt.

        ``prompts``: strings (encoded by :meth:`encode` with ``chat`` and
        ``system_prompt``) or lists of token ids (used as they are).  ``rule``: any
        ``kad_kernels`` rule for ``kad``/``kad-spec``; a ``Nudging`` for the nudging
        modes; ``ImplicitReward()`` (the default) for the implicit-reward modes;
        none for ``base``/``aligned``.  ``gamma``: drafts per speculative round.
        ``temperature``: 0 is greedy.  ``max_new_tokens``: one budget for all
        prompts or one per prompt; a row stops at its budget or after a stop
        token (:attr:`stop_ids`), without stopping the others.  ``streamer``: a
        transformers streamer (e.g. ``TextStreamer``), for a single prompt; it
        receives the prompt ids, then the new tokens as they are accepted.
        ``track_alpha``: compute α for the statistics (one more mixture per step
        where the rule needs it).
        """
        rule = _resolve_rule(mode, rule)
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise ValueError("prompts is empty: pass at least one prompt")
        if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
            raise ValueError(f"gamma (drafts per speculative round) must be an int >= 1, got {gamma!r}")
        if rule.needs_ref and "reference" not in self.models:
            raise ValueError(
                f"{type(rule).__name__} needs a reference model (the small unaligned model): "
                "pass reference= to Decoder"
            )
        if streamer is not None and len(prompts) != 1:
            raise ValueError(f"a streamer takes one prompt, got {len(prompts)}")
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(budgets) != len(prompts) or any(b < 0 for b in budgets):
            raise ValueError(f"max_new_tokens must be an int >= 0 or one per prompt, got {max_new_tokens!r}")
        ids = [self._prompt_ids(row, p, chat, system_prompt) for row, p in enumerate(prompts)]

        generator = torch.Generator(self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        if streamer is not None:
            streamer.put(torch.tensor(ids[0]))
        loop = _Loop(self._plan(mode, rule), self.stop_ids, temperature, generator, track_alpha, streamer)
        outputs = loop.run(ids, budgets, gamma)
        if streamer is not None:
            streamer.end()
        texts = self.tokenizer.batch_decode(outputs, skip_special_tokens=True)
        return Generation(texts, outputs, loop.stats, loop.row_stats)

    def _prompt_ids(self, row: int, prompt: str | Sequence[int], chat: bool, system_prompt: str | None) -> list[int]:
        ids = self.encode(prompt, chat=chat, system_prompt=system_prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError(f"prompt {row} has no tokens")
        if not all(0 <= t < self.vocab_size for t in ids):
            raise ValueError(f"prompt {row} has token ids outside [0, {self.vocab_size})")
        return ids

    def _plan(self, mode: str, rule: kk.Rule) -> _Plan:
        """Fresh caches for the models ``mode`` runs."""
        family = mode.removesuffix("-spec")
        cached = {role: CachedLM(m, self.vocab_size) for role, m in self.models.items()}
        if family in ("base", "aligned"):
            return _Plan(rule, False, cached[family], None, None)
        reference = cached["reference"] if rule.needs_ref else None
        return _Plan(rule, mode.endswith("-spec"), cached["base"], cached["aligned"], reference)


class _Loop:
    """The decoding loop of one :meth:`Decoder.generate` call.

    Rows that finish (stop token or budget) leave the batch and every cache
    after the step that finished them; the others go on."""

    def __init__(
        self,
        plan: _Plan,
        stop_ids: frozenset[int],
        temperature: float,
        generator: torch.Generator,
        track_alpha: bool,
        streamer: BaseStreamer | None,
    ):
        self.plan = plan
        self.stop_ids = stop_ids
        self.temperature = temperature
        self.generator = generator
        self.track_alpha = track_alpha
        self.streamer = streamer
        self.stats = GenerationStats()
        self.row_stats: list[GenerationStats] = []

    def run(self, prompts: list[list[int]], budgets: list[int], gamma: int) -> list[list[int]]:
        """New tokens per prompt; fills :attr:`stats` and :attr:`row_stats`."""
        start = time.perf_counter()
        self.row_stats = [GenerationStats() for _ in prompts]
        outputs: list[list[int]] = [[] for _ in prompts]
        active = [row for row, budget in enumerate(budgets) if budget > 0]  # original indices of the batch rows
        left = list(budgets)
        if active:
            device = self.plan.target.model.device
            # Caches hold every token but the pending (last) one: prefill the prompts' prefixes.
            batch = Batch([prompts[row][:-1] for row in active], device)
            if batch.width:
                for model in self.plan.models:
                    model.advance(batch)
            batch.append(torch.tensor([prompts[row][-1] for row in active], device=device))
        while active:
            if self.plan.speculative:
                round_gamma = max(1, min(gamma, max(left[row] for row in active) - 1))
                tokens, emitted, alpha = self._speculative_round(batch, round_gamma)
            else:
                tokens, emitted, alpha = self._step(batch)
            self.stats.rounds += 1
            keep = self._commit(active, tokens, emitted, alpha, outputs, left)
            now = time.perf_counter() - start
            for row in active:
                self.row_stats[row].wall_time_s = now
                self.row_stats[row].rounds += 1
            if len(keep) < len(active):
                rows = torch.tensor(keep, dtype=torch.long, device=batch.tokens.device)
                batch.select(rows)
                for model in self.plan.models:
                    model.select(rows)
                active = [active[i] for i in keep]
        self.stats.wall_time_s = time.perf_counter() - start
        return outputs

    def _alpha(self, p: Tensor, q: Tensor, ref: Tensor | None) -> Tensor | None:
        """α ``[N]`` of the mixtures of logits ``[N, V]``, if tracked.  One model
        alone defers nothing; ImplicitReward has α = 0 by definition."""
        if not self.track_alpha:
            return None
        if self.plan.draft is None or self.plan.rule.needs_ref:
            return torch.zeros(p.shape[0], device=p.device)
        return kk.mixture(p, q, self.plan.rule, self.temperature, check=False).alpha

    def _step(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        """One token per row: ``(tokens [B, 1], emitted [B] (ones), α [B, 1] or None)``."""
        plan = self.plan
        p = plan.target.advance(batch)[:, -1]
        q, alpha = p, None
        if plan.draft is not None:
            if isinstance(plan.rule, kk.Nudging):
                # Nudging defers whole rows (α ∈ {0, 1}) and from p alone: when no row
                # defers, π = p and the aligned model is not needed (q = p is exact).
                alpha = kk.mixture(p, p, plan.rule, self.temperature, check=False).alpha
            if alpha is None or bool((alpha > 0).any()):
                q = plan.draft.advance(batch)[:, -1]
        ref = plan.reference.advance(batch)[:, -1] if plan.reference else None
        p, q, ref = _common_dtype(p, q, ref)
        tokens = kk.sample(p, q, plan.rule, self.temperature, ref_logits=ref, generator=self.generator, check=False)
        if alpha is None:
            alpha = self._alpha(p, q, ref)
        batch.append(tokens)
        return tokens[:, None], torch.ones_like(tokens), None if alpha is None else alpha[:, None]

    def _speculative_round(self, batch: Batch, gamma: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """γ drafts from q, verified against π: ``(tokens [B, γ+1] (−1 padded),
        emitted [B], α [B, γ+1] or None)``."""
        plan = self.plan
        first = batch.width  # the first draft's column; the pending token is at first - 1
        q_logits = []
        for _ in range(gamma):
            q_i = plan.draft.advance(batch)[:, -1]
            q_logits.append(q_i)
            batch.append(kk.sample(q_i, q_i, _ONE_MODEL, self.temperature, generator=self.generator, check=False))
        q_logits.append(plan.draft.advance(batch)[:, -1])  # π at the bonus position needs q there too
        q = torch.stack(q_logits, dim=1)
        p = plan.target.advance(batch, keep=gamma + 1)
        ref = plan.reference.advance(batch, keep=gamma + 1) if plan.reference else None
        p, q, ref = _common_dtype(p, q, ref)
        drafts = batch.tokens[:, first:]
        verified = kk.verify(
            p, q, drafts, plan.rule, self.temperature, ref_logits=ref, generator=self.generator, check=False
        )
        accepted = verified.num_accepted

        # Mask each row's rejected drafts; crop the columns no row accepted.
        batch.reject(first, accepted)
        width = first + int(accepted.max())
        batch.truncate(width)
        for model in plan.models:
            model.truncate(width)
        batch.append(verified.tokens.gather(1, accepted[:, None])[:, 0])  # correction or bonus: the new pending token

        rows = accepted.shape[0]
        flat = [None if x is None else x.flatten(0, 1) for x in (p, q, ref)]
        alpha = self._alpha(*flat)
        return verified.tokens, accepted + 1, None if alpha is None else alpha.view(rows, gamma + 1)

    def _commit(
        self,
        active: list[int],
        tokens: Tensor,
        emitted: Tensor,
        alpha: Tensor | None,
        outputs: list[list[int]],
        left: list[int],
    ) -> list[int]:
        """Append each row's emitted tokens to its output, cut after a stop token or at
        its budget; update the statistics (a speculative round's drafts count whole,
        before the cut).  Returns the batch rows still going."""
        tokens_h, emitted_h = tokens.tolist(), emitted.tolist()
        alpha_h = None if alpha is None else alpha.tolist()
        gamma = tokens.shape[1] - 1 if self.plan.speculative else 0
        keep = []
        for i, row in enumerate(active):
            new = tokens_h[i][: min(emitted_h[i], left[row])]
            stop = next((j for j, t in enumerate(new) if t in self.stop_ids), None)
            if stop is not None:
                new = new[: stop + 1]
            outputs[row].extend(new)
            left[row] -= len(new)
            kept = None if alpha_h is None else alpha_h[i][: len(new)]
            for stats in (self.stats, self.row_stats[row]):
                stats.new_tokens += len(new)
                if gamma:
                    stats.drafts_proposed += gamma
                    stats.drafts_accepted += emitted_h[i] - 1
                    stats.verified_rows += 1
                if kept is not None:
                    stats.alpha_sum += sum(kept)
                    stats.alpha_count += len(kept)
                    stats.deferring_steps += sum(a > 0 for a in kept)
            if self.streamer is not None and new:
                self.streamer.put(torch.tensor(new))
            if stop is None and left[row] > 0:
                keep.append(i)
        return keep
