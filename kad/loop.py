"""The batched KAD decoding loop over engines (docs/design.md §5).

Every token is drawn by the ``kad_kernels`` API: :func:`kad_kernels.sample` from
the mixture ``π = p⊙(1−d) + α q`` of the base model ``p`` and the aligned model
``q``, or :func:`kad_kernels.verify` for a speculative round.  The models are
:class:`~kad.engines.Engine` s; this module runs them and keeps their caches in
step (see :mod:`kad.batch`).  :class:`kad.Decoder` (text in, text out) and
:func:`kad.hf.generate` (transformers' ``generate``) are the two front ends.

=======================  =====================================================
mode                     each step / round
=======================  =====================================================
``base``                 the base model alone (π = p)
``aligned``              the aligned model alone (π = q)
``kad``                  both models, one token from π per step; with a rule
                         whose mask depends on p alone (dual, primal, nudging)
                         the aligned model runs only on steps where some row
                         draws from q's share of π (:mod:`kad.draw`: a fraction
                         α of the draws) and catches up on the skipped tokens
``kad-spec``             the aligned model drafts γ tokens (and scores the
                         position after them where a bonus token needs it),
                         the base model scores the γ + 1
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
single-model modes sample the same way.  One ``torch.Generator`` draws every
random number, so its seed fixes the whole generation.
"""

from __future__ import annotations

import numbers
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

import kad_kernels as kk

from .batch import Batch
from .choices import ONE_MODEL_FAMILIES
from .draw import ONE_MODEL, draw_from_p, finish_with_q
from .engines import Engine, ServedEngine
from .engines.arguments import checked_stop_ids
from .engines.base import refuse_other_vocabularies, refuse_served_mixers, refuse_shared_engines
from .engines.turns import Hold
from .errors import ContextLengthWarning, EngineError, keep_partial, partial_of
from .settings import Settings
from .stats import SERVED_COUNTERS, GenerationStats
from .stops import StopStrings


class Streamer(Protocol):
    """What the loop needs of a transformers streamer: ``put`` the new tokens (i64 ``[n]``)."""

    def put(self, value: Tensor) -> None: ...


@dataclass
class Decoded:
    """What :func:`decode` returns: the new tokens of each prompt (a final stop token,
    or the token completing a stop string, included), the statistics of all rows
    together and of each row alone."""

    token_ids: list[list[int]]
    stats: GenerationStats
    row_stats: list[GenerationStats] = field(default_factory=list)


@dataclass
class _Plan:
    """Which engine fills which logits slot of the kernels, with which rule."""

    rule: kk.Rule
    speculative: bool
    target: Engine  # the p slot (verifies in speculative rounds)
    draft: Engine | None  # the q slot (drafts); None: q = p
    reference: Engine | None  # the ref slot of ImplicitReward

    @property
    def engines(self) -> list[Engine]:
        return [e for e in (self.target, self.draft, self.reference) if e is not None]


def _plan(engines: Mapping[str, Engine], settings: Settings) -> _Plan:
    rule = settings.checked_rule()
    family = settings.family
    needed = [family] if family in ONE_MODEL_FAMILIES else ["base", "aligned"]
    missing = [role for role in needed if engines.get(role) is None]
    if missing:
        raise ValueError(f"mode {settings.mode!r} needs the engines {needed}; engines has no {missing[0]!r}")
    if family in ONE_MODEL_FAMILIES:
        return _Plan(rule, False, engines[family], None, None)
    refuse_missing_reference(rule, engines.get("reference") is not None, "; engines has no 'reference'")
    used = {"base": engines["base"], "aligned": engines["aligned"]}
    if rule.needs_ref:
        used["reference"] = engines["reference"]
    refuse_shared_engines(used)
    refuse_served_mixers(used)
    refuse_other_vocabularies(used)
    return _Plan(rule, settings.speculative, used["base"], used["aligned"], used.get("reference"))


def engines_used(engines: Mapping[str, Engine], settings: Settings) -> list[Engine]:
    """The engines a generation with ``settings`` runs (a one-model mode's model; else the
    base and aligned models, and the reference model where the rule reads one): the ones
    whose context lengths bound its rows."""
    return _plan(engines, settings).engines


