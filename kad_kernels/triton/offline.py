"""Compile the launches of a ``triton`` call for a GPU that is not there.

The interpreter that runs the kernels on CPU in CI accepts code the GPU compiler
refuses, and says nothing about how a kernel will run.  ``compile_launches`` runs
a backend operation on CPU tensors with every kernel launch intercepted; each is
bound and specialized exactly as Triton's launcher does on a GPU (argument
dtypes, 16-byte alignment, integers divisible by 16 or equal to 1) and compiled
for ``target`` with the ptxas in Triton's wheel.  ``resources`` then reads the
cubin: registers, spills, shared memory, the widths of the global loads, and the
occupancy and waves the grid would get — the static half of a profile.

Must run in a process without ``TRITON_INTERPRET=1`` (the kernels are then plain
``JITFunction`` objects).  Needs no GPU and no CUDA driver.
"""

from __future__ import annotations

import collections
import functools
import math
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Callable
from unittest import mock

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction, create_function_from_signature

from ..rules import Kind
from . import mixture, sample, stats, verify

HOPPER = GPUTarget("cuda", 90, 32)
H100_SMS = 132


@dataclass(frozen=True)
class Launch:
    """One intercepted launch and its compiled kernel."""

    name: str
    grid: tuple[int, ...]
    num_warps: int
    kernel: object  # triton.compiler.CompiledKernel

    @property
    def programs(self) -> int:
        return math.prod(self.grid)


def compile_launches(call: Callable[[], object], target: GPUTarget = HOPPER,
                     multiprocessors: int = H100_SMS) -> list[Launch]:
    """Run ``call`` (a backend operation on CPU tensors) with each Triton launch
    compiled for ``target`` instead of run; ``multiprocessors`` is what the
    backend's layout sees as the GPU's SM count.  The call's outputs are garbage."""
    backend = CUDABackend(target)
    launches: list[Launch] = []

    def run(fn: JITFunction, *args, grid, warmup, **kwargs):
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
        grid = grid(bound) if callable(grid) else grid
        launches.append(Launch(fn.__name__, tuple(grid), options.num_warps, kernel))

    with mock.patch.object(JITFunction, "run", run), \
            mock.patch.object(stats, "multiprocessors", lambda device: multiprocessors):
        call()
    return launches


def operation(op: str, kind: Kind, batch: int, vocab: int, dtype: torch.dtype, *, gamma: int = 4,
              philox: bool = False, temperature: float = 1.0, per_row: bool = False) -> Callable[[], object]:
    """A call of the backend's ``op`` ("mixture", "sample" or "verify") on zero CPU
    tensors of the given shape: what ``compile_launches`` takes.  ``per_row``: the
    rule parameter and T as f32 [B] tensors rather than floats; ``maybe_greedy`` as
    the API sets it (False for a float T > 0: no arg-max launch)."""
    maybe_greedy = per_row or temperature == 0
    shape = (batch, vocab) if op != "verify" else (batch, gamma + 1, vocab)
    p, q = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    ref = torch.zeros(shape, dtype=dtype) if kind == Kind.IMPLICIT_REWARD else None
    param, temp = 0.5, temperature
    if per_row:
        param, temp = torch.full((batch,), param), torch.full((batch,), temp)
    seed = offset = torch.zeros(1, dtype=torch.int64)
    if op == "mixture":
        return lambda: mixture.mixture(kind, param, p, q, ref, temp)
    if op == "sample":
        u = None if philox else torch.zeros(batch)
        return lambda: sample.sample(kind, param, p, q, ref, temp, u, seed, offset, maybe_greedy)
    draft = torch.zeros(batch, gamma, dtype=torch.int64)
    a, s = (None, None) if philox else (torch.zeros(batch, gamma), torch.zeros(batch))
    return lambda: verify.verify(kind, param, p, q, ref, draft, temp, a, s, seed, offset, maybe_greedy)


@dataclass(frozen=True)
class Resources:
    registers: int
    local_bytes: int  # spills (and stack arrays) per thread
    shared_bytes: int
    blocks_per_sm: int
    waves: float
    loads: dict[str, int]  # global load instructions by width, e.g. {"128": 4, "U16": 2}
    instructions: int


# Hopper (sm_90) per-SM limits: registers are allocated per warp in units of 256.
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 228 * 1024
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32


@functools.lru_cache(maxsize=None)
def _cuobjdump(cubin: bytes) -> tuple[str, str]:
    """(resource usage, SASS) of a cubin; launches of one kernel share theirs."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        tool = knobs.nvidia.cuobjdump.path
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    return usage, sass


def resources(launch: Launch, multiprocessors: int = H100_SMS) -> Resources:
    """Static resources of a compiled launch, read from its cubin with cuobjdump."""
    usage, sass = _cuobjdump(launch.kernel.asm["cubin"])
    fields = dict(re.findall(r"(REG|SHARED|LOCAL):(\d+)", usage))
    registers, local = int(fields["REG"]), int(fields["LOCAL"])
    shared = max(int(fields["SHARED"]), launch.kernel.metadata.shared)
    warp_registers = -(-registers * 32 // 256) * 256
    warps = launch.num_warps
    blocks = min(
        REGISTERS_PER_SM // warp_registers // warps,
        SHARED_PER_SM // shared if shared else MAX_BLOCKS_PER_SM,
        MAX_WARPS_PER_SM // warps,
        MAX_BLOCKS_PER_SM,
    )
    # LDG.E[.EL|.EF][.128|.64|.U16|...][.STRONG.GPU]: count by width (no suffix = 32 bits),
    # cache hints and memory-model qualifiers aside.
    qualifiers = {"E", "EL", "EF", "STRONG", "GPU", "SYS"}
    loads = collections.Counter(
        next((part for part in m.split(".")[1:] if part not in qualifiers), "32")
        for m in re.findall(r"\bLDG((?:\.\w+)+)", sass)
    )
    instructions = len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass, re.M))
    return Resources(registers, local, shared, blocks, launch.programs / (blocks * multiprocessors),
                     dict(loads), instructions)
