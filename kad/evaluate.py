"""``kad eval``: one decoding configuration on one task, graded and saved as it goes.

A *run* is a task decoded with one :class:`RunConfig`.  Its result file (JSON)
holds the configuration, one record per item (generation, extracted answer,
correctness, per-item :class:`~kad.stats.GenerationStats`) and the wall time of
each batch; it is rewritten atomically after every batch, so an interrupted
run loses at most the batch in flight and ``resume=True`` carries on from the
last saved item.  Batch ``k`` (items ``first … first + batch_size``) draws with
the seed ``seed · 2³² + first``: a resumed run makes the same draws as an
uninterrupted one.

The result file's format and checks are :mod:`kad.results`; :func:`~kad.report.summarize`
(:mod:`kad.report`) turns a result into accuracy (with a Wilson 95 % interval), tokens/s,
acceptance rate, mean accepted length and mean α.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

import kad_kernels as kk

from .choices import Mode
from .decoding import Decoder, build_rule
from .engines import Engine, ServedEngine
from .errors import ContextLengthWarning
from .loop import context_length, engines_used, fit_budgets
from .report import Summary, summarize
from .results import FORMAT, RunConfig, check_writable, saved_result, write_atomically
from .settings import Settings
from .stats import SERVED_COUNTERS, GenerationStats
from .tasks import TASKS, Item

# Re-exported, as kad.evaluate held them before kad.results and kad.report did (callers of
# evaluate() catch ResultWriteError here); kad's own modules import them from those homes.
from .report import distinguishing_fields, number, run_label, summary_table, wilson_interval  # noqa: F401
from .results import ResultWriteError, load_result  # noqa: F401



# The fields of a RunConfig known only once the models are loaded.
MODEL_FIELDS = ("base", "aligned", "reference", "dtype", "device")


def with_models(config: RunConfig, decoder: Decoder) -> RunConfig:
    """``config`` with its :data:`MODEL_FIELDS` read from ``decoder``'s engines.  A served
    model is recorded by its name on the server, not its URL: a run resumes against the
    same model served elsewhere (a cluster job on another node); each batch records
    where it was served."""
    engines = decoder.engines
    return dataclasses.replace(
        config,
        base=_model_name(engines["base"]),
        aligned=_model_name(engines["aligned"]),
        reference=_model_name(engines["reference"]) if "reference" in engines else None,
        dtype=_dtypes(engines),
        device=str(decoder.device),
    )


def _dtypes(engines: dict[str, Engine]) -> str:
    """The dtype of the engines that have one (not llama.cpp's or a server's; ``""`` if
    none has), ``"bfloat16"``; where they differ (``--dtype auto`` keeps each checkpoint's),
    each model's: ``"base bfloat16, aligned float32"``."""
    dtypes = {role: str(engine.dtype).removeprefix("torch.") for role, engine in engines.items() if hasattr(engine, "dtype")}
    if len(set(dtypes.values())) <= 1:
        return next(iter(dtypes.values()), "")
    return ", ".join(f"{role} {dtype}" for role, dtype in dtypes.items())


def _model_name(engine: Engine) -> str:
    # RemoteEngine.model is the name on the server (an engine without one is named in full).
    model = getattr(engine, "model", None)
    if isinstance(engine, ServedEngine) and isinstance(model, str):
        return f"{model} (served)"
    return model_name(engine.name)


def _mode(config: RunConfig) -> Mode:
    # A str in RunConfig (kad.results reads its fields' types at run time), one of --mode's choices.
    return cast("Mode", config.mode)


def model_name(name: str) -> str:
    """A model or tokenizer as a result file records it: a local one by its absolute path
    ("m" run from another directory is another model, and "./m/" the same one), a hub id as it is."""
    return os.path.abspath(name) if os.path.exists(name) else name


def check_resumable(saved: dict, config: RunConfig, path: Path, *, skip: tuple[str, ...] = ()) -> None:
    """``ValueError`` naming what differs if ``saved`` (a result) was made with another
    configuration than ``config``; the fields in ``skip`` are not compared (before the
    models load, :data:`MODEL_FIELDS`)."""
    ours = asdict(config)
    if not _reads_reference(config):  # files of earlier versions recorded a reference the rule does not read
        skip = (*skip, "reference")
    theirs = _as_current(saved["config"], ours, skip)
    keys = [*ours, *(k for k in theirs if k not in ours)]  # a field this version lacks differs too
    changed = ", ".join(f"{k}: {theirs.get(k)!r} → {ours.get(k)!r}" for k in keys
                        if k not in skip and theirs.get(k) != ours.get(k))  # fmt: skip
    if changed:
        raise ValueError(f"cannot resume {path}: its configuration differs ({changed})")


def _as_current(theirs: Mapping[str, object], ours: dict, skip: tuple[str, ...]) -> dict:
    """``theirs`` (a saved config) as this version would record it, for comparing with ``ours``.
    Files of earlier versions: a served base was named "NAME at URL" (now "NAME (served)",
    wherever it is served), a local model by the path as given (now absolute: a relative
    one is read from the directory the run resumes in), and the dtype was the base model's
    alone ("" for a served one); ``skip`` as :func:`check_resumable`'s."""
    theirs = dict(theirs)
    base = theirs.get("base")
    if isinstance(base, str) and ours["base"].endswith(" (served)"):
        if base.startswith(ours["base"].removesuffix(" (served)") + " at "):
            theirs["base"] = ours["base"]
    for role in ("base", "aligned", "reference"):
        name = theirs.get(role)
        if isinstance(name, str) and name and not os.path.isabs(name) and os.path.abspath(name) == ours.get(role):
            theirs[role] = ours[role]
    if "dtype" not in skip and theirs.get("dtype") == _base_dtype(ours) != ours["dtype"]:
        theirs["dtype"] = ours["dtype"]
    return theirs


def _base_dtype(config: dict) -> str:
    """What a file of an earlier version recorded as ``config``'s dtype: the base model's."""
    if config["base"].endswith(" (served)"):
        return ""
    return config["dtype"].split(", ")[0].removeprefix("base ")


def _reads_reference(config: RunConfig) -> bool:
    rule = build_rule(config.mode, config.rule, config.lam)
    return rule is not None and rule.needs_ref


def _start(config: RunConfig, path: Path, resume: bool) -> dict:
    """The result to continue: the saved one when resuming, else a new one."""
    result = saved_result(path, resume)
    if result is not None:
        check_resumable(result, config, path)
        return result
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"format": FORMAT, "config": asdict(config), "created": now, "batches": [], "items": []}


