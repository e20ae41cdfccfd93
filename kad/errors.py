"""The failures kad expects and says in one line, with the warning it gives: a leaf, like
:mod:`kad.choices`, so that the command line catches them without importing the modules
that raise them (those load torch).  Each is importable from where it is raised too."""

from __future__ import annotations

from typing import Any


class EngineError(RuntimeError):
    """An engine could not answer (a server down, refusing or garbling, a distribution it
    cannot give exactly): one line naming where.  The loop keeps what was generated
    before it (:attr:`partial`, set by :func:`kad.loop.decode`)."""

    # What was emitted before the failure: a kad.loop.Decoded (token ids, statistics), from
    # kad.Decoder.generate a kad.Generation (texts too).
    partial = None


def partial_of(error: BaseException) -> Any:
    """What a generation had emitted when ``error`` left it (None where nothing yet).  An
    ``EngineError`` declares :attr:`EngineError.partial`; the ``KeyboardInterrupt`` or
    ``torch.OutOfMemoryError`` raised out of a generation carries one the same way."""
    return getattr(error, "partial", None)


def keep_partial(error: BaseException, partial: object) -> None:
    """Attach ``partial`` (read by :func:`partial_of`) to ``error``, also to an exception
    type that declares no such attribute."""
    setattr(error, "partial", partial)  # not `error.partial =`: KeyboardInterrupt declares none


class DefaultPairError(RuntimeError):
    """The default pair cannot be had on this machine (the CLI says so in its message alone)."""


class ContextLengthWarning(UserWarning):
    """A row's budget ran past a model's context length (the row stops there), or an engine's
    context was set past the one its model was trained on."""
