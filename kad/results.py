"""The ``kad eval`` result file: its format, the checks a file passes to be read, and its writes.

A result file (JSON, format :data:`FORMAT`) holds the run's :class:`RunConfig` (defined
here: the checks read its fields), one record per item (generation, extracted answer,
correctness, per-item :class:`~kad.stats.GenerationStats`) and the wall time of each batch.  :func:`load_result`
reads one and refuses what a reader could not use (``ValueError`` naming the file); a file
from before a field of :class:`RunConfig` reads with the value the field's absence meant.
:func:`write_atomically` replaces a file in one step.  Of kad this imports only
:mod:`kad.stats`, not the decoding stack: ``kad summary`` and ``kad plot`` read files here,
and :mod:`kad.evaluate` (the run) writes them.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .stats import GenerationStats

FORMAT = "kad-eval/1"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's generations (the item count aside: a run may
    be extended with a larger limit).  ``rule``/``lam`` are ``None`` for modes
    without a rule parameter, ``gamma`` for modes that do not speculate;
    ``tokenizer`` names the aligned model's tokenizer when it was given apart from
    the model (``kad eval --tokenizer`` with an aligned GGUF), as :func:`~kad.evaluate.model_name`;
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
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", type(None): "null"}  # fmt: skip


def _records(result: dict) -> Iterator[tuple[str, typing.Any, dict[str, typing.Any]]]:
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


def write_atomically(path: Path, result: dict) -> None:
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
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read where the system tells it (Linux): reading it with
    ``os.umask`` sets it, and a Ctrl-C landing before it is put back would leave it set."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o077)  # elsewhere: set and put back, restrictive in between
    os.umask(umask)
    return umask


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
