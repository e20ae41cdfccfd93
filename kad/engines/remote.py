"""The base model behind an OpenAI-compatible completions server (vLLM), the aligned model local.

Each :meth:`RemoteEngine.advance` is one HTTP request for the whole batch: per row
and per scored column, the prompt "the row's real tokens up to that column" (token
ids), ``max_tokens=1``, ``logprobs=k``.  The server returns the top-k
log-probabilities of the next token after each prompt; :mod:`kad.partial` turns them
into the rows the kernels take and says, for the generation's rule, whether π from
them is exact.  Positions that are not are asked again with a larger k, up to the
server's limit (vLLM's ``--max-logprobs``), then the generation stops with a clear
error, unless the engine was made with ``approximate=True`` (counted in the
statistics as inexact positions).

One prompt per scored column ("fan-out") rather than one prompt with its prompt
log-probabilities: the prompts of a round share their prefix, which the server's
prefix cache keeps, whereas vLLM recomputes a whole prompt whose own
log-probabilities are requested.  The server keeps no state for kad: the engine's
"cache" is only how many columns it has seen, so a server restarted between two
requests serves the next one as well as the first.

Faults (connection refused or reset, timeouts, 5xx and 429 answers, malformed or
truncated JSON, answers that do not fit the request) are retried with exponential
backoff, then end in an :class:`~kad.engines.EngineError` of one line naming the
URL (:mod:`kad.engines.http`, the part any served engine shares); the loop keeps
what was generated before it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any, cast

import httpx
import torch
from torch import Tensor
from transformers import AutoConfig, GenerationConfig, PreTrainedTokenizerBase

from .. import partial
from ..batch import Batch
from ..errors import EngineError
from ..settings import Settings
from .arguments import check_count, check_flag, check_seconds, checked_stop_ids, checked_tokenizer
from .http import JsonClient, Retryable, check_api_key, checked_url, error_message
from .huggingface import token_ids
from .vocabulary import vocabulary_mismatch

# Token ids are int32 in the servers (and in llama.cpp): a larger one is a garbled answer.
_MAX_TOKEN_ID = 2**31
# vLLM's answer to a logprobs request above its --max-logprobs.
_MAX_LOGPROBS = re.compile(r"max(?:imum)? allowed:?\s*(\d+)")


def check_servable(settings: Settings, url: str) -> None:
    """``ValueError`` unless the top-k log-probabilities of the server at ``url`` can
    determine π for ``settings`` (:mod:`kad.partial`): the base mode only greedily, the kad
    modes at temperature 0 or 1, with rules of p alone.  A served base model checks this
    when a generation starts; the CLI checks it before any model loads."""
    rule = settings.checked_rule()
    if rule.kind not in partial.SUPPORTED:
        raise ValueError(
            f"{type(rule).__name__} needs the base model's whole distribution, which {url} returns "
            "only as top-k log-probabilities: use a dual, primal or nudging rule, or approximate=True (--approximate)"
        )
    if settings.mode == "base" and settings.temperature != 0:
        raise ValueError(
            f"mode 'base' samples the base model's whole distribution, which {url} returns only as "
            "top-k log-probabilities: use temperature 0 (greedy), or approximate=True (--approximate)"
        )
    if settings.temperature not in (0.0, 1.0):
        raise ValueError(
            f"temperature {settings.temperature}: the top-k log-probabilities of {url} determine π "
            "only at temperature 1 (and 0, greedy); use one of those, or approximate=True (--approximate)"
        )


class RemoteEngine:
    """A served base model behind the :class:`~kad.engines.Engine` protocol.

    ``base_url``: the API root, e.g. ``http://127.0.0.1:8000/v1``; ``model``: the served
    model's name (``None``: the one model the server serves); ``tokenizer``: the aligned model's, whose vocabulary the server's
    must be (checked here: ``ValueError`` naming both otherwise); ``api_key``: sent
    as a bearer token.  ``logprobs``: the k asked for first; ``max_logprobs``: the
    server's limit (default: learnt from its refusal of a larger k).  ``approximate``:
    score positions where the top-k does not determine π anyway (and temperatures
    other than 0 and 1) instead of stopping; such positions are counted.
    ``max_prompts``: prompts per request (vLLM refuses more than 1024 by default).
    ``timeout`` (s) per request, for the whole answer (a server that trickles its answer
    times out too), ``attempts`` per request, ``backoff`` (s) before the first retry,
    doubling.  ``device``: where the logits go (the aligned model's).  ``stop_ids``: the
    served model's own EOS ids (a row stops after any), as a local model's generation
    config gives them; default: read from the generation config of the model the server
    names (``root`` or id in ``/v1/models``) when its files are on this machine (a path, or
    a hub id in the local cache), else none beyond the aligned tokenizer's EOS, which the
    decoder adds.  ``transport``: an ``httpx`` transport (tests)."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        tokenizer: PreTrainedTokenizerBase,
        *,
        api_key: str | None = None,
        logprobs: int = 20,
        max_logprobs: int | None = None,
        approximate: bool = False,
        max_prompts: int = 1024,
        timeout: float = 60.0,
        attempts: int = 5,
        backoff: float = 0.5,
        device: str | torch.device = "cpu",
        stop_ids: Collection[int] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        check_count("logprobs", logprobs)
        check_count("max_logprobs", max_logprobs, minimum=logprobs, optional=True)
        check_count("max_prompts", max_prompts)
        check_count("attempts", attempts)
        check_seconds("timeout", timeout)
        check_seconds("backoff", backoff, zero=True)
        check_flag("approximate", approximate)
        check_api_key(api_key)  # before the tokenizer, as JsonClient would check it after
        tokenizer = checked_tokenizer("tokenizer", tokenizer)
        self._http = JsonClient(base_url, api_key=api_key, timeout=timeout, attempts=attempts, backoff=backoff,
                                root_404=_ROOT_404, transport=transport)  # fmt: skip
        self.url = self._http.url  # without credentials: it is shown and recorded
        self.model = model
        self._vocab_size = len(tokenizer)
        self._first_k, self._max_k = int(logprobs), None if max_logprobs is None else int(max_logprobs)
        self.approximate = approximate
        self.max_prompts = int(max_prompts)
        self.timeout, self.attempts, self.backoff = timeout, attempts, backoff
        self._requests, self._waited = 0, 0.0
        try:
            self._device = torch.device(device)
            given = None if stop_ids is None else checked_stop_ids(stop_ids, self._vocab_size)
            served = self._served_model()
            self._stop_ids = _local_stop_ids(served) if given is None else given
            model_len = served["max_model_len"]
            # A prompt of n tokens asks for one more (max_tokens=1), which the server counts: n + 1 <= max_model_len.
            self._max_length = None if model_len is None else model_len - 1
            self._check_vocabulary(tokenizer)
        except BaseException:  # no engine to close it later: its connections go now
            self._http.close()
            raise
        self._settings: Settings | None = None
        self.reset()

    def close(self) -> None:
        """Close the connections to the server; a closed engine refuses to run."""
        self._http.close()

    # ``base_url`` checked and without credentials, as the engine names it (before a model loads).
    checked_url = staticmethod(checked_url)

    # ------------------------------------------------------------------ the Engine protocol

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url}"

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def max_length(self) -> int | None:
        return self._max_length

    @property
    def stop_ids(self) -> frozenset[int]:
        return self._stop_ids

    @property
    def cached(self) -> int:
        return self._cached

    @property
    def requests(self) -> int:
        return self._requests

    @property
    def wait_s(self) -> float:
        return self._waited

    @property
    def partial_positions(self) -> int:
        return self._partial

    @property
    def inexact_positions(self) -> int:
        return self._inexact

    def reset(self, settings: Settings | None = None) -> None:
        """Start a generation; ``ValueError`` if its rule or temperature cannot be scored
        exactly from top-k log-probabilities (and ``approximate`` is off): the base mode
        only greedily, the kad modes at temperature 0 or 1."""
        if settings is not None and not self.approximate:
            check_servable(settings, self.url)
        self._settings = settings
        self._cached = 0
        self._requests = self._partial = self._inexact = 0
        self._waited = 0.0
        # raised within a generation when a position needs more; within the server's limit once learnt
        self._k = min(self._first_k, self._limit())

    def advance(self, batch: Batch, keep: int = 1) -> Tensor:
        prompts, slots = [], []
        mask = batch.mask.bool().cpu()
        tokens = batch.tokens.cpu()
        for row in range(tokens.shape[0]):
            for k, column in enumerate(range(batch.width - keep, batch.width)):
                if mask[row, column]:
                    prompts.append(tokens[row, : column + 1][mask[row, : column + 1]].tolist())
                    slots.append((row, k))
        logits = torch.zeros(tokens.shape[0], keep, self._vocab_size, dtype=torch.float32)
        if slots:
            top = self._score(prompts)
            rows, columns = zip(*slots)
            logits[list(rows), list(columns)] = partial.completed_logits(top, self._vocab_size)
        self._cached = batch.width
        return logits.to(self._device)

    def truncate(self, width: int) -> None:
        self._cached = min(self._cached, width)

    def select(self, rows: Tensor) -> None:
        pass  # the server keeps nothing per row

    # ------------------------------------------------------------------ scoring

    def _score(self, prompts: list[list[int]]) -> partial.TopK:
        """The top-k of every prompt, k raised for the positions where π is not yet exact."""
        top = self._top_k(prompts, self._k)
        k = top.k  # lower than asked if the server refused and told its limit
        settings = self._settings
        todo = torch.ones(len(prompts), dtype=torch.bool)
        if settings is not None:
            rule = settings.checked_rule()
            todo = ~partial.exact(rule, settings.temperature, top, self._vocab_size)
            # Where no k short of the whole row settles π (approximated), asking again costs for nothing.
            sharpens = partial.decided_by_top_k(rule, settings.temperature)
            while sharpens and todo.any() and k < self._limit() and k < self._vocab_size:
                k = min(4 * k, self._limit(), self._vocab_size)
                again = todo.nonzero()[:, 0].tolist()
                sharper = self._top_k([prompts[i] for i in again], k)
                k = sharper.k  # lower if the server refused k and told its limit
                top = partial.replace_rows(top, again, sharper)
                todo[again] = ~partial.exact(rule, settings.temperature, sharper, self._vocab_size)
                self._k = k  # the next positions are likely alike: start there
        self._partial += len(prompts)
        if todo.any() and settings is not None:
            if not self.approximate:
                what = repr(settings.rule) if settings.rule is not None else f"mode {settings.mode!r}"
                raise EngineError(
                    f"{self.url}: the top-{k} log-probabilities do not determine π for {what} at "
                    f"{int(todo.sum())} of {len(prompts)} positions; serve the model with a larger "
                    "--max-logprobs, or allow approximate=True (--approximate)"
                )
            self._inexact += int(todo.sum())
        return top

    def _limit(self) -> int:
        return self._max_k if self._max_k is not None else 1 << 30

    def _top_k(self, prompts: list[list[int]], k: int) -> partial.TopK:
        """The top-k of ``prompts``, in requests of at most :attr:`max_prompts` prompts."""
        size = self.max_prompts
        # Each part within the server's limit as learnt so far: a refusal of the first teaches the rest.
        parts = [
            self._top_k_request(prompts[i : i + size], min(k, self._limit())) for i in range(0, len(prompts), size)
        ]
        return parts[0] if len(parts) == 1 else partial.concatenate(parts)

    def _top_k_request(self, prompts: list[list[int]], k: int) -> partial.TopK:
        body = {
            "model": self.model,
            "prompt": prompts,
            "max_tokens": 1,
            "logprobs": k,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": -1,  # vLLM's sampling extensions, off: they must not touch what is sampled
            "repetition_penalty": 1.0,
            "n": 1,
            "return_tokens_as_token_ids": True,
        }
        while True:
            try:
                top, waited = self._http.request(
                    "POST", "/completions", body, refused=_logprobs_refused,
                    parse=lambda answer: _parse_top_k(answer, len(prompts), k, self._vocab_size),
                )  # fmt: skip
            except _LogprobsTooMany as refusal:  # learn the server's limit, ask again within it
                if refusal.limit >= k or refusal.limit < 1:
                    raise EngineError(f"{self.url}: refused logprobs={k}: {refusal}") from None
                self._max_k = k = body["logprobs"] = refusal.limit
                self._k = min(self._k, k)  # and start the next positions within it
            else:
                self._requests += 1
                self._waited += waited
                return top

    # ------------------------------------------------------------------ the server

    def _served_model(self) -> dict[str, Any]:
        """The server's entry for :attr:`model` (``/v1/models``; :attr:`model` set to the only
        one if it was None); ``ValueError`` if absent."""
        answer, _ = self._http.request("GET", "/models")
        entries = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            error = error_message(answer)
            what = f"an error answer: {error}" if error else "not an OpenAI-compatible model list"
            raise EngineError(f"{self.url}/models: {what}")
        names = [e.get("id") for e in entries]
        if self.model is None:
            if len(names) != 1:
                raise ValueError(f"{self.url} serves {names}: name the base model (--base-model)")
            self.model = names[0]
        entry = next((e for e in entries if e.get("id") == self.model), None)
        if entry is None:
            raise ValueError(f"{self.url} does not serve a model named {self.model!r}; it serves {names}")
        if not isinstance(entry.get("max_model_len"), int):
            entry = dict(entry, max_model_len=None)
        return entry

    def _check_vocabulary(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """The served model's tokenizer must be ``tokenizer``'s vocabulary (:mod:`.vocabulary`)."""

        def tokenize(text: str) -> list[int] | None:
            answer, _ = self._http.request("POST", "/tokenize", {"model": self.model, "prompt": text,
                                                                 "add_special_tokens": False}, root=True)  # fmt: skip
            return answer.get("tokens") if isinstance(answer, dict) else None

        def token_text(token: int) -> str | None:
            answer, _ = self._http.request("POST", "/detokenize", {"model": self.model, "tokens": [token]}, root=True)
            return answer.get("prompt") if isinstance(answer, dict) else None

        mismatch = vocabulary_mismatch(tokenizer, tokenize, token_text)
        if mismatch is not None:
            raise ValueError(
                f"the served model {self.model!r} at {self.url} and the aligned model's tokenizer "
                f"{getattr(tokenizer, 'name_or_path', '')!r} have different vocabularies: {mismatch}; "
                "KAD mixes the two distributions token by token"
            )


class _LogprobsTooMany(Exception):
    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit


def _logprobs_refused(message: str) -> None:
    """A refusal of a k above the server's limit: :class:`_LogprobsTooMany` with the limit it names."""
    limit = _MAX_LOGPROBS.search(message)
    if "logprobs" in message and limit:
        raise _LogprobsTooMany(message, int(limit.group(1)))


# What a 404 of /tokenize or /detokenize means: the API root has answered by then.
_ROOT_404 = (" (the server has no /tokenize and /detokenize at its root, which kad's vocabulary check needs as "
             "vLLM serves them: docs/remote.md)")  # fmt: skip


def _parse_top_k(answer: Any, count: int, k: int, vocab_size: int) -> partial.TopK:
    """``answer``'s top log-probabilities as a :class:`~kad.partial.TopK` of ``count`` rows;
    :class:`Retryable` for anything that does not fit the request: among it fewer than
    ``min(k, vocab_size)`` entries in a row (its k-th largest would not bound the tokens left
    out), or more mass left out than the tokens left out can hold below that bound."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if choices is None and (message := error_message(answer)):  # an error sent as a success
        raise Retryable(f"an error answer: {message}")
    if not isinstance(choices, list) or len(choices) != count:
        got = len(choices) if isinstance(choices, list) else "no"
        raise Retryable(f"an answer with {got} choices for {count} prompts")
    rows: list[dict[int, float] | None] = [None] * count
    for choice in choices:
        try:
            index, table = choice["index"], choice["logprobs"]["top_logprobs"][0]
            row = {int(str(key).removeprefix("token_id:")): float(value) for key, value in table.items()}
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise Retryable("an answer without token-id top_logprobs") from None
        if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
            raise Retryable(f"an answer with choice index {index!r}")
        total = sum(math.exp(v) for v in row.values() if v <= 0)
        garbled = any(not 0 <= i < _MAX_TOKEN_ID or math.isnan(v) or v > 1e-4 for i, v in row.items())
        if not row or garbled or total > 1 + 1e-3:
            raise Retryable("an answer whose log-probabilities are not a distribution")
        if len(row) < min(k, vocab_size):
            raise Retryable(f"an answer with {len(row)} log-probabilities where logprobs={k} were asked")
        probs = sorted((math.exp(min(v, 0.0)) for v in row.values()), reverse=True)
        bound, left_out_mass = probs[min(k, len(row)) - 1], 1 - sum(probs)
        left_out = vocab_size - sum(1 for i in row if i < vocab_size)
        if left_out_mass > bound * left_out + 1e-3:
            raise Retryable(f"an answer that leaves out {left_out_mass:.3g} of the mass, more than its "
                            f"{left_out} other tokens can hold at most {bound:.3g} each")  # fmt: skip
        rows[index] = row
    answered = cast("list[dict[int, float]]", rows)  # count choices, each index once: every row set
    width = max(len(r) for r in answered)
    ids = torch.full((count, width), -1, dtype=torch.long)
    logprobs = torch.full((count, width), -math.inf, dtype=torch.float32)
    for i, row in enumerate(answered):
        ids[i, : len(row)] = torch.tensor(list(row.keys()))
        logprobs[i, : len(row)] = torch.tensor(list(row.values())).clamp_max(0.0)
    return partial.TopK(ids, logprobs, k)


def _local_stop_ids(served: dict[str, Any]) -> frozenset[int]:
    """The EOS ids of the generation config of the model a server entry names (vLLM's ``root``:
    the path or hub id it serves, then its ``id``), read from this machine's files only; none
    when they are not here (another machine's path, a hub id not in the local cache).  A model
    saved without ``generation_config.json`` has the one transformers derives from its
    ``config.json``, as the local engine's model does."""
    for name in dict.fromkeys(n for n in (served.get("root"), served.get("id")) if isinstance(n, str) and n):
        try:
            config = GenerationConfig.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError):  # no generation config here: the model config's, if that is here
            try:
                config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(name, local_files_only=True))
            except (OSError, ValueError, KeyError):  # no such local files (or a model type unknown here)
                continue
        return frozenset(token_ids(config.eos_token_id))
    return frozenset()
