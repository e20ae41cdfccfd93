"""``kad eval``: one decoding configuration on one task, graded and saved as it goes.

A *run* is a task decoded with one :class:`RunConfig`.  Its result file (JSON)
holds the configuration, one record per item (generation, extracted answer,
correctness, per-item :class:`~kad.stats.GenerationStats`) and the wall time of
each batch; it is rewritten atomically after every batch, so an interrupted
run loses at most the batch in flight and ``resume=True`` carries on from the
last saved item.  Batch ``k`` (items ``first … first + batch_size``) draws with
the seed ``seed · 2³² + first``: a resumed run makes the same draws as an
uninterrupted one.

:func:`summarize` turns a result file into accuracy (with a Wilson 95 %
interval), tokens/s (new tokens over the batches' wall time), acceptance rate,
mean accepted length and mean α.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import reprlib
import stat
import tempfile
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import kad_kernels as kk

from .decoding import Decoder, build_rule
from .engines import Engine, ServedEngine
from .loop import ContextLengthWarning, context_length, engines_used, fit_budgets
from .settings import Settings
from .stats import GenerationStats
from .tasks import TASKS, Item

FORMAT = "kad-eval/1"
_Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's generations (the item count aside: a run may
    be extended with a larger limit).  ``rule``/``lam`` are ``None`` for modes
    without a rule parameter, ``gamma`` for modes that do not speculate;
    ``tokenizer`` names the aligned model's tokenizer when it was given apart from
    the model (``kad eval --tokenizer`` with an aligned GGUF), as :func:`model_name`;
    ``n_ctx`` the llama.cpp engines' positions per row when given (``--n-ctx``: a row
    stops there)."""

    task: str
    mode: str
    rule: str | None
    lam: float | None
    gamma: int | None
    temperature: float
    max_new_tokens: int
    seed: int
    batch_size: int
    strict: bool
    system_prompt: str
    base: str
    aligned: str
    reference: str | None
    dtype: str
    device: str
    tokenizer: str | None = None  # last, with a default: files and callers from before it
    n_ctx: int | None = None

    def __post_init__(self) -> None:
        if self.lam is not None and not math.isfinite(self.lam):  # JSON has no infinity
            raise ValueError(f"lam must be finite: the result file is JSON, which has no {self.lam} "
                             "(a primal budget of 1 already defers everything)")  # fmt: skip

    def stem(self) -> str:
        """A file name for the run: task, mode, rule and parameter, γ, seed."""
        parts = [self.task, self.mode]
        if self.rule is not None:
            parts.append(self.rule if self.lam is None else f"{self.rule}{self.lam:g}")
        if self.gamma is not None:
            parts.append(f"g{self.gamma}")
        parts.append(f"s{self.seed}")
        return "-".join(parts)


@dataclass(frozen=True)
class Summary:
    """A run's scores; rates are NaN where there is nothing to count."""

    items: int
    correct: int
    accuracy: float
    ci_low: float  # Wilson 95 % interval of the accuracy
    ci_high: float
    new_tokens: int
    tokens_per_s: float
    acceptance_rate: float
    mean_accepted_length: float
    mean_alpha: float
    deferral_fraction: float


