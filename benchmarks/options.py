"""argparse types of the benchmarks' options: a bad value ends in argparse's own one-line
error before a run, not in a traceback during or after it."""

from __future__ import annotations

import argparse
import os
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
