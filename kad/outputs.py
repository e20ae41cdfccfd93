"""The command line's output folders (``kad eval --output/--out-dir``, ``kad plot --out``):
made and checked before the work that fills them, removed again where nothing was saved."""

from __future__ import annotations

import contextlib
from pathlib import Path

from .results import check_writable


def output_dir(directory: Path, option: str) -> list[Path]:
    """``directory`` created and writable, checked before the work that would be written
    there (``ValueError`` naming ``option`` otherwise); returns the directories it made,
    deepest first."""
    made = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        check_writable(directory)
    except OSError as error:
        remove_empty(made)
        raise ValueError(f"{option}: cannot write in {directory} ({error.strerror or error})") from None
    return made


def remove_empty(directories: list[Path]) -> None:
    """Remove ``directories`` (deepest first) where empty: folders a run made and saved nothing in."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()