def draw_device(engines: Mapping[str, Engine], settings: Settings) -> torch.device:
    """The device a generation with ``settings`` draws on, where its ``generator`` must be:
    the base engine's, or in a one-model mode that model's."""
    return _plan(engines, settings).target.device


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def refuse_missing_reference(rule: kk.Rule, has_reference: bool, how: str) -> None:
    """``ValueError`` for a rule that reads a reference model's logits without one; ``how``
    ends the message with the front end's way to give it (each names its own argument)."""
    if rule.needs_ref and not has_reference:
        raise ValueError(f"{type(rule).__name__} needs a reference model (the small unaligned model){how}")


def context_length(engines: Sequence[Engine]) -> tuple[int, str] | None:
    """The smallest context length of ``engines`` and the engine's name; ``None`` if none is bounded."""
    limits = [(e.max_length, e.name) for e in engines if e.max_length is not None]
    return min(limits) if limits else None


def _check_arguments(engines: object, settings: object, generator: object, streamer: object, stop_strings: object) -> None:
    """``TypeError`` naming the argument of :func:`decode` that is not of its type: found
    before any engine runs, not as an AttributeError after a round of forwards."""
    if not isinstance(settings, Settings):
        raise TypeError(f"settings must be a kad.Settings, got {settings!r:.80}")
    if not isinstance(engines, Mapping):
        raise TypeError(f"engines must map the roles 'base', 'aligned' (and 'reference') to engines, got {engines!r:.80}")
    for role, engine in engines.items():
        if engine is not None and not isinstance(engine, Engine):
            hint = ": wrap a transformers model in kad.engines.HFEngine" if isinstance(engine, torch.nn.Module) else ""
            raise TypeError(f"engines[{role!r}] must be a kad.engines.Engine, got {type(engine).__name__}{hint}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (on draw_device) or None, got {generator!r:.80}")
    if streamer is not None and not callable(getattr(streamer, "put", None)):
        raise TypeError(f"streamer must have a put(token_ids) method (a transformers streamer), got {streamer!r:.80}")
    if stop_strings is not None and not isinstance(stop_strings, StopStrings):
        raise TypeError(f"stop_strings must be a kad.stops.StopStrings (the strings and their tokenizer) or None, "
                        f"got {stop_strings!r:.80}")  # fmt: skip


def checked_inputs(
    prompts: Sequence[Sequence[int]], budgets: Sequence[int], vocab_size: int
) -> tuple[list[list[int]], list[int]]:
    """The prompts and budgets as lists of Python ints (numpy arrays and tensors too);
    ``TypeError``/``ValueError`` naming the first prompt that is not a non-empty list of
    token ids in ``[0, vocab_size)``, or budgets that are not one int ``>= 0`` per prompt."""
    rows, counts = _as_list(prompts), _as_list(budgets)
    if not isinstance(rows, list) or not rows:
        raise TypeError(f"prompts must be a non-empty list of token-id lists, got {rows!r:.80}")
    checked: list[list[int]] = []
    for row, given in enumerate(rows):
        prompt = _as_list(given)
        if not isinstance(prompt, list):
            raise TypeError(f"prompt {row} must be a list of token ids, got {type(prompt).__name__}")
        if not prompt:
            raise ValueError(f"prompt {row} has no tokens")
        if not all(type(t) is int for t in prompt):  # numpy ints pass (as ints); bools, floats do not
            for i, token in enumerate(prompt):
                if isinstance(token, bool) or not isinstance(token, numbers.Integral):
                    raise TypeError(f"prompt {row} must be a list of token ids (ints), got {token!r} at position {i}")
            prompt = [int(t) for t in prompt]
        if not (0 <= min(prompt) and max(prompt) < vocab_size):
            i, token = next((i, t) for i, t in enumerate(prompt) if not 0 <= t < vocab_size)
            raise ValueError(f"prompt {row} has token ids outside [0, {vocab_size}): {token} at position {i}")
        checked.append(prompt)
    if not isinstance(counts, list) or len(counts) != len(rows):
        raise ValueError(f"budgets must be one per prompt ({len(rows)}), got {counts!r:.80}")
    for row, budget in enumerate(counts):
        if not is_count(budget):
            raise ValueError(f"the budget of prompt {row} must be an int >= 0, got {budget!r}")
    return checked, [int(b) for b in counts]


