"""The llama.cpp engine: a GGUF model run by llama.cpp through llama-cpp-python's C API.

On a CPU, quantized GGUF models in llama.cpp decode several times faster than
the same models in PyTorch.  This engine keeps one llama context with one
llama *sequence* per row of the batch, so each :meth:`LlamaCppEngine.advance` is
a single ``llama_decode`` over all rows' new tokens: the weights are read once
per step for the whole batch, not once per row.

**Layout.**  llama.cpp has no padding columns: a sequence holds only its row's
real tokens, at positions 0, 1, …  The batch's masked columns are therefore
never fed; a real column goes in at its position id (:mod:`kad.batch` counts
real tokens the same way).  Masks change only by :meth:`Batch.reject
<kad.batch.Batch.reject>`, which masks the tail of a row's fed tokens, so a row's
cache is stale exactly from the number of its real tokens among the cached
columns on: each advance first removes that tail from the sequence
(``llama_memory_seq_rm``), then feeds the new columns.

**Numerics.**  llama.cpp's quantized matrix kernels differ with the number of
tokens in one ``llama_decode`` (the same tokens fed 3 at once or 2 + 1 can
differ by tenths of a logit on Q4_K_M weights), so a speculative round, which
verifies γ + 1 positions in one call, can score a position slightly differently
from one-token-at-a-time decoding.  See ``docs/llamacpp.md``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ..batch import Batch
from ..errors import ContextLengthWarning, EngineError
from ..settings import Settings
from .arguments import check_count, checked_tokenizer
from .turns import Hold
from .vocabulary import vocabulary_mismatch

INSTALL_HINT = "pip install 'kad-kernels[llamacpp]' (compiles llama.cpp: cmake and a C++ compiler, a few minutes)"

# llama_decode's return codes that are not plain failures.
_NO_KV_SLOT, _ABORTED = 1, 2
# Sequences one llama context can hold (LLAMA_MAX_SEQ in llama.cpp's src/llama-cparams.h).
MAX_ROWS = 256


def check_n_ctx(n_ctx: int | None) -> None:
    """``ValueError`` naming ``n_ctx`` unless it is ``None`` or positions one context can
    hold: llama.cpp counts them (``n_ctx`` per row, :data:`MAX_ROWS` rows) in a uint32."""
    check_count("n_ctx", n_ctx, maximum=(2**32 - 1) // MAX_ROWS, optional=True)


def _import_llama_cpp() -> ModuleType:
    try:
        import llama_cpp
    except ImportError as error:
        raise ImportError(f"the llama.cpp engine needs llama-cpp-python: {INSTALL_HINT}") from error
    return llama_cpp


class _Log:
    """llama.cpp's log (one for the process) on stderr in full while llama-cpp-python's logger
    is at DEBUG (``verbose=True``, here or in a ``llama_cpp.Llama``), else not at all.
    llama-cpp-python 0.3.36 reads ggml's log levels from an older enum (its WARN as an error,
    its ERROR as debug), so that a default GGUF's harmless load warnings showed on every run
    while the errors were hidden; kad's own messages say what failed."""

    logger = logging.getLogger("llama-cpp-python")
    callback = None  # the ctypes callback llama.cpp holds: kept alive here, made once
    _made = threading.Lock()

    @classmethod
    def set(cls, llama_cpp: ModuleType, verbose: bool) -> None:
        cls.logger.setLevel(logging.DEBUG if verbose else logging.ERROR)  # as llama_cpp.Llama sets it
        with cls._made:
            if cls.callback is None:
                cls.callback = llama_cpp.llama_log_callback(cls._write)
                llama_cpp.llama_log_set(cls.callback, ctypes.c_void_p(0))

    @classmethod
    def _write(cls, level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if cls.logger.level <= logging.DEBUG:
            sys.stderr.write(text.decode("utf-8", errors="replace"))
            sys.stderr.flush()


def _amx_kernels(llama_cpp: ModuleType) -> bool:
    """Whether this llama.cpp build has its AMX matrix kernels (llama.cpp's system info)."""
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def _threads() -> int:
    """The CPUs this process may run on (llama-cpp-python's default is half the cores)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class LlamaCppEngine:
    """A GGUF model in llama.cpp behind the :class:`~kad.engines.Engine` protocol.

    ``model_path``: the ``.gguf`` file.  ``tokenizer``: the aligned model's; the GGUF's
    own tokenizer must read the same (checked: ``ValueError`` naming both), and
    logits are cut to its ``len(tokenizer)`` tokens (GGUF files pad the vocabulary).
    ``n_ctx``: positions per row (default: the model's training context, at most
    4096); the KV cache holds ``n_ctx`` per row of the largest batch seen.
    ``n_threads``: CPU threads (default: every CPU this process may use).
    ``n_batch``: tokens per ``llama_decode`` (longer feeds are split).
    ``n_gpu_layers``: layers offloaded to a GPU build of llama.cpp (logits still
    come back to the CPU).  ``kv_unified``: one KV buffer for all rows instead of
    one per row (llama.cpp's option; per row is faster when rows share no prefix).
    ``extra_buffers``: weights in llama.cpp's extra buffer types (repacked for its
    faster CPU kernels; default: yes, unless the build has the AMX kernels, which
    crashed).  ``verbose``: llama.cpp's log on stderr."""

    def __init__(
        self,
        model_path: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = 2048,
        n_gpu_layers: int = 0,
        kv_unified: bool = False,
        extra_buffers: bool | None = None,
        verbose: bool = False,
    ) -> None:
        check_n_ctx(n_ctx)
        check_count("n_batch", n_batch)
        check_count("n_threads", n_threads, optional=True)
        check_count("n_gpu_layers", n_gpu_layers, minimum=0)
        llama_cpp = _import_llama_cpp()
        # llama.cpp's handles (ctypes objects): what close() frees, once made
        self._model: Any = None
        self._ctx: Any = None
        self._llama_batch: Any = None
        self._lib = llama_cpp
        _Log.set(llama_cpp, verbose)
        if not isinstance(model_path, (str, os.PathLike)):
            raise TypeError(f"model_path must be the path of a GGUF file, got {model_path!r:.80}")
        if tokenizer is not None:  # a hub id or a path has a len() too: that of the string
            checked_tokenizer("tokenizer", tokenizer)
        self.path = Path(model_path).expanduser()
        if self.path.is_dir():
            raise ValueError(f"GGUF model {str(model_path)!r}: a directory, not a .gguf file")
        if not self.path.is_file():
            raise ValueError(f"GGUF model {str(model_path)!r}: no such file")
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        # llama.cpp's AMX matrix kernels (llama-cpp-python 0.3.36, built with -march=native on an
        # AMX Xeon) crashed in ggml_backend_amx_mul_mat on any call of more than one token.  They
        # run only on weights in llama.cpp's "extra" buffer types, so such a build loads the
        # weights without those (its repacked AVX kernels go too: about 14 % slower here); a
        # build without AMX keeps them (docs/llamacpp.md).
        self.extra_buffers = not _amx_kernels(llama_cpp) if extra_buffers is None else extra_buffers
        params.use_extra_bufts = self.extra_buffers
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise ValueError(f"GGUF model {str(model_path)!r}: llama.cpp cannot load it (see verbose=True)")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._vocab_size = self._n_vocab if tokenizer is None else len(tokenizer)
        if not 0 < self._vocab_size <= self._n_vocab:  # not this model's vocabulary (probed below when it fits)
            source = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ValueError(
                f"the vocabularies differ: the tokenizer {source!r} has {self._vocab_size} tokens, "
                f"the GGUF model {self.name!r} {self._n_vocab}"
            )
        trained = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_ctx = int(n_ctx) if n_ctx is not None else min(trained, 4096)
        if 0 < trained < self.n_ctx:  # the loop stops rows at n_ctx, so this is where it says so
            warnings.warn(
                f"n_ctx={self.n_ctx} is past the context length {trained} that {self.name} was trained on: "
                "its logits there are outside what it was trained on",
                ContextLengthWarning,
                stacklevel=2,
            )
        self.n_threads = int(n_threads) if n_threads is not None else _threads()
        self.n_batch = int(n_batch)
        self.kv_unified = kv_unified
        # llama.cpp's own end-of-generation set, where its own generation stops: EOS, EOT and
        # the tokens its vocabulary loader marks (Qwen's <|endoftext|> beside <|im_end|>, as
        # its transformers generation config lists both; its FIM separators too).
        self._stop_ids = frozenset(i for i in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, i))
        self._rows_capacity = 0  # the context is made on the first advance, for that many rows
        # A recurrent state cannot be cut back to a position, so rejected drafts cannot be dropped.
        self._recurrent = ("recurrent" if llama_cpp.llama_model_is_recurrent(self._model)
                           else "hybrid recurrent" if llama_cpp.llama_model_is_hybrid(self._model) else "")  # fmt: skip
        if tokenizer is not None:
            self._check_vocabulary(tokenizer)
        self.reset()

    def close(self) -> None:
        """Free llama.cpp's context and model (also done when the engine is collected);
        a closed engine refuses to run.  A generation of kad's loop (``kad.Decoder``,
        ``kad.decode``, ``kad.hf.generate``) that another thread runs on it ends first (its memory
        is in use); one in this thread (closing from its streamer) is a ``RuntimeError``.  A
        ``KADLogitsProcessor`` generation holds no turn between transformers' steps: close its
        engine only once it has ended."""
        hold = Hold([self])
        try:
            hold.take()
            self._free()
        finally:
            hold.ended = True  # first: no Ctrl-C lands before it (kad.engines.turns)
            hold.wake()

    def _free(self) -> None:
        lib = self._lib
        self._rows_capacity = 0
        if self._llama_batch is not None:
            lib.llama_batch_free(self._llama_batch)
            self._llama_batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # no generation holds an engine being collected: no turn to wait for
        if hasattr(self, "_lib"):
            self._free()

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"a LlamaCppEngine ({self.name}) holds llama.cpp's model and context, which cannot be pickled or "
            "copied: make another LlamaCppEngine from the same file"
        )

    # ------------------------------------------------------------------ the Engine protocol

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def max_length(self) -> int | None:
        return self.n_ctx

    @property
    def stop_ids(self) -> frozenset[int]:
        return self._stop_ids

    @property
    def cached(self) -> int:
        return self._cached

    def reset(self, settings: Settings | None = None) -> None:
        self._check_open()
        if settings is not None and settings.speculative and self._recurrent:
            raise ValueError(
                f"{settings.mode} needs a model whose cache can drop rejected drafts; the llama.cpp model "
                f"{self.name!r} keeps {self._recurrent} state: use a mode without drafts"
            )
        if self._ctx:
            self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        self._cached = 0
        self._sequences: list[int] = []  # the llama sequence id of each row
        self._fed = torch.zeros(0, dtype=torch.long)  # [B] real tokens in each row's sequence

    def advance(self, batch: Batch, keep: int = 1) -> Tensor:
        self._check_open()
        start, end = self._cached, batch.width
        if not 0 < keep <= end - start:
            raise ValueError(f"keep must be in [1, {end - start}] (the new columns), got {keep}")
        rows = batch.tokens.shape[0]
        if not self._sequences:
            self._open(rows)
        mask = batch.mask.cpu()
        self._drop_stale(mask[:, :start].sum(-1))

        # The new real tokens, row by row, with the (row, k) of those whose logits are kept.
        new = mask[:, start:end].bool()
        tokens = batch.tokens[:, start:end].cpu()[new]
        positions = batch.positions[:, start:end].cpu()[new]
        row_of = torch.arange(rows)[:, None].expand(-1, end - start)[new]
        column = torch.arange(start, end)[None, :].expand(rows, -1)[new]
        wanted = column >= end - keep
        if positions.numel() and int(positions.max()) >= self.n_ctx:
            raise EngineError(f"llama.cpp model {self.name}: a row needs more than n_ctx = {self.n_ctx} positions")

        # Masked columns among the kept ones hold no token: uniform logits there.
        every = int(wanted.sum()) == rows * keep
        logits = (torch.empty if every else torch.zeros)(rows, keep, self._vocab_size)
        for first in range(0, len(tokens), self.n_batch):
            chunk = slice(first, first + self.n_batch)
            outputs = self._decode(tokens[chunk], positions[chunk], row_of[chunk], wanted[chunk])
            if outputs is not None:  # llama.cpp's buffer, copied once, into its places
                logits[row_of[chunk][wanted[chunk]], column[chunk][wanted[chunk]] - (end - keep)] = outputs
        self._fed = self._fed + new.sum(-1)
        self._cached = end
        return logits

    def truncate(self, width: int) -> None:
        # The columns past `width` are masked in every row (Batch.truncate's contract), so
        # the next advance removes them from the sequences by counting real tokens.
        self._cached = min(self._cached, width)

    def select(self, rows: Tensor) -> None:
        if not self._sequences:  # nothing fed yet (an aligned model the rule has not needed): nothing to keep
            return
        self._check_open()
        kept_rows: list[int] = rows.tolist()
        kept = {self._sequences[r] for r in kept_rows}
        free = [s for s in range(self._rows_capacity) if s not in kept]
        if len(kept_rows) - len(kept) > len(free):  # refused before the cache is touched
            raise ValueError(f"select keeps {len(kept_rows)} rows, more than the {self._rows_capacity} "
                             "sequences of this generation's llama context")  # fmt: skip
        memory = self._lib.llama_get_memory(self._ctx)
        for s in free:
            self._lib.llama_memory_seq_rm(memory, s, -1, -1)
        sequences, used = [], set()
        for r in kept_rows:
            sequence = self._sequences[r]
            if sequence in used:  # a row kept twice: its copy needs a sequence of its own
                copy = free.pop()
                self._lib.llama_memory_seq_cp(memory, sequence, copy, -1, -1)
                sequence = copy
            used.add(sequence)
            sequences.append(sequence)
        self._sequences = sequences
        self._fed = self._fed[torch.tensor(kept_rows, dtype=torch.long)]

    # ------------------------------------------------------------------ llama.cpp

    def _check_open(self) -> None:
        if not self._model:
            raise EngineError(f"llama.cpp model {self.name}: the engine is closed (close() freed the model)")

    def _open(self, rows: int) -> None:
        """Sequences 0 … rows-1 for the rows, in a context with room for them."""
        lib = self._lib
        if rows > MAX_ROWS:
            raise EngineError(f"llama.cpp model {self.name}: {rows} rows, but llama.cpp decodes at most {MAX_ROWS} "
                              "sequences at a time: decode in smaller batches")  # fmt: skip
        if rows > self._rows_capacity:
            if self._ctx:
                lib.llama_free(self._ctx)
                # Until the new context is made: a failure below must not leave a smaller batch
                # decoding on the freed one.
                self._ctx, self._rows_capacity = None, 0
            params = lib.llama_context_default_params()
            params.n_ctx = self.n_ctx * rows
            # llama.cpp reserves an output per sequence within one batch (it aborts the process
            # otherwise), so the context's batch holds every row even if a decode feeds fewer.
            params.n_batch = params.n_ubatch = max(min(self.n_batch, params.n_ctx), rows)
            params.n_seq_max = rows
            params.n_threads = params.n_threads_batch = self.n_threads
            params.kv_unified = self.kv_unified
            params.no_perf = True
            self._ctx = lib.llama_init_from_model(self._model, params)
            if not self._ctx:
                raise EngineError(f"llama.cpp model {self.name}: cannot make a context for {rows} rows of "
                                  f"{self.n_ctx} positions (memory?)")  # fmt: skip
            self._rows_capacity = rows
            if self._llama_batch is None:
                self._llama_batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._sequences = list(range(rows))
        self._fed = torch.zeros(rows, dtype=torch.long)

    def _drop_stale(self, real: Tensor) -> None:
        """Remove each row's tokens past its ``real`` [B] real cached tokens (rejected drafts)."""
        stale = (self._fed > real).nonzero().flatten().tolist()
        if stale:
            memory = self._lib.llama_get_memory(self._ctx)
            for row in stale:
                if not self._lib.llama_memory_seq_rm(memory, self._sequences[row], int(real[row]), -1):
                    raise EngineError(f"llama.cpp model {self.name}: cannot drop the cached tokens of row {row} "
                                      f"past position {int(real[row])}")  # fmt: skip
            self._fed = torch.minimum(self._fed, real)

    def _decode(self, tokens: Tensor, positions: Tensor, rows: Tensor, wanted: Tensor) -> Tensor | None:
        """One ``llama_decode`` of ``tokens`` [N] at ``positions`` [N] in the sequences of
        ``rows`` [N]; the logits of the ``wanted`` [N] ones, ``[wanted.sum(), vocab_size]``,
        a view of llama.cpp's buffer (copy it before the next decode)."""
        lib, count = self._lib, len(tokens)
        if count == 0:
            return None
        b = self._llama_batch
        b.n_tokens = count
        # The arrays are named so that they live until copied.
        token_ids, token_positions = tokens.to(torch.int32).numpy(), positions.to(torch.int32).numpy()
        one_sequence, output = np.ones(count, dtype=np.int32), wanted.to(torch.int8).numpy()
        ctypes.memmove(b.token, token_ids.ctypes.data, 4 * count)
        ctypes.memmove(b.pos, token_positions.ctypes.data, 4 * count)
        ctypes.memmove(b.n_seq_id, one_sequence.ctypes.data, 4 * count)
        ctypes.memmove(b.logits, output.ctypes.data, count)
        for i, row in enumerate(rows.tolist()):
            b.seq_id[i][0] = self._sequences[row]
        code = lib.llama_decode(self._ctx, b)
        if code != 0:
            reason = {_NO_KV_SLOT: "no room left in the KV cache", _ABORTED: "aborted"}.get(code, f"error {code}")
            raise EngineError(f"llama.cpp model {self.name}: llama_decode of {count} tokens failed: {reason}")
        outputs = int(wanted.sum())
        if outputs == 0:
            return None
        # A view of llama.cpp's logits buffer, valid until the next decode.
        array = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(outputs, self._n_vocab))
        return torch.from_numpy(array)[:, : self._vocab_size]

    def _tokenize(self, text: str) -> list[int] | None:
        data = text.encode()
        capacity = len(data) + 16
        ids = (self._lib.llama_token * capacity)()
        count = self._lib.llama_tokenize(self._vocab, data, len(data), ids, capacity, False, True)
        return list(ids[:count]) if count >= 0 else None

    def _token_text(self, token: int) -> str | None:
        buffer = ctypes.create_string_buffer(256)
        count = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, True)
        return buffer.raw[:count].decode(errors="replace") if count >= 0 else None

    def _check_vocabulary(self, tokenizer: PreTrainedTokenizerBase) -> None:
        mismatch = vocabulary_mismatch(tokenizer, self._tokenize, self._token_text)
        if mismatch is not None:
            raise ValueError(
                f"the GGUF model {self.name!r} and the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} have "
                f"different vocabularies: {mismatch}; KAD mixes the distributions token by token"
            )
