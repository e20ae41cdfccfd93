"""kad.engines.turns: engines held for one generation, given back whatever interrupts it."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from ctrl_c import frames, interrupted_at, interruptible

from kad.engines.turns import Hold



class _Engine:
    """Any object that weak references can key, as engines are (a bare ``object()`` is not guarded)."""


@contextlib.contextmanager
def engine_turns(engines: list[object]) -> Iterator[None]:
    """``engines`` held as kad.loop.decode holds them."""
    hold = Hold(engines)
    try:
        hold.take()
        yield
    finally:
        hold.ended = True
        hold.wake()


def _take(engines: list[object]) -> None:
    """Take ``engines`` and give them back, as kad.loop.decode does (no context manager, whose
    Python ``__enter__`` could be interrupted after the taking, outside the ``finally``)."""
    hold = Hold(engines)
    try:
        hold.take()
    finally:
        hold.ended = True
        hold.wake()


_LINES = interruptible([_take, Hold.__init__, Hold.take, Hold.wait, Hold.wake])


@pytest.mark.parametrize("busy", [False, True], ids=["free", "held-by-another-thread"])
def test_a_ctrl_c_anywhere_in_taking_the_engines_gives_them_back(busy):
    """Before, one landing just after a lock was acquired kept that engine for good: the next
    generation on it in this thread hung (or was refused as started inside another).  With
    the engines held by another thread for a while, the interrupts land in the wait too."""
    engines = [_Engine(), _Engine()]
    errors: list[BaseException] = []
    landed: set[str] = set()  # the functions the interrupts landed in

    def held_for_a_while() -> threading.Thread:
        taken = threading.Event()

        def generation() -> None:
            with engine_turns(engines):
                taken.set()
                time.sleep(0.3)  # the other reaches its wait before, even traced on a busy machine

        holder = threading.Thread(target=generation, daemon=True)
        holder.start()
        assert taken.wait(timeout=10)
        return holder

    def scenario():
        try:
            for point in itertools.count(1):
                holder = held_for_a_while() if busy else None
                interrupt = interrupted_at(point, lambda: _take(engines), _LINES)
                if holder is not None:
                    holder.join(timeout=10)
                if interrupt is None:
                    break
                landed.add(frames(interrupt)[0].name)
                with engine_turns(engines):  # given back: neither refused nor waiting for ever
                    pass
        except BaseException as error:  # noqa: BLE001 - reported to the test's thread
            errors.append(error)

    worker = threading.Thread(target=scenario, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "an interrupted take kept an engine: the next one waits for ever"
    assert not errors, errors
    assert {"take", "__init__"} <= landed and (not busy or "wait" in landed), " ".join(sorted(landed))  # not vacuous


def test_a_generation_started_from_a_streamer_does_not_wait_on_another_thread():
    """Thread T runs a generation on ``[a]``; thread U one on ``[a, b]``, which takes ``b`` and
    waits for ``a``; T's streamer starts a generation on ``[b]``.  Waiting, each thread would
    wait for the other for ever: the inner one is refused instead, and both others end."""
    a, b = _Engine(), _Engine()
    if id(b) > id(a):
        a, b = b, a  # U takes b first
    u_waiting, outcome = threading.Event(), []

    def t_generation() -> None:
        with engine_turns([a]):
            assert u_waiting.wait(timeout=10)
            time.sleep(0.1)  # U has taken b and waits for a
            try:
                with engine_turns([b]):
                    outcome.append("took b")
            except RuntimeError as error:
                outcome.append(str(error))

    def u_generation() -> None:
        u_waiting.set()
        with engine_turns([a, b]):
            outcome.append("u ran")

    t = threading.Thread(target=t_generation, daemon=True)
    t.start()
    time.sleep(0.05)
    u = threading.Thread(target=u_generation, daemon=True)
    u.start()
    t.join(timeout=10)
    u.join(timeout=10)
    assert not t.is_alive() and not u.is_alive(), "deadlock"
    assert "cannot wait" in outcome[0] and outcome[1] == "u ran", outcome


def test_generations_sharing_some_engines_hold_them_alone_and_all_end():
    """Three threads over engine sets that overlap in a cycle (a deadlock for two locks taken
    in different orders): each engine is held by one generation at a time, and all end."""
    a, b, c = _Engine(), _Engine(), _Engine()
    holders: Counter[int] = Counter()
    guard = threading.Lock()
    overlaps: list[str] = []

    def run(engines: list[object]) -> None:
        for _ in range(300):
            with engine_turns(engines):
                with guard:
                    holders.update(id(e) for e in engines)
                    if any(holders[id(e)] > 1 for e in engines):
                        overlaps.append("two generations held one engine")
                with guard:
                    holders.subtract(id(e) for e in engines)

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in ([a, b], [b, c], [c, a])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not overlaps


def test_an_engine_given_twice_is_taken_once_and_given_back():
    """Engines of any class (not orderable, maybe unhashable: not guarded then) are taken once each."""

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

    engine, other = _Engine(), Unhashable()
    for _ in range(2):  # given back after the first
        with engine_turns([engine, engine, other]):
            with pytest.raises(RuntimeError):  # held
                with engine_turns([engine]):
                    pass


def test_a_generation_on_two_engines_is_not_starved_by_generations_on_each():
    """Generations on ``[a]`` and on ``[b]`` that keep one of the two busy at any time: a
    generation on ``[a, b]`` holds ``a`` while it waits for ``b`` (taking both at once only when
    both were free, it waited seconds, without bound)."""
    a, b = _Engine(), _Engine()
    stop = threading.Event()

    def busy(engines: list[object], offset: float) -> None:
        time.sleep(offset)
        while not stop.is_set():
            with engine_turns(engines):
                time.sleep(0.02)  # a generation

    threads = [threading.Thread(target=busy, args=args, daemon=True) for args in (([a], 0.0), ([b], 0.01))]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.1)
        start = time.perf_counter()
        with engine_turns([a, b]):
            waited = time.perf_counter() - start
    finally:
        stop.set()
    assert waited < 2.0


def test_a_generation_started_inside_another_on_one_of_its_engines_is_refused():
    engine, other = _Engine(), _Engine()
    with engine_turns([engine]):
        with pytest.raises(RuntimeError, match="one generation at a time"):
            with engine_turns([other, engine]):
                pass
        with engine_turns([other]):  # an engine the outer generation does not hold
            pass
    with engine_turns([other, engine]):  # the refused one took nothing
        pass


def test_a_generation_waiting_for_an_engine_can_be_interrupted():
    """A Ctrl-C while another thread's generation holds the engine ends the wait (a signal
    raising in the main thread, as SIGINT's handler does); the engine stays the other's, and
    is free for this thread once the other ends."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")

    class Interrupt(Exception):
        pass

    def raise_interrupt(signum, frame):
        raise Interrupt

    engine = _Engine()
    taken, release = threading.Event(), threading.Event()

    def other():
        with engine_turns([engine]):
            taken.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=other, daemon=True)
    holder.start()
    assert taken.wait(timeout=10)
    previous = signal.signal(signal.SIGALRM, raise_interrupt)
    try:
        with pytest.raises(Interrupt):
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with engine_turns([engine]):
                pytest.fail("took an engine another generation holds")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    release.set()
    holder.join(timeout=10)
    with engine_turns([engine]):
        pass