def is_count(value: object) -> bool:
    """An int ``>= 0`` (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0


def _as_list(value: object) -> object:
    """A sequence, numpy array or tensor as a list (of lists: a 2-D one); anything else as it is."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist() if value.ndim > 0 else value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return value


def fit_budgets(prompts: Sequence[Sequence[int]], budgets: Sequence[int], engines: Sequence[Engine]) -> list[int]:
    """Each row's budget, cut so that prompt + new tokens fit every engine's context
    length; warns (:class:`ContextLengthWarning`) when it cuts, raises ``ValueError``
    for a prompt that leaves no room at all.  ``budgets``: Python ints (:func:`checked_inputs`)."""
    context = context_length(engines)
    if context is None:
        return list(budgets)
    limit, name = context
    fitted, cut = [], []
    for row, (prompt, budget) in enumerate(zip(prompts, budgets)):
        room = limit - len(prompt)
        if room < 1 and budget > 0:
            raise ValueError(
                f"prompt {row} has {len(prompt)} tokens, which fill the context length {limit} of {name}: "
                "shorten it to leave room for new tokens"
            )
        if budget > room:
            cut.append(row)
        fitted.append(min(budget, room))
    if cut:
        rows = ", ".join(map(str, cut[:8])) + (", ..." if len(cut) > 8 else "")
        warnings.warn(
            f"max_new_tokens runs past the context length {limit} of {name} for prompt(s) {rows}: "
            "those rows stop when they reach it",
            ContextLengthWarning,
            stacklevel=3,
        )
    return fitted


# What leaves decode with the rows emitted before it as its ``partial``: a failing engine,
# Ctrl-C, a device out of memory (a smaller batch may fit).
KEEPS_PARTIAL = (EngineError, KeyboardInterrupt, torch.OutOfMemoryError)


def decode(
    engines: Mapping[str, Engine],
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    settings: Settings,
    *,
    stop_ids: frozenset[int],
    generator: torch.Generator | None,
    streamer: Streamer | None = None,
    stop_strings: StopStrings | None = None,
) -> Decoded:
    """Continue each prompt (token ids, at least one each) with at most its budget of
    new tokens, a row stopping after any token of ``stop_ids`` or after the token that
    completes one of ``stop_strings`` (:mod:`kad.stops`).

    ``engines``: ``"base"`` and ``"aligned"`` (and ``"reference"`` for
    ImplicitReward), sharing one vocabulary; each is reset first, and again at the end
    (its cache emptied: nothing is kept between generations).  ``generator``:
    every random draw, on :func:`draw_device` (the base engine's, or a one-model
    mode's model's); ``None``: torch's default generator of that device.
    ``streamer``: receives each round's new tokens of a single prompt (``put``; the
    caller puts the prompt and calls ``end``).  An :class:`~kad.engines.EngineError`, ``KeyboardInterrupt`` or
    ``torch.OutOfMemoryError`` during the generation (:data:`KEEPS_PARTIAL`) leaves
    with what was emitted before it as its ``partial`` (None if it came before the
    generation began, while the arguments were checked).  Bad prompts or budgets
    raise as :func:`checked_inputs` says, an argument of another type a ``TypeError``
    naming it."""
    result: Decoded | None = None  # read before the engines' reset empties a served engine's counters
    try:
        _check_arguments(engines, settings, generator, streamer, stop_strings)
        stop_ids = checked_stop_ids(stop_ids)  # ids past the vocabulary are allowed: never drawn, they stop nothing
        plan = _plan(engines, settings)
        if generator is not None and not _same_device(generator.device, plan.target.device):
            raise ValueError(f"generator is on {generator.device}, but this generation draws on {plan.target.device}, "
                             f"the device of {plan.target.name} (kad.loop.draw_device)")  # fmt: skip
        prompts, budgets = checked_inputs(prompts, budgets, plan.target.vocab_size)
        if streamer is not None and len(prompts) != 1:
            raise ValueError(f"a streamer takes one prompt, got {len(prompts)}")
        budgets = fit_budgets(prompts, budgets, plan.engines)
        loop = _Loop(plan, stop_ids, stop_strings, settings, generator, streamer, rows=len(prompts))
        hold = Hold(plan.engines)  # an engine shared by front ends runs one generation at a time
        try:
            for rule in (plan.rule, ONE_MODEL):  # loaded on first use (the C++ extension may build): not in the timings
                kk.resolve_backend(rule, loop.device)
            hold.take()
            for engine in plan.engines:
                engine.reset(settings)
                loop.started.append(engine)
            loop.run(prompts, budgets)  # checked_inputs' own lists
            result = loop.decoded()
        # Also before any engine ran (a Ctrl-C while the extension builds or while another
        # generation holds the engines): no rows yet.
        except KEEPS_PARTIAL as error:
            result = loop.decoded()
            keep_partial(error, result)
            raise
        finally:
            try:
                _reset_each(loop.started, result)
            finally:
                hold.ended = True  # gives the engines back: first, where no Ctrl-C lands (kad.engines.turns)
                hold.wake()
        return result
    except KEEPS_PARTIAL as error:  # before the generation began (its arguments were being checked) or after
        if partial_of(error) is None:
            keep_partial(error, result)
        raise


