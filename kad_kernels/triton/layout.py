"""How the ``triton`` backend cuts one call's logits into programs (docs/design.md §4, Slices).

The logits ``[B, P, V]`` (``P`` = γ+1 positions in verify, 1 otherwise) are
``N = B·P`` rows of ``V`` tokens; row ``n`` is batch row ``n // P`` at position
``n % P``.  Each row is cut into ``S`` slices of whole ``BLOCK``-token chunks, and
program ``(n, j)`` handles slice ``j`` of row ``n``, so that a batch of one still
fills the GPU (``S = 1`` for large batches).  Kernels take these counts as
``rows``, ``positions``, ``vocab`` and ``slices``; the shape comments on their
pointers use the letters.

Here: the cut (host side), and the device helpers that address a program's row,
slice and chunks, read the per-row values (T, the rule parameter) and count a
row's finished programs (tickets).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._backend import value_args


# One block size for every vocabulary: each distinct value would be one more
# compile of every kernel, and masked lanes cost nothing on a memory-bound pass.
# The radix histogram holds [16, HIST_BLOCK] values, hence its smaller block.
BLOCK = 2048
HIST_BLOCK = 512
NUM_WARPS = 8  # 256 threads: 8 elements, one 16-byte bf16 load, per thread and chunk


# Resident programs per SM of the streaming passes (8 warps, <= 64 registers: see
# benchmarks/kernel_resources.py), so one wave of the grid is 4 programs per SM.
# The passes over whole rows are capped at that register count (ptxas would take
# 72-80 for their prefetched chunk), the draws they end with included (which alone
# would take 210-250 for their 4-chunk steps; capped, they do not spill).
PROGRAMS_PER_SM = 4
MAX_REGISTERS = 64


@dataclass(frozen=True)
class Layout:
    """How the logits of one call are cut: ``rows`` = N, ``positions`` per batch row
    (γ+1 in verify, 1 in sample), ``slices`` = S of ``slice_len`` (a multiple of BLOCK)."""

    rows: int
    positions: int
    vocab: int
    slice_len: int
    slices: int

    @property
    def slices_pow2(self) -> int:
        return triton.next_power_of_2(self.slices)


@functools.cache
def _cuda_multiprocessors(index: int) -> int:
    """SM count of CUDA device ``index``, queried once (a query per call is host time)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessors(device: torch.device) -> int:
    """SMs to fill on ``device``; the interpreter on CPU gets a small stand-in."""
    if device.type != "cuda":
        return 2
    return _cuda_multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


def layout(rows: int, positions: int, vocab: int, device: torch.device) -> Layout:
    """Cut each row into slices of whole chunks: see ``_chunks_per_slice``."""
    chunks = triton.cdiv(vocab, BLOCK)
    slice_len = _chunks_per_slice(rows, chunks, PROGRAMS_PER_SM * multiprocessors(device)) * BLOCK
    return Layout(rows, positions, vocab, slice_len, triton.cdiv(vocab, slice_len))


@functools.cache
def _chunks_per_slice(rows: int, chunks: int, slots: int) -> int:
    """The slice length, in chunks, whose grid of rows × slices programs fills its
    waves of ``slots`` programs best, within two waves (the passes are latency-bound,
    so a last wave a tenth full costs nearly a whole wave; more, shorter slices only
    add partial statistics to combine).  Ties go to fewer, longer slices."""
    def fill(per_slice: int) -> tuple[float, int]:
        programs = rows * triton.cdiv(chunks, per_slice)
        return programs / (triton.cdiv(programs, slots) * slots), per_slice
    balanced = {triton.cdiv(chunks, slices) for slices in range(1, chunks + 1)}  # even slices only
    return max((c for c in balanced if c == chunks or rows * triton.cdiv(chunks, c) <= 2 * slots), key=fill)


@triton.jit
def row_offset(n, positions, stride_b, stride_p):
    """Element offset of row ``n`` = (batch row n // positions, position n % positions)."""
    return (n // positions).to(tl.int64) * stride_b + (n % positions).to(tl.int64) * stride_p


@triton.jit
def slice_bounds(j, slice_len, vocab):
    """[start, end) of slice ``j`` of a row."""
    start = j * slice_len
    return start, tl.minimum(start + slice_len, vocab)


@triton.jit
def chunk_logits(ptr, row, off, end, BLOCK: tl.constexpr, POLICY: tl.constexpr):
    """The logits of the chunk at ``off`` in their own dtype, −inf at and past ``end``."""
    cols = off + tl.arange(0, BLOCK)
    return tl.load(ptr + row + cols, mask=cols < end, other=float("-inf"), eviction_policy=POLICY)


@triton.jit
def chunk_rows(ptr, row, off, end, BLOCK: tl.constexpr, VEC: tl.constexpr, POLICY: tl.constexpr):
    """The chunk at ``off`` as a ``[BLOCK // VEC, VEC]`` tile of logits in their own
    dtype, −inf at and past ``end``: a tile row is VEC contiguous logits, one 16-byte
    load, held by one thread, so reducing along it costs no communication."""
    cols = off + tl.arange(0, BLOCK // VEC)[:, None] * VEC + tl.arange(0, VEC)[None, :]
    return tl.load(ptr + row + cols, mask=cols < end, other=float("-inf"), eviction_policy=POLICY)


@triton.jit
def row_value(values_ptr, value, b):
    """Batch row b's T, λ or budget: ``values_ptr[b]`` (f32 [B]), or ``value`` for every
    row when the pointer is None (a float from the API: no device tensor, so no fill
    launch per call: two would take a fifth of B = 1's time).  None is a constexpr,
    so each form compiles without the other's branch."""
    if values_ptr is None:
        return value
    else:
        return tl.load(values_ptr + b)


@triton.jit
def last_to_finish(ticket_ptr, n, count):
    """Count this program as finished on row n's ticket (zeroed by pass 1); true for the
    program that brings it to ``count``, which may then read what the others wrote.
    The barrier puts every thread's stores before the atomic's release; its acquire
    comes before the caller's reads, which go to L2 (``slice_stats``, ``greedy_token``,
    ``drawn_last_token``) past any stale L1 line.  ``offline.ticket_faults`` checks
    that order in the compiled code."""
    tl.debug_barrier()
    return tl.atomic_add(ticket_ptr + n, 1, sem="acq_rel") == count - 1


def row_values(param, temperature) -> dict:
    """The kernels' ``temp_ptr, temp_value, param_ptr, param_value`` (``row_value``) of
    T and the rule parameter, each a tensor [B] or a float."""
    temp_ptr, temp_value = value_args(temperature)
    param_ptr, param_value = value_args(param)
    return dict(temp_ptr=temp_ptr, temp_value=temp_value, param_ptr=param_ptr, param_value=param_value)


def row_geometry(p, cut: Layout) -> dict:
    """The kernels' ``rows, vocab, positions, stride_b, stride_p, slice_len, slices`` of
    logits p [B, V] or [B, P, V] cut as ``cut`` (``row_offset``, ``slice_bounds``)."""
    return dict(
        rows=cut.rows, vocab=cut.vocab, positions=cut.positions, stride_b=p.stride(0),
        stride_p=p.stride(1) if p.dim() == 3 else 0, slice_len=cut.slice_len, slices=cut.slices,
    )
