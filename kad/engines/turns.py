"""One generation at a time on an engine, whichever front end runs it.

An engine's cache serves one generation (:class:`~kad.engines.Engine`), but one
engine object may be handed to several front ends at once: a ``LlamaCppEngine``
passed to ``kad.hf.generate`` from several threads, or to two ``kad.Decoder`` s.
:func:`engine_turns`, held by :func:`kad.loop.decode` for a whole generation,
makes such generations take turns instead of advancing one cache for both
(``IndexError`` s, a llama.cpp context fed from two threads).

A Ctrl-C may land anywhere in taking the engines (it is raised where a call
returns), so nothing is taken with per-engine locks, which one landing just
after an ``acquire`` would keep for good.  A generation's engines all point to
its :class:`_Generation`; the one statement that ends it gives them all back.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator

_WAKE_S = 1.0  # a waiter looks again at least this often, should a Ctrl-C cut off a notify


class _Generation:
    """The generation holding some engines, until it has ended."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.ended = False


class _Turn:
    """Whose turn it is on one engine."""

    def __init__(self) -> None:
        self.holder: _Generation | None = None

    def held(self) -> bool:
        return self.holder is not None and not self.holder.ended


_turns: weakref.WeakKeyDictionary[object, _Turn] = weakref.WeakKeyDictionary()
_changed = threading.Condition()  # guards _turns and every turn's holder; notified as generations end


def _turn(engine: object) -> _Turn | None:
    """``engine``'s turn, made on first use; None for an engine that cannot key a weak
    mapping (unhashable or without weak references: a user's class), which is not guarded."""
    with _changed:
        try:
            return _turns.setdefault(engine, _Turn())
        except TypeError:
            return None


@contextlib.contextmanager
def engine_turns(engines: Iterable[object]) -> Iterator[None]:
    """Hold ``engines`` for one generation: a generation on an engine that another thread
    is running waits for it to end; one from the thread already running it (a streamer
    starting a generation) is refused with ``RuntimeError``, as waiting would never end.
    All engines are taken at once when all are free, so two generations sharing some
    engines cannot each hold one the other waits for."""
    distinct = {id(e): e for e in engines}  # by id: engines need not be hashable
    turns = [t for t in map(_turn, distinct.values()) if t is not None]
    generation = _Generation()
    try:
        with _changed:
            if any(t.held() and t.holder.thread == generation.thread for t in turns):  # type: ignore[union-attr]
                raise RuntimeError(
                    "a generation was started inside another on the same engine (from its streamer?): "
                    "an engine runs one generation at a time"
                )
            while any(t.held() for t in turns):
                _changed.wait(_WAKE_S)
            for turn in turns:
                turn.holder = generation
        yield
    finally:
        generation.ended = True  # first: no call before it, where a Ctrl-C could land
        with _changed:
            _changed.notify_all()
