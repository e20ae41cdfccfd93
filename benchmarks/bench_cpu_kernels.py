"""CPU microbenchmarks of ``kk.sample`` and ``kk.verify`` (γ = 4) on pytest-benchmark.

Not part of the test suite (``testpaths`` is ``tests/`` and the name does not match
``test_*.py``); pytest collects a file named on its command line whatever its name:

    python -m pytest benchmarks/bench_cpu_kernels.py --benchmark-only      # the whole grid, 144 cases
    python benchmarks/bench_cpu_kernels.py -k "..."                        # the same: pytest, --benchmark-only
    python -m pytest benchmarks/bench_cpu_kernels.py --benchmark-only -k "V151936 and bf16 and (B1- or B64-)"
    python -m pytest benchmarks/bench_cpu_kernels.py --benchmark-only --benchmark-save=NAME
    python -m pytest benchmarks/bench_cpu_kernels.py --benchmark-only --benchmark-compare[=NNNN or FILE]
    python -m pytest benchmarks/bench_cpu_kernels.py --benchmark-only --torch-compile  # + torch.compile

Time: the 24 cases of the ``-k`` line took 4.4 min on 2 shared, busy cores; the whole
grid, about three times that (an estimate).  Most of it is the eager reference at B = 64 (verify,
primal: seconds a call, and pytest-benchmark runs at least 5 rounds).  On a shared
machine, ``OMP_WAIT_POLICY=PASSIVE`` keeps a descheduled OpenMP thread from stalling
the other at every parallel region (medians of the 2-thread runs otherwise jump 10×).

Grid: op (sample, verify γ = 4) × rule (dual ``kk.Dual(0.4)``, primal ``kk.Primal(0.9)``,
nudging ``kk.Nudging(0.4)``) × B (1, 8, 64) × V (32000, 151936) × dtype (bf16, fp32) ×
backend.  Backends: ``torch`` (the eager reference) and ``cpu`` (the C++ extension);
``torch-compile`` (``torch.compile`` of the reference, as in ``bench_kernels.py``) only
with ``--torch-compile`` (benchmarks/conftest.py): each (op, rule, dtype) compiles at
least twice (static shapes, then dynamic after the first new shape), 6–10 s a
compilation on the 2 cores here, minutes over the grid (Inductor's cache on disk
shortens a second run).  Not ``triton``: on CPU it is the interpreter.  Test ids read
``sample-dual-bf16-B64-V151936-cpu``: select with ``-k`` on any part of them.

Each (op, rule, dtype, B, V) is one pytest-benchmark group, so the backends sit side by
side (``--benchmark-group-by=group``, the default).  ``extra_info`` holds the effective
bandwidth from the median (``gbps``: ``2·B·V·itemsize`` bytes for sample,
``2·B·(γ+1)·V·itemsize`` for verify), the bytes and the device.  Inputs, the calls
(public API, ``check=False``, precomputed ``uniforms=``: no host sync timed) and the rules
come from ``bench_kernels.py``, seed 0.  One untimed call first (the C++ scratch rows,
torch.compile's compilation), then pytest-benchmark's rounds: by default at least 5, and
up to ``--benchmark-max-time`` seconds (1 s); all of torch's threads.

GPU numbers come from ``bench_kernels.py`` (do_bench with the L2 flushed, CUDA graphs):
pytest-benchmark times host wall clock only.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from bench_kernels import COMPILE, GAMMA, Inputs, configure_compile, make_call, make_rule

OPS = ("sample", "verify")
RULES = ("dual", "primal", "nudging")
BATCHES = (1, 8, 64)
VOCABS = (151936, 32000)  # largest first, as bench_kernels walks them
DTYPES = ("bf16", "fp32")
BACKENDS = ("torch", "cpu")
SEED = 0


class Case(NamedTuple):
    dtype: str
    op: str
    vocab: int
    batch: int
    rule: str
    backend: str

    def __str__(self) -> str:  # the test id
        return f"{self.op}-{self.rule}-{self.dtype}-B{self.batch}-V{self.vocab}-{self.backend}"

    @property
    def group(self) -> str:
        op = f"verify γ={GAMMA}" if self.op == "verify" else self.op
        return f"{op} {self.rule} {self.dtype} B={self.batch} V={self.vocab}"


def cases(with_compile: bool) -> list[Case]:
    """The grid, ordered so that consecutive cases share their inputs (``_inputs``)."""
    backends = (*BACKENDS, COMPILE) if with_compile else BACKENDS
    return [Case(dt, op, v, b, rule, backend) for dt in DTYPES for op in OPS for v in VOCABS for b in BATCHES
            for rule in RULES for backend in backends]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases(metafunc.config.getoption("torch_compile")), ids=str)


@functools.lru_cache(maxsize=1)
def _inputs(op: str, batch: int, vocab: int, dtype: str) -> Inputs:
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    return Inputs(torch, op, batch, vocab, dtypes[dtype], torch.device("cpu"), SEED)


@functools.cache
def _unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run on the CPU, or None."""
    import torch

    if backend == COMPILE:
        configure_compile(torch)
        return None
    from kad_kernels import _backends

    try:
        _backends.resolve(backend, torch.device("cpu"))
    except RuntimeError as exc:
        return str(exc)
    return None


@functools.cache
def _device() -> str:
    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu: {model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def test_kernel(benchmark, case: Case):
    import torch

    import kad_kernels as kk

    reason = _unavailable(case.backend)
    if reason:
        pytest.skip(f"backend {case.backend!r}: {reason}")
    x = _inputs(case.op, case.batch, case.vocab, case.dtype)
    call = make_call(torch, kk, case.backend, case.op, make_rule(kk, case.rule), x)
    call()  # untimed: C++ scratch rows, torch.compile's compilation
    benchmark.group = case.group
    benchmark.extra_info.update(op=case.op, rule=case.rule, dtype=case.dtype, B=case.batch, V=case.vocab,
                                gamma=GAMMA if case.op == "verify" else None, backend=case.backend,
                                bytes=x.bytes, device=_device())
    benchmark(call)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gbps"] = float(f"{x.bytes / benchmark.stats.stats.median / 1e9:.4g}")


if __name__ == "__main__":  # python benchmarks/bench_cpu_kernels.py [pytest options]: the commands above
    if importlib.util.find_spec("pytest_benchmark") is None:  # pytest would only say "unrecognized arguments"
        raise SystemExit("bench_cpu_kernels.py: error: needs pytest-benchmark: pip install -e '.[bench]'")
    raise SystemExit(pytest.main([__file__, "--benchmark-only", *sys.argv[1:]]))
