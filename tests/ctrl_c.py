"""A Ctrl-C landing at each point of some functions, in turn: a trace function raises
``KeyboardInterrupt`` at the N-th such point of a run.

CPython raises a pending Ctrl-C only where it looks for signals: as a Python function starts,
just after a call returns, and as a loop turns back.  The points used here are those:
- each function called from the traced ones (any: ``threading``'s, ``contextlib``'s, a
  streamer's), as it starts (its ``call`` event) and as it returns (its ``return`` event, which
  raises in the caller just after the call);
- in the traced functions, the line after a line that calls (a with statement's line counts:
  its ``__exit__`` is a call), which also stands for calls of C functions (``lock.acquire``)
  that a trace does not see, and each loop head.  Not the event Python fires again at a with
  statement's line as the block ends (an exception there would skip ``__exit__``), nor a
  ``try:`` line (a no-op that no handler covers), nor the first line of a ``finally`` block:
  the check after a call on the line before each of those lands inside the ``try`` (or the
  with block), as the ``return`` events test for Python callees.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any


@dataclass
class _Lines:
    """A traced function's lines, by what a Ctrl-C does there."""

    calling: set[int] = field(default_factory=set)  # a line event after one of these is a point
    loop_heads: set[int] = field(default_factory=set)  # each event here is a point
    skipped: set[int] = field(default_factory=set)  # never a point


def interruptible(functions: list[Callable]) -> dict[CodeType, _Lines]:
    """The points of ``functions`` (decorators' wrappers unwrapped), per code object."""
    points = {}
    for function in map(inspect.unwrap, functions):
        source, first = inspect.getsourcelines(function)
        (node,) = ast.parse(textwrap.dedent("".join(source))).body
        lines = _Lines()
        for child in ast.walk(node):
            if isinstance(child, ast.Call) or isinstance(child, (ast.With, ast.AsyncWith)):
                lines.calling.add(first - 1 + child.lineno)
            if isinstance(child, (ast.For, ast.While)):
                lines.loop_heads.add(first - 1 + child.lineno)
            if isinstance(child, (ast.With, ast.AsyncWith)):
                lines.skipped.add(first - 1 + child.lineno)  # the re-fired event; see above
            if isinstance(child, ast.Try):  # a no-op that no handler covers, where no check is made
                lines.skipped.add(first - 1 + child.lineno)
            if isinstance(child, ast.Try) and child.finalbody:
                lines.skipped.add(first - 1 + child.finalbody[0].lineno)
        points[function.__code__] = lines
    return points


def interrupted_at(point: int, run: Callable[[], Any], traced: dict[CodeType, _Lines]) -> KeyboardInterrupt | None:
    """``run()`` with a KeyboardInterrupt raised at its ``point``-th point in ``traced`` (of
    :func:`interruptible`); the interrupt, None if ``run`` ended first."""
    seen = 0
    previous: dict[FrameType, int] = {}  # each traced frame's last line

    def here() -> None:
        nonlocal seen
        seen += 1
        if seen == point:
            raise KeyboardInterrupt

    def local(frame, event, arg):
        lines = traced.get(frame.f_code)
        if event == "line" and lines is not None:
            line, before = frame.f_lineno, previous.get(frame)
            previous[frame] = line
            if line not in lines.skipped and (before in lines.calling or line in lines.loop_heads):
                here()
        elif event == "return":
            previous.pop(frame, None)
            if frame.f_back is not None and frame.f_back.f_code in traced:
                here()  # raised in the caller, just after the call
        return local

    def calls(frame, event, arg):
        direct = frame.f_back is not None and frame.f_back.f_code in traced
        if direct:
            here()
        return local if direct or frame.f_code in traced else None

    sys.settrace(calls)
    try:
        run()
    except KeyboardInterrupt as interrupt:
        return interrupt
    finally:
        sys.settrace(None)
    return None


def frames(interrupt: KeyboardInterrupt) -> list[traceback.FrameSummary]:
    """Where ``interrupt`` was raised, innermost first (not the trace function raising it)."""
    return [f for f in traceback.extract_tb(interrupt.__traceback__)[::-1] if f.filename != __file__]