def _item_record(
    index: int, item: Item, text: str, extracted: str | None, correct: bool, stats: GenerationStats, context_cut: bool
) -> dict:
    """``context_cut``: the models' context length left the answer fewer than ``max_new_tokens``."""
    return {
        "index": index,
        "id": item.id,
        "question": item.question,
        "choices": list(item.choices),
        "answer": item.answer,
        "generation": text,
        "extracted": extracted,
        "correct": correct,
        "context_cut": context_cut,
        "stats": asdict(stats),
    }


def _drop_short_last_batch(result: dict, batch_size: int) -> None:
    """Forget the last batch if it holds fewer than ``batch_size`` items (a run extended past
    its old limit): redone whole, with its own seed, it draws what an uninterrupted run would."""
    batches = result["batches"]
    if batches and batches[-1]["size"] < batch_size:
        del result["items"][batches[-1]["first"] :]
        batches.pop()


def _context_cuts(
    decoder: Decoder, config: RunConfig, rule: kk.Rule | None, items: Sequence[Item], prompts: dict[int, list[int]]
) -> set[int]:
    """The items of ``prompts`` (item index -> its tokens) whose answers the context length of
    the models the run uses cuts short of ``max_new_tokens`` (:func:`kad.loop.fit_budgets`,
    the loop's own cut), said once in one warning naming them (the loop would say it per
    batch, by row).
    ``ValueError`` naming the first item whose prompt fills the context, before any of them
    runs: met inside a batch, it would stop the run there for good."""
    settings = Settings(_mode(config), rule, config.gamma or 1, config.temperature)
    engines = engines_used(decoder.engines, settings)
    context = context_length(engines)
    if context is None or config.max_new_tokens == 0:
        return set()
    limit, name = context
    for index, prompt in prompts.items():
        if len(prompt) >= limit:
            raise ValueError(
                f"{config.task} item {index} (id {items[index].id!r}) has a prompt of {len(prompt)} tokens, which "
                f"fill the context length {limit} of {name} and leave no room for an answer: use models with a longer "
                f"context" + (f", or --limit {index} to stop before it" if index else "")
            )
    with warnings.catch_warnings():  # said below, by item
        warnings.simplefilter("ignore", ContextLengthWarning)
        budgets = fit_budgets(list(prompts.values()), [config.max_new_tokens] * len(prompts), engines)
    cut = [index for index, budget in zip(prompts, budgets) if budget < config.max_new_tokens]
    if cut:
        shown = ", ".join(map(str, cut[:8])) + (f", ... ({len(cut)} items)" if len(cut) > 8 else "")
        warnings.warn(
            f"max_new_tokens {config.max_new_tokens} runs past the context length {limit} of {name} for "
            f"{config.task} item(s) {shown}: their answers stop there (\"context_cut\" in the result file)",
            ContextLengthWarning,
            stacklevel=3,
        )
    return set(cut)


