"""Compile the launches of a ``triton`` call for a GPU that is not there.

The interpreter that runs the kernels on CPU in CI accepts code the GPU compiler
refuses, and says nothing about how a kernel will run.  ``compile_launches`` runs
a backend operation on CPU tensors with every kernel launch intercepted; each is
bound and specialized exactly as Triton's launcher does on a GPU (argument
dtypes, 16-byte alignment, integers divisible by 16 or equal to 1) and compiled
for ``target`` with the ptxas in Triton's wheel.  ``resources`` then reads the
cubin: registers, spills, shared memory, the widths of the global loads, and the
occupancy and waves the grid would get — the static half of a profile — and
``ticket_faults`` reads the fences around each per-row ticket in its SASS, the
memory order the interpreter (one program at a time) cannot show.

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
from typing import Any, Callable
from unittest import mock

import torch
import triton
from triton import knobs
from triton._utils import find_paths_if, get_iterable_path
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction, create_function_from_signature

from ..rules import Kind
from . import layout, mixture, sample, verify

HOPPER = GPUTarget("cuda", 90, 32)
H100_SMS = 132


@dataclass(frozen=True)
class Launch:
    """One intercepted launch and its compiled kernel."""

    name: str
    grid: tuple[int, ...]
    num_warps: int
    kernel: triton.compiler.CompiledKernel

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

    def run(fn: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = _pack_args(fn, backend, kwargs, bound, specialization, options)
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
        grid = grid(bound) if callable(grid) else grid
        launches.append(Launch(fn.__name__, tuple(grid), options.num_warps, kernel))

    with mock.patch.object(JITFunction, "run", run), \
            mock.patch.object(layout, "multiprocessors", lambda device: multiprocessors):
        call()
    return launches


def _pack_args(
    fn: JITFunction, backend: CUDABackend, kwargs: dict[str, Any], bound: dict[str, Any], specialization: list[Any],
    options: Any,
) -> tuple[Any, dict[str, str], dict[Any, Any], dict[Any, Any]]:  # fmt: skip
    """(options, signature, constexprs, attrs) of a bound launch, as ``JITFunction.run``
    makes them before it compiles (``JITFunction._pack_args`` from triton 3.5 on)."""
    if hasattr(fn, "_pack_args"):
        return fn._pack_args(backend, kwargs, bound, specialization, options)
    options = backend.parse_options(kwargs)
    sigvals = [kind for kind, _ in specialization]
    signature = dict(zip((param.name for param in fn.params), sigvals))
    constexprs = {path: get_iterable_path(list(bound.values()), path)
                  for path in find_paths_if(sigvals, lambda _, val: val == "constexpr")}
    attrvals = ["" if kind == "constexpr" else attr for kind, attr in specialization]
    attrs = {path: backend.parse_attr(get_iterable_path(attrvals, path))
             for path in find_paths_if(attrvals, lambda _, x: isinstance(x, str))}
    return options, signature, constexprs, attrs


OPERATIONS = ("mixture", "sample", "verify")  # the backend's ops that operation() builds a call of


def operation(op: str, kind: Kind, batch: int, vocab: int, dtype: torch.dtype, *, gamma: int = 4,
              philox: bool = False, temperature: float = 1.0, per_row: bool = False) -> Callable[[], object]:
    """A call of the backend's ``op`` ("mixture", "sample" or "verify") on zero CPU
    tensors of the given shape: what ``compile_launches`` takes.  ``per_row``: the
    rule parameter and T as f32 [B] tensors rather than floats; ``maybe_greedy`` as
    the API sets it (False for a float T > 0: no arg-max launch)."""
    if op not in OPERATIONS:
        raise ValueError(f"op must be one of {', '.join(OPERATIONS)}, got {op!r}")
    maybe_greedy = per_row or temperature == 0
    shape = (batch, vocab) if op != "verify" else (batch, gamma + 1, vocab)
    p, q = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    ref = torch.zeros(shape, dtype=dtype) if kind == Kind.IMPLICIT_REWARD else None
    value = 0.5
    param: float | torch.Tensor = torch.full((batch,), value) if per_row else value
    temp: float | torch.Tensor = torch.full((batch,), temperature) if per_row else temperature
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
    usage = _cuobjdump(launch.kernel.asm["cubin"])[0]
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
    ops = opcodes(launch)
    loads = collections.Counter(
        next((part for part in op.split(".")[1:] if part not in qualifiers), "32")
        for op in ops if op.split(".")[0] == "LDG"
    )
    return Resources(registers, local, shared, blocks, launch.programs / (blocks * multiprocessors),
                     dict(loads), len(ops))


def opcodes(launch: Launch) -> list[str]:
    """The launch's SASS instructions in address order, each as its opcode and
    qualifiers (``MEMBAR.ALL.GPU``), predicate and operands dropped."""
    sass = _cuobjdump(launch.kernel.asm["cubin"])[1]
    return re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)", sass, re.M)


GLOBAL_WRITES = {"STG", "ST", "RED", "ATOMG", "ATOM"}


def ticket_faults(ops: list[str]) -> list[str]:
    """How each global atomic in ``ops`` (``opcodes``) falls short of the ticket
    protocol of ``layout.last_to_finish``, as ptxas lowers it for sm_70 and later:

        STG … BAR.SYNC … MEMBAR.*.GPU  ATOMG.*.STRONG.GPU  CCTL.IVALL … BAR.SYNC … LDG

    The barrier puts every thread's stores before the release (MEMBAR) of the one
    thread that takes the ticket; the atomic is ordered at GPU scope; its acquire
    invalidates the SM's L1 (CCTL.IVALL) before the barrier that hands the ticket
    to the other threads, so no thread reads another SM's partials before they are
    visible, nor from a stale L1 line or the non-coherent (CONSTANT) path.  The
    ticket code is straight-line, so address order is the order it runs in.
    Empty when every atomic keeps the protocol."""
    faults = []
    for i in (i for i, op in enumerate(ops) if op.startswith("ATOMG")):
        before, after = ops[:i], ops[i + 1:]
        stored = max((j for j, op in enumerate(before) if op.split(".")[0] in GLOBAL_WRITES), default=-1)
        since_store = before[stored + 1:]
        barrier = next((j for j, op in enumerate(since_store) if op.startswith("BAR.SYNC")), None)
        if barrier is None or not any(op.startswith("MEMBAR") and op.endswith((".GPU", ".SYS"))
                                      for op in since_store[barrier + 1:]):
            faults.append(f"{ops[i]} #{i}: the stores before it are not released (no BAR.SYNC then "
                          "MEMBAR at GPU scope after the last global store)")
        if not ops[i].endswith((".STRONG.GPU", ".STRONG.SYS")):
            faults.append(f"{ops[i]} #{i}: not ordered at GPU scope")
        handed = next((j for j, op in enumerate(after) if op.startswith("BAR.SYNC")), len(after))
        if "CCTL.IVALL" not in after[:handed]:
            faults.append(f"{ops[i]} #{i}: no acquire (CCTL.IVALL) before the barrier that shares its result")
        if any(op.startswith("LDG") for op in after[:handed]):
            faults.append(f"{ops[i]} #{i}: a global load before the barrier that shares its result")
        if any(op.startswith("LDG") and "CONSTANT" in op for op in after):
            faults.append(f"{ops[i]} #{i}: a non-coherent (CONSTANT) global load after it")
    return faults