def wilson_interval(successes: int, trials: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sensible at 0 % and 100 % and for
    small samples, unlike the normal approximation); ``(nan, nan)`` for no trials."""
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    center = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    # Exact ends at 0 % and 100 % (rounding left 5.6e-17 and 0.9999999999999999).
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == trials else min(1.0, center + half)
    return low, high


def summarize(result: dict) -> Summary:
    """The :class:`Summary` of a result (as :func:`evaluate` returns or writes it)."""
    items = result["items"]
    total = GenerationStats()
    for item in items:
        for name, value in item["stats"].items():
            if name not in ("wall_time_s", "rounds"):  # per-row times overlap within a batch
                setattr(total, name, getattr(total, name) + value)
    total.wall_time_s = sum(b["wall_time_s"] for b in result["batches"])
    correct = sum(item["correct"] for item in items)
    low, high = wilson_interval(correct, len(items))
    return Summary(
        items=len(items),
        correct=correct,
        accuracy=correct / len(items) if items else math.nan,
        ci_low=low,
        ci_high=high,
        new_tokens=total.new_tokens,
        tokens_per_s=total.tokens_per_s,
        acceptance_rate=total.acceptance_rate,
        mean_accepted_length=total.mean_accepted_length,
        mean_alpha=total.mean_alpha,
        deferral_fraction=total.deferral_fraction,
    )


def run_label(config: dict, without: str | None = None) -> str:
    """``"kad-spec dual 0.4 γ=4"``: mode, rule and parameter, γ — leaving out the
    field ``without`` (``"lam"`` or ``"gamma"``, the x axis of a plot)."""
    label = config["mode"]
    if config["rule"] is not None:
        if config["rule"] != config["mode"].removesuffix("-spec"):  # "nudging 0.4", not "nudging nudging 0.4"
            label += f" {config['rule']}"
        label += f" {config['lam']:g}" if without != "lam" and config["lam"] is not None else ""
    if config["gamma"] is not None and without != "gamma":
        label += f" γ={config['gamma']}"
    return label


def distinguishing_fields(configs: Sequence[Mapping[str, object]], labels: Sequence[str]) -> list[str]:
    """For each config, ``", field=value"`` for each field in which the configs of the same
    label differ (seed, grading, models, batch size, ...: what the label alone would hide);
    ``""`` for a label no other config has.  Files of other versions may lack a field: it
    reads as None there."""
    suffixes = []
    for config, label in zip(configs, labels):
        twins = [c for c, other in zip(configs, labels) if other == label]
        fields = dict.fromkeys(f for c in twins for f in c)
        differ = [f for f in fields if len({repr(c.get(f)) for c in twins}) > 1]
        suffixes.append("".join(f", {f}={_one_line(config.get(f))}" for f in differ))
    return suffixes


def _one_line(value: object, width: int = 40) -> str:
    """A config value on one short line: text with line breaks (a system prompt) or none
    as its repr, anything longer than ``width`` cut with "…"."""
    text = repr(value) if isinstance(value, str) and (not value or "\n" in value) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def number(x: float, spec: str) -> str:
    """``x`` formatted with ``spec``, or "–" for a rate with nothing to count (NaN)."""
    return "–" if math.isnan(x) else format(x, spec)


def summary_table(results: Sequence[dict]) -> str:
    """A Markdown table with one line per result; runs whose label is the same are told
    apart by the fields in which they differ (:func:`distinguishing_fields`)."""
    lines = [
        "| task | run | n | accuracy (95 % CI) | tok/s | acceptance | accepted length | mean α |",
        "|---|---|---|---|---|---|---|---|",
    ]
    configs = [result["config"] for result in results]
    runs = [run_label(config) for config in configs]
    suffixes = distinguishing_fields(configs, [f"{c['task']}: {run}" for c, run in zip(configs, runs)])
    for result, run, suffix in zip(results, runs, suffixes):
        s = summarize(result)
        accuracy = f"{number(s.accuracy, '.1%')} ({number(s.ci_low, '.0%')}–{number(s.ci_high, '.0%')})" if s.items else "–"
        lines.append(
            f"| {result['config']['task']} | {run}{suffix.replace('|', '/')} | {s.items} | {accuracy} "
            f"| {number(s.tokens_per_s, '.2f')} | {number(s.acceptance_rate, '.3f')} "
            f"| {number(s.mean_accepted_length, '.2f')} | {number(s.mean_alpha, '.3f')} |"
        )
    return "\n".join(lines)


def load_result(path: str | os.PathLike) -> dict:
    """A result file, checked to be one (``ValueError`` naming ``path`` otherwise)."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a kad eval result file: not JSON ({error})") from None
    if not isinstance(result, dict) or result.get("format") != FORMAT:
        raise ValueError(f"{path} is not a kad eval result file (format {FORMAT})")
    problem = _structure_problem(result)
    if problem is not None:
        raise ValueError(f"{path} is not a kad eval result file: {problem}")
    for name, default in _CONFIG_DEFAULTS.items():  # a file from before the field: what it meant then
        result["config"].setdefault(name, default)
    return result


# The fields the readers of a result file use, by the type they need.
_TOP_FIELDS = {"config": dict, "batches": list, "items": list}
_CONFIG_FIELDS = typing.get_type_hints(RunConfig)
# Fields added since the format began, with the value files written before them mean.
_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
_BATCH_FIELDS = {"first": int, "size": int, "wall_time_s": float}
_ITEM_FIELDS = {"correct": bool, "stats": dict}
_STAT_FIELDS = typing.get_type_hints(GenerationStats)
_SERVED_COUNTERS = ("requests", "server_wait_s", "partial_positions", "inexact_positions")
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", type(None): "null"}  # fmt: skip