def check_seed(seed: int) -> None:
    """A run's seed is 32 bits: each batch draws with :func:`batch_seed`, which needs the other 32."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32) (a batch seeds with seed * 2**32 + its first), got {seed!r}")


def batch_seed(seed: int, first: int) -> int:
    """The seed of the batch starting at item ``first``: one per batch of a run, so a resumed run
    draws what an uninterrupted one would."""
    return seed * 2**32 + first


def evaluate(
    decoder: Decoder,
    config: RunConfig,
    path: str | os.PathLike,
    *,
    limit: int | None = None,
    resume: bool = False,
    on_batch: Callable[[Summary, int], None] | None = None,
) -> dict:
    """Run ``config`` on the first ``limit`` items of its task (all if ``None``), saving
    to ``path`` after every batch; returns the result.  ``resume``: continue the
    file at ``path`` (same configuration required) instead of refusing to touch
    it.  ``on_batch(summary, new_items)`` is called after each saved batch with the
    :class:`Summary` of the items so far."""
    check_seed(config.seed)
    task = TASKS[config.task]
    rule = build_rule(config.mode, config.rule, config.lam)
    path = Path(path)
    check_writable(Path(os.path.realpath(path)).parent)  # a link's target's folder: written through the link
    result = _start(config, path, resume)
    items = task.load(limit, seed=config.seed)
    if len(items) <= len(result["items"]):  # nothing more to run: the file as it is
        return result
    _drop_short_last_batch(result, config.batch_size)
    prompts = {  # tokenized once, for the context check and the generation
        index: decoder.encode(task.user_message(items[index]), chat=True, system_prompt=config.system_prompt or None)
        for index in range(len(result["items"]), len(items))
    }
    cut = _context_cuts(decoder, config, rule, items, prompts)
    result["limit"] = limit
    for first in range(len(result["items"]), len(items), config.batch_size):
        batch = items[first : first + config.batch_size]
        with warnings.catch_warnings():  # the cuts, said above by item
            warnings.simplefilter("ignore", ContextLengthWarning)
            out = decoder.generate(
                [prompts[index] for index in range(first, first + len(batch))],
                _mode(config),
                rule,
                gamma=config.gamma or 1,
                temperature=config.temperature,
                max_new_tokens=config.max_new_tokens,
                seed=batch_seed(config.seed, first),
                chat=True,
                system_prompt=config.system_prompt or None,
            )
        for index, (item, text, stats) in enumerate(zip(batch, out.texts, out.row_stats), start=first):
            extracted = task.extract(text, strict=config.strict)
            correct = task.is_correct(extracted, item, strict=config.strict)
            result["items"].append(_item_record(index, item, text, extracted, correct, stats, index in cut))
        # A served model's counters are the batch's (one request serves every row), not the items'.
        served = {name: getattr(out.stats, name) for name in SERVED_COUNTERS}
        if isinstance(base := decoder.engines["base"], ServedEngine) and hasattr(base, "url"):
            served["served_at"] = base.url
        result["batches"].append({"first": first, "size": len(batch), "wall_time_s": out.stats.wall_time_s, **served})
        result["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        summary = summarize(result)
        result["summary"] = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(summary).items()}
        write_atomically(path, result)
        if on_batch is not None:
            on_batch(summary, len(batch))
    return result
