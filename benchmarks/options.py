"""argparse types of the benchmarks' options: a bad value ends in argparse's own one-line
error before a run, not in a traceback during or after it."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path


def count(text: str) -> int:
    """An integer >= 1 (a batch size, a number of tokens, repeats, γ)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not a whole number >= 1")
    return value


def counts(text: str) -> list[int]:
    """Comma-separated integers >= 1."""
    return [count(item) for item in text.split(",")]


def subset(*choices: str) -> Callable[[str], list[str]]:
    """The type of a comma-separated subset of ``choices``, in the order given."""

    def names(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            named = ", ".join(map(repr, unknown)) if unknown else "nothing"
            raise argparse.ArgumentTypeError(f"unknown {named}; choose from {', '.join(choices)}")
        return items

    return names


def writable_file(parser: argparse.ArgumentParser, flag: str, path: Path) -> None:
    """``parser.error`` unless ``path`` can be written: checked before a run, not after it."""
    folder = path.parent
    if path.is_dir():
        parser.error(f"{flag} {path}: is a folder")
    if not folder.is_dir():
        parser.error(f"{flag} {path}: no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        parser.error(f"{flag} {path}: not writable")


def writable_folder(parser: argparse.ArgumentParser, flag: str, path: Path) -> None:
    """Make the output folder ``path`` now, or ``parser.error``: a run's results are
    written after the run, and a folder that cannot take them would lose them."""
    if path.exists() and not path.is_dir():
        parser.error(f"{flag} {path}: not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"{flag} {path}: {error.strerror or error}")
    if not os.access(path, os.W_OK | os.X_OK):
        parser.error(f"{flag} {path}: not writable")


def temperature(text: str) -> float:
    """A sampling temperature the kernels take (0: greedy)."""
    import kad_kernels as kk  # torch: only when the option is parsed

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not kk.temperature_in_range(value):
        raise argparse.ArgumentTypeError(f"{text.strip()!r}: a temperature must be {kk.TEMPERATURE_RANGE}")
    return value


def checked_rule(parser: argparse.ArgumentParser, make: Callable, lam: float, flag: str = "--lam"):
    """The rule ``make(lam)`` (``kk.Dual``, ``kk.Primal``, ...), or ``parser.error`` naming
    ``flag`` with the rule's own words (λ in [0, 1], a budget >= 0): before the models load."""
    try:
        return make(lam)
    except ValueError as error:
        parser.error(f"{flag} {lam:g}: {error}")


def default_pair_missing(prog: str, error: Exception) -> int:
    """Say ``error`` (a ``kad.default_pair.DefaultPairError``: packages missing, damaged, a
    cache that takes no files) in one line, as ``kad`` says it but without its hint of
    ``--base``/``--aligned``, which the default-pair benchmarks do not have; exit status 1."""
    lines = [line.strip() for line in str(error).splitlines() if "--base/--aligned" not in line]
    print(f"{prog}: {' '.join(lines)}", file=sys.stderr)
    return 1
