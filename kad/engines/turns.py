"""One generation at a time on an engine, whichever front end runs it.

An engine's cache serves one generation (:class:`~kad.engines.Engine`), but one
engine object may be handed to several front ends at once: a ``LlamaCppEngine``
passed to ``kad.hf.generate`` from several threads, or to two ``kad.Decoder`` s.
:func:`engine_turns`, held by :func:`kad.loop.decode` for a whole generation,
makes such generations take turns instead of advancing one cache for both
(``IndexError`` s, a llama.cpp context fed from two threads).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator


class _Turn:
    """The lock of one engine and the thread holding it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: int | None = None


_turns: weakref.WeakKeyDictionary[object, _Turn] = weakref.WeakKeyDictionary()
_turns_guard = threading.Lock()  # guards _turns itself


def _turn(engine: object) -> _Turn | None:
    """``engine``'s turn, made on first use; None for an engine that cannot key a weak
    mapping (unhashable or without weak references: a user's class), which is not guarded."""
    with _turns_guard:
        try:
            return _turns.setdefault(engine, _Turn())
        except TypeError:
            return None


@contextlib.contextmanager
def engine_turns(engines: Iterable[object]) -> Iterator[None]:
    """Hold ``engines`` for one generation: a generation on an engine that another thread
    is running waits for it to end; one from the thread already running it (a streamer
    starting a generation) is refused with ``RuntimeError``, as waiting would never end.
    Engines are taken in one global order (by ``id``), so two generations sharing some
    engines cannot each hold one the other waits for."""
    distinct = {id(e): e for e in engines}  # by id: engines need not be hashable
    turns = [t for t in (_turn(distinct[key]) for key in sorted(distinct)) if t is not None]
    me = threading.get_ident()
    if any(t.owner == me for t in turns):
        raise RuntimeError(
            "a generation was started inside another on the same engine (from its streamer?): "
            "an engine runs one generation at a time"
        )
    held: list[_Turn] = []
    try:
        for turn in turns:
            turn.lock.acquire()
            turn.owner = me
            held.append(turn)
        yield
    finally:
        for turn in reversed(held):
            turn.owner = None
            turn.lock.release()