def _records(result: dict):
    """``(where, record, fields)`` of a result, outside in: consumed lazily, a record is
    reached only once the one holding it has been found to be an object."""
    yield "", result, _TOP_FIELDS
    yield "config", result["config"], _CONFIG_FIELDS
    for i, batch in enumerate(result["batches"]):
        yield f"batches[{i}]", batch, _BATCH_FIELDS
    for i, item in enumerate(result["items"]):
        yield f"items[{i}]", item, _ITEM_FIELDS
        yield f"items[{i}].stats", item["stats"], _STAT_FIELDS


def _structure_problem(result: dict) -> str | None:
    """The first thing in ``result`` that a reader could not use, or ``None``."""
    for where, record, fields in _records(result):
        if not isinstance(record, dict):
            return f"{where} is {_shown(record)}, not an object"
        # Statistics added since a file was written count as 0; one kad does not know is refused.
        optional = fields is _STAT_FIELDS
        unknown = sorted(record.keys() - fields.keys()) if optional else []
        if unknown:
            return f"{where}.{unknown[0]} is not a statistic of kad"
        for name, kind in fields.items():
            at = f"{where}.{name}" if where else name
            if name not in record:
                if optional or (fields is _CONFIG_FIELDS and name in _CONFIG_DEFAULTS):
                    continue
                return f"{at} is missing"
            kinds = typing.get_args(kind) or (kind,)
            if not _fits(record[name], kinds):
                return f"{at} is {_shown(record[name])}, not {' or '.join(_JSON_NAMES[k] for k in kinds)}"
    return _coverage_problem(result)


def _coverage_problem(result: dict) -> str | None:
    """Batches that do not hold the items one after another, in order, all of them: a
    resumed run starts after the last item with the seed of a batch starting there, and
    tok/s divides the items' tokens by the batches' time."""
    covered = 0
    for i, batch in enumerate(result["batches"]):
        if batch["size"] < 1:
            return f"batches[{i}].size is {batch['size']}: a batch holds at least one item"
        if batch["first"] != covered:
            return f"batches[{i}] holds {batch['size']} items from item {batch['first']}, not from item {covered} on"
        covered += batch["size"]
    if covered != len(result["items"]):
        return f"its batches hold {covered} items, but it has {len(result['items'])}"
    for i, item in enumerate(result["items"]):
        if item.get("index", i) != i:
            return f"items[{i}].index is {_shown(item['index'])}"
    return None


def _shown(value: object) -> str:
    return "null" if value is None else reprlib.repr(value)


def _fits(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) or bool in kinds:  # to Python a bool is an int, to JSON not a number
        return isinstance(value, bool) and bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))  # 1 will do for 1.0


def check_writable(directory: Path) -> None:
    """Create ``directory`` and write a file there (``OSError`` otherwise), so that a result
    that cannot be saved is refused before any decoding, not after the first batch."""
    if directory.exists() and not directory.is_dir():  # mkdir would say only "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp").close()


class ResultWriteError(OSError):
    """A batch's result could not be saved (a full disk, a quota): the file holds the batches before it."""


def _write_atomically(path: Path, result: dict) -> None:
    """Replace ``path`` in one step, so that an interruption or a failed write leaves the old
    file and no temporary one (:class:`ResultWriteError` naming ``path``).  The file keeps the
    mode of the one it replaces, else gets the umask's (a temporary file is made 0600)."""
    given, path = path, Path(os.path.realpath(path))  # a link's target, not the link, gets the new file
    mode = _file_mode(path)
    temporary = None
    try:
        # The folder again: another run into a new folder that saved nothing removes it (kad eval).
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False, indent=1)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        if isinstance(error, OSError):
            target = f" (the link's target {path})" if path != Path(os.path.abspath(given)) else ""
            raise ResultWriteError(f"cannot save the result to {given}{target}: {error.strerror or error}") from error
        raise


