"""The engine seam: what the decoding loop needs of a model runtime.

An *engine* is one causal language model with its KV cache over a batch of rows.
The loop (:mod:`kad.loop`) talks to the base, aligned and reference models only
through this protocol, so a new runtime (a model served over HTTP, a GGUF model
in llama.cpp) is one new module in :mod:`kad.engines` and no change to the loop.
``tests/test_engines.py`` runs the same tests against every engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..batch import Batch
from ..errors import ContextLengthWarning, EngineError  # noqa: F401  (the seam's failures, importable from here too)
from ..settings import Settings


def refuse_served_mixers(engines: Mapping[str, object]) -> None:
    """``ValueError`` if a :class:`ServedEngine` fills a role other than the base model's
    (``{role: engine}``): a served model scores its top-k tokens only, which settles π only
    where that model is p (design §6.3); π reads every token of q* (and of the reference)."""
    for role, engine in engines.items():
        if role != "base" and isinstance(engine, ServedEngine):
            raise ValueError(
                f"the {role} model {engine.name} is a served model, which returns only its top-k log-probabilities: "
                f"KAD reads every token of the {role} model, so only the base model may be served; run the "
                f"{role} model locally"
            )


def refuse_other_vocabularies(engines: Mapping[str, Engine]) -> None:
    """``ValueError`` unless the engines (``{role: engine}``) give logits over one
    vocabulary: π mixes them token by token, and a token drawn from q* alone (where α
    takes the row) could lie outside p's vocabulary."""
    if len({engine.vocab_size for engine in engines.values()}) > 1:
        sizes = ", ".join(f"the {role} model {engine.name} {engine.vocab_size}" for role, engine in engines.items())
        raise ValueError(f"the engines must share one vocabulary; logits per position: {sizes}")


def refuse_shared_engines(engines: Mapping[str, object]) -> None:
    """``ValueError`` if one engine object fills two roles (``{role: engine}``): its one
    cache would be advanced for both, so each role needs an engine of its own."""
    twice = [role for role, e in engines.items() if sum(e is other for other in engines.values()) > 1]
    if twice:
        raise ValueError(f"the {' and '.join(twice)} models are one engine object, whose cache serves one role: "
                         "make an engine for each")  # fmt: skip


@runtime_checkable
class Engine(Protocol):
    """A causal LM with a KV cache over the columns of a :class:`~kad.batch.Batch`.

    **Layout.**  The loop owns the :class:`~kad.batch.Batch`: tokens, mask and
    position ids ``[B, W]``.  Column ``j`` of every row is slot ``j`` of the cache;
    a column with mask 0 (left padding, a rejected draft) is no token of its row:
    no later token may attend to it, and each real token sits at the position id
    the batch gives it.  So every row must get the logits a fresh forward over the
    row's real tokens alone would give (within the engine's numerical noise).

    **Cache.**  The engine owns its cache; it covers the first :attr:`cached`
    columns.  One engine serves one generation at a time: the loop calls
    :meth:`reset` (with the generation's :class:`~kad.settings.Settings`) before
    each one, then only :meth:`advance`, :meth:`truncate` and :meth:`select`,
    and :meth:`reset` without settings after it, so that no cache outlives its
    generation.
    Batch size and width are whatever the first :meth:`advance` after a reset
    brings.  An engine that cannot serve the settings (a rule or temperature it
    cannot score exactly) raises ``ValueError`` in :meth:`reset`; one that fails
    during the generation raises :class:`EngineError`.

    **Logits.**  :meth:`advance` returns ``[B, keep, V]``, ``V`` =
    :attr:`vocab_size`, one row per position, any floating dtype, on any device
    (the loop moves them to the base engine's device).  They are logits: the
    kernels take ``softmax(logits / T)``, so any per-row constant may be added.
    A token the model must never produce has logit ``-inf``.  An engine that
    sees only part of a distribution (a server returning top-k
    log-probabilities) still returns full rows: the known entries as
    log-probabilities, the remaining mass spread over the other tokens as the
    engine documents; whether a rule's decision on such a row is exact is the
    engine's to establish and report.
    """

    @property
    def name(self) -> str:
        """What the model is called in messages and result files (hub id, path, URL)."""
        ...

    @property
    def vocab_size(self) -> int:
        """``V``: logits per position, the vocabulary shared with the other models."""
        ...

    @property
    def device(self) -> torch.device:
        """Where :meth:`advance` returns its logits."""
        ...

    @property
    def max_length(self) -> int | None:
        """Positions a row may hold (the context length); ``None`` if unbounded or unknown."""
        ...

    @property
    def stop_ids(self) -> frozenset[int]:
        """Token ids that end a row by the model's own configuration (may be empty)."""
        ...

    @property
    def cached(self) -> int:
        """Columns of the batch the cache covers: 0 after :meth:`reset`."""
        ...

    def reset(self, settings: Settings | None = None) -> None:
        """Empty the cache, ready for a new generation decoded with ``settings``."""
        ...

    def advance(self, batch: Batch, keep: int = 1) -> Tensor:
        """Feed the columns ``[cached, batch.width)`` (at least ``keep`` of them) and
        return the logits after the last ``keep`` of them, ``[B, keep, V]``;
        afterwards ``cached == batch.width``."""
        ...

    def truncate(self, width: int) -> None:
        """Forget the cached columns from ``width`` on (no-op if ``width >= cached``)."""
        ...

    def select(self, rows: Tensor) -> None:
        """Keep the cache rows ``rows`` (i64 ``[B']`` indices into the current rows), in that order."""
        ...


@runtime_checkable
class ServedEngine(Engine, Protocol):
    """An engine behind a server that returns only part of each distribution; it counts,
    since its last :meth:`~Engine.reset`, what the statistics report."""

    @property
    def requests(self) -> int:
        """HTTP requests answered (retries of one request count once)."""
        ...

    @property
    def wait_s(self) -> float:
        """Seconds spent waiting for those answers (server, network, JSON), retries included."""
        ...

    @property
    def partial_positions(self) -> int:
        """Positions scored from top-k log-probabilities."""
        ...

    @property
    def inexact_positions(self) -> int:
        """Of those, positions where π could only be approximated (allowed by the user)."""
        ...