def _reset_each(engines: Sequence[Engine], result: Decoded | None) -> None:
    """Empty the caches of ``engines``, which go with the generation (a large model's KV cache
    would stay until the next): all of them, also when one reset is interrupted (a Ctrl-C
    landing there), which then leaves with ``result``, the generation's, as its partial."""
    interrupted = None
    for engine in engines:
        try:
            engine.reset()
        except KEEPS_PARTIAL as error:
            interrupted = interrupted or error
    if interrupted is not None:
        if partial_of(interrupted) is None:
            keep_partial(interrupted, result)
        raise interrupted


def _common_dtype(p: Tensor, q: Tensor, ref: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The kernels take p, q (and ref) of one dtype: fp32 if the models' dtypes differ."""
    if q.dtype == p.dtype and (ref is None or ref.dtype == p.dtype):
        return p, q, ref
    return p.float(), q.float(), None if ref is None else ref.float()


# How a row of logits is broken, by the code _Loop._watch gives it (0: not broken).
_BROKEN = {1: "-inf for every token", 2: "+inf", 3: "NaN"}


class _Loop:
    """The decoding loop of one :func:`decode` call.

    Rows that finish (stop token or budget) leave the batch and every cache
    after the step that finished them; the others go on."""

    def __init__(
        self,
        plan: _Plan,
        stop_ids: frozenset[int],
        stop_strings: StopStrings | None,
        settings: Settings,
        generator: torch.Generator | None,
        streamer: Streamer | None,
        rows: int,
    ):
        self.plan = plan
        self.stop_ids = stop_ids
        self.stop_strings = stop_strings
        self.temperature = settings.temperature
        self.gamma = settings.gamma
        self.track_alpha = settings.track_alpha
        self.generator = generator
        self.streamer = streamer
        context = context_length(plan.engines)
        self.context_length = None if context is None else context[0]
        self.device = plan.target.device
        self.stats = GenerationStats()
        self.row_stats = [GenerationStats() for _ in range(rows)]
        self.outputs: list[list[int]] = [[] for _ in range(rows)]  # what decoded() reports before run()
        self.prompts: list[list[int]] = []
        self.started: list[Engine] = []  # the engines reset for this generation (decode), whose counters count
        self._broken: list[tuple[Engine, Tensor]] = []  # this round's (engine, code [B] of _BROKEN or 0) per read

    def _logits(self, engine: Engine, batch: Batch, keep: int = 1) -> Tensor:
        logits = engine.advance(batch, keep).to(self.device)
        # An engine may return any floating dtype (a float64 model); the kernels take these.
        return logits if logits.dtype in kk.LOGIT_DTYPES else logits.float()

    def _watch(self, engine: Engine, logits: Tensor, read: Tensor | None = None) -> None:
        """Note the broken rows of ``engine``'s ``logits`` ``[B, V]`` or ``[B, n, V]`` that a
        draw reads (``read``: bool ``[B]`` or ``[B, n]``; default all): NaN or +inf in a row,
        or -inf everywhere.  The kernels run with ``check=False`` (a host sync each) and
        would draw a token from such a row; a row's max is NaN, +inf or -inf exactly
        when it is broken, so one reduction per forward, read with the round's tokens
        (:meth:`_raise_on_broken_logits`), catches an overflowing model."""
        top = logits.amax(-1)
        code = torch.where(top.isnan(), 3, torch.where(top == torch.inf, 2, torch.where(top == -torch.inf, 1, 0)))
        if read is not None:
            code = code * read
        self._broken.append((engine, code.reshape(code.shape[0], -1).amax(1)))

    def decoded(self) -> Decoded:
        """What was emitted so far, and the statistics (served engines' counters included).
        Reads, never adds to, :attr:`stats`: a second call (a Ctrl-C inside the first) counts once."""
        stats = replace(self.stats)
        for engine in self.started:  # one not started yet holds the last generation's counters
            if isinstance(engine, ServedEngine):
                for name, counter in SERVED_COUNTERS.items():
                    setattr(stats, name, getattr(stats, name) + getattr(engine, counter))
        return Decoded(self.outputs, stats, self.row_stats)

    def run(self, prompts: list[list[int]], budgets: list[int]) -> None:
        """New tokens per prompt into :attr:`outputs`; fills :attr:`stats` and :attr:`row_stats`."""
        start = time.perf_counter()
        self.row_stats = [GenerationStats() for _ in prompts]
        outputs: list[list[int]] = [[] for _ in prompts]
        self.outputs = outputs
        self.prompts = prompts
        try:
            active = [row for row, budget in enumerate(budgets) if budget > 0]  # original indices of the batch rows
            left = list(budgets)
            if active:
                # No prefill of its own: an engine's first advance feeds every column it has not
                # seen, so each model reads the prompt in the forward of its first step or round.
                batch = Batch([prompts[row] for row in active], self.device)
            while active:
                if self.plan.speculative:
                    lengths = [len(prompts[row]) + len(outputs[row]) for row in active]
                    tokens, emitted, alpha = self._speculative_round(batch, self._round_gamma(lengths, left, active))
                else:
                    tokens, emitted, alpha = self._step(batch)
                keep, new = self._commit(active, tokens, emitted, alpha, outputs, left)
                self.stats.rounds += 1  # a round committed: one dropped for broken logits is not counted
                now = time.perf_counter() - start
                for row in active:
                    self.row_stats[row].wall_time_s = now
                    self.row_stats[row].rounds += 1
                if self.streamer is not None and new[0]:  # last: Ctrl-C while it prints finds the round counted
                    self.streamer.put(torch.tensor(new[0]))
                if 0 < len(keep) < len(active):  # finished rows leave the batch (nothing to do once all have)
                    rows = torch.tensor(keep, dtype=torch.long, device=self.device)
                    batch.select(rows)
                    for engine in self.plan.engines:
                        engine.select(rows)
                active = [active[i] for i in keep]
        finally:
            self.stats.wall_time_s = time.perf_counter() - start

    def _round_gamma(self, lengths: list[int], left: list[int], active: list[int]) -> int:
        """Drafts of the next round: at most γ, no more than the most tokens any row has
        left can use (the round's last token is not a draft), and no more than fit the
        context of the longest row: a round feeds each row's ``lengths`` tokens (the
        pending one included) and its drafts.  At least 1: :func:`fit_budgets` left
        each active row room for its remaining tokens, so for one draft."""
        gamma = min(self.gamma, max(left[row] for row in active) - 1)
        if self.context_length is not None:
            gamma = min(gamma, self.context_length - max(lengths))
        return max(1, gamma)

    def _alpha(self, p: Tensor, q: Tensor) -> Tensor | None:
        """α ``[N]`` of the mixtures of logits ``[N, V]``, if tracked.  One model
        alone defers nothing; ImplicitReward has α = 0 by definition (so it needs no ref)."""
        if not self.track_alpha:
            return None
        if self.plan.draft is None or self.plan.rule.needs_ref:
            return torch.zeros(p.shape[0], device=p.device, dtype=torch.float32)
        return kk.mixture(p, q, self.plan.rule, self.temperature, check=False).alpha

    def _step(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        """One token per row: ``(tokens [B, 1], emitted [B] (ones), α [B, 1] or None)``."""
        plan = self.plan
        p = self._logits(plan.target, batch)[:, -1]
        self._watch(plan.target, p)
        alpha: Tensor | None
        if plan.draft is not None and plan.rule.mask_from_p:
            greedy = self.temperature == 0
            uniforms = None if greedy else torch.rand(p.shape[0], generator=self.generator, device=self.device,
                                                      dtype=torch.float32)  # fmt: skip
            tokens, alpha = self._draw_needing_q_rarely(batch, p, uniforms)
            alpha = alpha if self.track_alpha else None
        else:
            q = self._logits(plan.draft, batch)[:, -1] if plan.draft is not None else p
            ref = self._logits(plan.reference, batch)[:, -1] if plan.reference is not None else None
            if plan.draft is not None:
                self._watch(plan.draft, q)
            if plan.reference is not None and ref is not None:
                self._watch(plan.reference, ref)
            p, q, ref = _common_dtype(p, q, ref)
            tokens = kk.sample(p, q, plan.rule, self.temperature, ref_logits=ref, generator=self.generator, check=False)
            alpha = self._alpha(p, q)
        batch.append(tokens)
        return tokens[:, None], torch.ones_like(tokens), None if alpha is None else alpha[:, None]

    def _draw_needing_q_rarely(
        self, batch: Batch, p: Tensor, uniforms: Tensor | None, rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(tokens, α)`` ``[N]`` drawn from π after the last column of the batch rows
        ``rows`` (all if None), whose p logits are ``p`` ``[N, V]``, with ``uniforms``
        ``[N]`` (None: greedy); the aligned model runs (over the whole batch) only if
        some row needs q (:mod:`kad.draw`)."""
        plan, draft = self.plan, self.plan.draft
        assert draft is not None  # q = p would need no draw of its own
        draw = draw_from_p(p, plan.rule, self.temperature, uniforms)
        undecided = draw.needs_q.nonzero()[:, 0]
        tokens = draw.tokens
        if undecided.numel():
            q = self._logits(draft, batch)[:, -1]
            read = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
            self._watch(draft, q, read.index_fill(0, undecided if rows is None else rows[undecided], True))
            q = q if rows is None else q[rows]
            p_u, q_u, _ = _common_dtype(p[undecided], q[undecided])
            tokens = tokens.index_put((undecided,), finish_with_q(draw, undecided, p_u, q_u, plan.rule, self.temperature))
        return tokens, draw.alpha

    def _speculative_round(self, batch: Batch, gamma: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """γ drafts from q, verified against π: ``(tokens [B, γ+1] (−1 padded),
        emitted [B], α [B, γ+1] or None)``.

        π at the bonus position needs q there, one more aligned forward (over the
        last draft); only rows that accept every draft draw the bonus, so the
        drafts are verified first with a stand-in q at that position (it affects
        nothing else).  The uniforms are drawn here as ``verify`` would draw them;
        a row that accepted every draft used none of its draw uniform, which then
        draws its bonus: by :mod:`kad.draw` where the mask depends on p alone (q
        only for rows in q's branch), otherwise from π with the real q."""
        plan, draft = self.plan, self.plan.draft
        assert draft is not None  # a speculative mode drafts with its q model (_plan)
        first = batch.width  # the first draft's column; the pending token is at first - 1
        q_logits = []
        for _ in range(gamma):
            q_i = self._logits(draft, batch)[:, -1]
            q_logits.append(q_i)
            batch.append(kk.sample(q_i, q_i, ONE_MODEL, self.temperature, generator=self.generator, check=False))
        q = torch.stack(q_logits + [q_logits[-1]], dim=1)  # [B, γ+1, V]; the last position is a stand-in
        p = self._logits(plan.target, batch, keep=gamma + 1)
        ref = self._logits(plan.reference, batch, keep=gamma + 1) if plan.reference is not None else None
        p, q, ref = _common_dtype(p, q, ref)
        rows = p.shape[0]
        coins = torch.rand(rows, gamma + 1, generator=self.generator, device=self.device, dtype=torch.float32)
        drafts = batch.tokens[:, first:]
        verified = kk.verify(
            p, q, drafts, plan.rule, self.temperature, ref_logits=ref, uniforms=(coins[:, :gamma], coins[:, gamma]),
            check=False,
        )  # fmt: skip
        tokens, accepted = verified.tokens, verified.num_accepted
        # Verify reads p (and ref) and q up to each row's first rejected draft (or the bonus).
        read = torch.arange(gamma + 1, device=self.device) <= accepted[:, None]  # [B, γ+1]
        self._watch(plan.target, p, read)
        self._watch(draft, q[:, :gamma], read[:, :gamma])
        if ref is not None and plan.reference is not None:
            self._watch(plan.reference, ref, read)
        all_accepted = (accepted == gamma).nonzero()[:, 0]
        if all_accepted.numel() and plan.rule.mask_from_p:
            uniforms = None if self.temperature == 0 else coins[all_accepted, gamma]
            bonus, _ = self._draw_needing_q_rarely(batch, p[all_accepted, -1], uniforms, all_accepted)
            tokens = tokens.index_put((all_accepted, torch.full_like(all_accepted, gamma)), bonus)
        elif all_accepted.numel():
            q[:, -1] = self._logits(draft, batch)[:, -1].to(q.dtype)
            self._watch(draft, q[:, -1], torch.zeros_like(accepted, dtype=torch.bool).index_fill(0, all_accepted, True))
            bonus = kk.sample(
                p[all_accepted, -1], q[all_accepted, -1], plan.rule, self.temperature,
                ref_logits=None if ref is None else ref[all_accepted, -1], uniforms=coins[all_accepted, gamma],
                check=False,
            )  # fmt: skip
            tokens = tokens.index_put((all_accepted, torch.full_like(all_accepted, gamma)), bonus)

        # Mask each row's rejected drafts; crop the columns no row accepted.
        batch.reject(first, accepted)
        width = first + int(accepted.max())
        batch.truncate(width)
        for engine in plan.engines:
            engine.truncate(width)
        batch.append(tokens.gather(1, accepted[:, None])[:, 0])  # correction or bonus: the new pending token

        # α at the bonus position is kept only for rows that drew the bonus, with the real q
        # (or a stand-in where the mask, hence α, depends on p alone).
        alpha = self._alpha(p.flatten(0, 1), q.flatten(0, 1))
        return tokens, accepted + 1, None if alpha is None else alpha.view(rows, gamma + 1)

    def _raise_on_broken_logits(self, active: list[int], outputs: list[list[int]]) -> None:
        """:class:`EngineError` naming the model and the prompt if a draw of this round read
        a broken row (:meth:`_watch`): its token would be arbitrary (greedy picks token
        0), so none of the round's tokens are kept."""
        watched, self._broken = self._broken, []
        if not watched:
            return
        codes = torch.stack([code for _, code in watched]).tolist()  # [reads, B]: one host sync a round
        for (engine, _), row_codes in zip(watched, codes):
            broken = next((i for i, code in enumerate(row_codes) if code), None)
            if broken is None:
                continue
            what = _BROKEN[row_codes[broken]]
            done = len(outputs[active[broken]])
            overflow = " (float16 overflows where bfloat16 and float32 do not)" if (
                getattr(engine, "dtype", None) == torch.float16) else ""  # fmt: skip
            raise EngineError(
                f"{engine.name} gave logits with {what} for prompt {active[broken]} after {done} new token"
                f"{'' if done == 1 else 's'}: the model overflowed{overflow} or is broken"
            )

    def _commit(
        self,
        active: list[int],
        tokens: Tensor,
        emitted: Tensor,
        alpha: Tensor | None,
        outputs: list[list[int]],
        left: list[int],
    ) -> tuple[list[int], list[list[int]]]:
        """Append each row's emitted tokens to its output, cut after a stop token, after the
        token completing a stop string, or at its budget; update the statistics (a
        speculative round's drafts count whole, before the cut).  Returns the batch rows
        still going and each row's new tokens."""
        tokens_h, emitted_h = tokens.tolist(), emitted.tolist()
        self._raise_on_broken_logits(active, outputs)
        alpha_h = None if alpha is None else alpha.tolist()
        gamma = tokens.shape[1] - 1 if self.plan.speculative else 0
        keep, appended = [], []
        news = [tokens_h[i][: min(emitted_h[i], left[row])] for i, row in enumerate(active)]
        string_ends: list[int | None] = [None] * len(active)
        if self.stop_strings is not None:
            string_ends = self.stop_strings.first_ends(
                [self.prompts[row] for row in active], [outputs[row] for row in active], news
            )
        for i, row in enumerate(active):
            new = news[i]
            stop = next((j for j, t in enumerate(new) if t in self.stop_ids), None)
            string_end = string_ends[i]
            if string_end is not None and (stop is None or string_end < stop):
                stop = string_end
            if stop is not None:
                new = new[: stop + 1]
            outputs[row].extend(new)
            appended.append(new)
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
            if stop is None and left[row] > 0:
                keep.append(i)
        return keep, appended
