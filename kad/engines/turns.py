"""One generation at a time on an engine, whichever front end runs it.

An engine's cache serves one generation (:class:`~kad.engines.Engine`), but one
engine object may be handed to several front ends at once: a ``LlamaCppEngine``
passed to ``kad.hf.generate`` from several threads, or to two ``kad.Decoder`` s.
A :class:`Hold`, taken by :func:`kad.loop.decode` for a whole generation, makes
such generations take turns instead of advancing one cache for both
(``IndexError`` s, a llama.cpp context fed from two threads).

A Ctrl-C is raised where CPython looks for a pending signal: as a Python function
starts and as a call returns (and as a loop turns).  So a hold is not a lock taken
by a call (one landing as ``acquire`` returns, or in a context manager's Python
``__enter__``, would keep it for good): each engine taken points to the hold,
and the one store ``hold.ended = True``, which a caller's ``finally`` starts with
(entering a ``finally`` runs no such check), gives them all back at once.
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Iterable

_WAKE_S = 1.0  # a waiter looks again at least this often, should a Ctrl-C cut off a wake-up
_guard = threading.Lock()  # guards _turns and each turn's holder; only ever entered by `with`


class Hold:
    """A generation's hold on ``engines``: :meth:`take` waits for them and takes them; setting
    :attr:`ended` gives them back::

        hold = Hold(engines)
        try:
            hold.take()
            ...  # the generation
        finally:
            hold.ended = True  # first: nothing before it where a Ctrl-C lands
            hold.wake()
    """

    def __init__(self, engines: Iterable[object]) -> None:
        distinct = {id(e): e for e in engines}  # by id: engines need not be hashable
        # In one global order: two generations sharing some engines cannot each hold one the
        # other waits for.
        self._turns = [t for t in (_turn(distinct[key]) for key in sorted(distinct)) if t is not None]
        self.ended = False
        self._running = threading.Lock()  # held until the generation ends: its waiters wait on it
        self._running.acquire()

    def take(self) -> None:
        """Take the engines, waiting for a generation that another thread runs on them.  One
        started inside a generation of this thread (from its streamer) is refused with
        ``RuntimeError`` where it would wait: on the outer one's engines it would wait for ever,
        and on one another thread holds or waits for, that one may be waiting for the outer's."""
        with _guard:
            running_here = [h for h in getattr(_here, "holds", ()) if not h.ended]
            if any(t.holder in running_here for t in self._turns):
                raise RuntimeError(
                    "a generation was started inside another on the same engine (from its streamer?): "
                    "an engine runs one generation at a time"
                )
            # One started inside another of this thread must not wait: the generation it would
            # wait for may be waiting for an engine the outer one holds.
            nested = bool(running_here)
            _here.holds = [*running_here, self]
        for turn in self._turns:
            with _guard:
                turn.queue.append(self)  # first come, first served: a busy engine's next is not a race
            while True:
                with _guard:
                    while turn.queue[0].ended:  # one left by a Ctrl-C while waiting
                        turn.queue.popleft()
                    ahead = turn.holder if turn.holder is not None and not turn.holder.ended else turn.queue[0]
                    if ahead is self:
                        turn.queue.popleft()
                        turn.holder = self
                        break
                    if nested:
                        raise RuntimeError(
                            "a generation was started inside another (from its streamer?) on an engine that "
                            "another thread's generation holds or waits for: it cannot wait, as that one may "
                            "wait for this thread's"
                        )
                ahead.wait(_WAKE_S)

    def wait(self, timeout: float) -> None:
        """Until this generation ends, or ``timeout`` seconds."""
        if self._running.acquire(timeout=timeout):
            self._running.release()  # for the other waiters

    def wake(self) -> None:
        """Wake the generations waiting for this one, once it has ended."""
        if self._running.locked():
            self._running.release()


class _Turn:
    """Which generation holds one engine (none, or one that has ended: free)."""

    def __init__(self) -> None:
        self.holder: Hold | None = None
        self.queue: collections.deque[Hold] = collections.deque()  # the generations waiting for it


_turns: weakref.WeakKeyDictionary[object, _Turn] = weakref.WeakKeyDictionary()
_here = threading.local()  # .holds: this thread's holds (those not ended are running)


def _turn(engine: object) -> _Turn | None:
    """``engine``'s turn, made on first use; None for an engine that cannot key a weak
    mapping (unhashable or without weak references: a user's class), which is not guarded."""
    with _guard:
        try:
            return _turns.setdefault(engine, _Turn())
        except TypeError:
            return None