def _file_mode(path: Path) -> int:
    """The permission bits of ``path``, or of a new file under the process's umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask sets it: put it back at once
        os.umask(umask)
        return 0o666 & ~umask


def saved_result(path: Path, resume: bool) -> dict | None:
    """The result file at ``path`` when resuming it; ``None`` if there is none; an existing
    file without ``resume`` is refused (``FileExistsError``), a directory too (``ValueError``)."""
    if not path.exists():
        return None
    if path.is_dir():  # --resume could not continue it either
        raise ValueError(f"{path} is a directory: name the result file (--output {path / 'run.json'}), or use --out-dir")
    if not resume:
        raise FileExistsError(f"{path} exists: pass --resume to continue it, or choose another --output")
    return load_result(path)


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


def model_name(name: str) -> str:
    """A model or tokenizer as a result file records it: a local one by its absolute path
    ("m" run from another directory is another model, and "./m/" the same one), a hub id as it is."""
    return os.path.abspath(name) if os.path.exists(name) else name


def check_resumable(saved: dict, config: RunConfig, path: Path, *, skip: tuple[str, ...] = ()) -> None:
    """``ValueError`` naming what differs if ``saved`` (a result) was made with another
    configuration than ``config``; the fields in ``skip`` are not compared (before the
    models load, :data:`MODEL_FIELDS`)."""
    theirs = dict(saved["config"])
    ours = asdict(config)
    # Files of earlier versions: a served base was named "NAME at URL" (now "NAME (served)",
    # wherever it is served), a local model by the path as given (now absolute: a relative
    # one is read from the directory the run resumes in), a reference the rule does not
    # read was recorded, and the dtype was the base model's alone ("" for a served one).
    if isinstance(theirs.get("base"), str) and ours["base"].endswith(" (served)"):
        if theirs["base"].startswith(ours["base"].removesuffix(" (served)") + " at "):
            theirs["base"] = ours["base"]
    for role in ("base", "aligned", "reference"):
        name = theirs.get(role)
        if isinstance(name, str) and name and not os.path.isabs(name) and os.path.abspath(name) == ours.get(role):
            theirs[role] = ours[role]
    if not _reads_reference(config):
        theirs["reference"] = ours["reference"] = None
    if "dtype" not in skip and theirs.get("dtype") == _base_dtype(ours) != ours["dtype"]:
        theirs["dtype"] = ours["dtype"]
    keys = [*ours, *(k for k in theirs if k not in ours)]  # a field this version lacks differs too
    changed = ", ".join(f"{k}: {theirs.get(k)!r} → {ours.get(k)!r}" for k in keys
                        if k not in skip and theirs.get(k) != ours.get(k))  # fmt: skip
    if changed:
        raise ValueError(f"cannot resume {path}: its configuration differs ({changed})")


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
    decoder: Decoder, config: RunConfig, rule: kk.Rule | None, items: Sequence[Item], first: int
) -> set[int]:
    """The items from ``first`` on whose answers the context length of the models the run
    uses cuts short of ``max_new_tokens`` (:func:`kad.loop.fit_budgets`, the loop's own
    cut), said once in one warning naming them (the loop would say it per batch, by row).
    ``ValueError`` naming the first item whose prompt fills the context, before any of them
    runs: met inside a batch, it would stop the run there for good."""
    settings = Settings(config.mode, rule, config.gamma or 1, config.temperature)
    engines = engines_used(decoder.engines, settings)
    context = context_length(engines)
    if context is None or config.max_new_tokens == 0:
        return set()
    limit, name = context
    task = TASKS[config.task]
    prompts = {
        index: decoder.encode(task.user_message(items[index]), chat=True, system_prompt=config.system_prompt or None)
        for index in range(first, len(items))
    }
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
    cut = _context_cuts(decoder, config, rule, items, first=len(result["items"]))
    result["limit"] = limit
    for first in range(len(result["items"]), len(items), config.batch_size):
        batch = items[first : first + config.batch_size]
        with warnings.catch_warnings():  # the cuts, said above by item
            warnings.simplefilter("ignore", ContextLengthWarning)
            out = decoder.generate(
                [task.user_message(item) for item in batch],
                config.mode,
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
        served = {name: getattr(out.stats, name) for name in _SERVED_COUNTERS}
        if isinstance(base := decoder.engines["base"], ServedEngine) and hasattr(base, "url"):
            served["served_at"] = base.url
        result["batches"].append({"first": first, "size": len(batch), "wall_time_s": out.stats.wall_time_s, **served})
        result["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        summary = summarize(result)
        result["summary"] = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(summary).items()}
        _write_atomically(path, result)
        if on_batch is not None:
            on_batch(summary, len(batch))
    return result
