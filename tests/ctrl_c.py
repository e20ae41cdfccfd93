"""A Ctrl-C landing at each line of some functions, in turn: a trace function raises
``KeyboardInterrupt`` at the N-th line event of their frames.

Only lines where a real Ctrl-C can land are used.  CPython raises one where it looks for
pending signals: as a call returns, as a loop turns, and as a frame starts or resumes.  So
these are left out:
- a with statement's line: Python fires its event again as the block ends, at a point where an
  exception would skip ``__exit__`` and where no Ctrl-C lands;
- a ``try:`` line: a no-op, where the interpreter does not look;
- a function's first statement: one reaches it only as the function starts, before anything of
  the function can catch it, as if it had landed in the caller before the call;
- a ``finally`` block: the first call of each of ours runs before the interpreter looks.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from collections.abc import Callable
from types import CodeType
from typing import Any


def interruptible_lines(functions: list[Callable]) -> dict[CodeType, set[int]]:
    """Per code object of ``functions`` (decorators' wrappers unwrapped), its lines where a
    Ctrl-C may land."""
    lines = {}
    for function in map(inspect.unwrap, functions):
        source, first = inspect.getsourcelines(function)
        (node,) = ast.parse(textwrap.dedent("".join(source))).body
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        skipped = {first + i for i, line in enumerate(source) if line.lstrip().startswith(("with ", "try:"))}
        skipped.add(first - 1 + body[0].lineno)
        for block in (n.finalbody for n in ast.walk(node) if isinstance(n, ast.Try) and n.finalbody):
            skipped.update(range(first - 1 + block[0].lineno, first + block[-1].end_lineno))
        lines[function.__code__] = {first + i for i in range(len(source))} - skipped
    return lines


def interrupted_at(line_event: int, run: Callable[[], Any], lines: dict[CodeType, set[int]]) -> KeyboardInterrupt | None:
    """``run()`` with a KeyboardInterrupt raised at its ``line_event``-th line event among
    ``lines`` (of :func:`interruptible_lines`); the interrupt, or None if ``run`` ended first."""
    seen = 0

    def local(frame, event, arg):
        nonlocal seen
        if event == "line" and frame.f_lineno in lines[frame.f_code]:
            seen += 1
            if seen == line_event:
                raise KeyboardInterrupt
        return local

    def calls(frame, event, arg):
        return local if frame.f_code in lines else None

    sys.settrace(calls)
    try:
        run()
    except KeyboardInterrupt as interrupt:
        return interrupt
    finally:
        sys.settrace(None)
    return None
