#!/usr/bin/env python
"""Benchmark ``kk.sample`` and ``kk.verify`` (γ = 4) across backends, batch sizes,
vocabularies, dtypes and rules.

    python benchmarks/bench_kernels.py                    # full grid on CUDA
    python benchmarks/bench_kernels.py --quick --backends torch   # small grid, CPU

This is the GPU benchmark (gpu_check.sh runs it).  CPU numbers come from
``benchmarks/bench_cpu_kernels.py`` (pytest-benchmark: groups, saved JSON, compared
runs), which builds its inputs and calls with this module's helpers.  The CPU timer
here stays so that the whole script (CSV, markdown, plot, mismatch and torch-compile
columns) can be checked without a GPU before a device run.

Backends: every backend of ``kk.available_backends()`` that serves the device
(``--backends`` to choose), plus ``torch-compile``: ``torch.compile`` of the
reference functions (``kad_kernels.reference.sample`` / ``verify``) called
directly.  It is compiled with torch's defaults: static shapes first, dynamic
after the first recompilation.  (``dynamic=True`` from the start failed on an H200
with torch 2.11: Inductor could not lower the reference's cumsum for symbolic
shapes, "NYI TritonSplitDimKernel reductions".)  So each shape of the grid costs a
compilation: time torch-compile on a few shapes (gpu_check.sh's headline pass).  The
``mismatch_rows`` column compares every backend's tokens with eager ``torch``
on the same uniforms.

The grid is walked dtype by dtype (bf16 first), op, V (largest first), B, rule,
backend; ``--max-seconds`` stops starting measurements after that long, so a
time-boxed run keeps the bf16 results.  Rows also stream to
``bench_kernels.partial.csv`` while the run goes on.

The public API is called with ``check=False`` and precomputed ``uniforms=`` so no
host sync is timed.  CUDA: ``triton.testing.do_bench``, median, with L2 flushed
before every timed call (do_bench zeroes a 256 MB buffer between iterations).
CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` median, all threads.

Effective bandwidth = bytes of logits read / time: ``2·B·V·itemsize`` for sample,
``2·B·(γ+1)·V·itemsize`` for verify (p and q, read once: the memory floor).
Output: a CSV and a markdown table in ``--out-dir``, the table on stdout, and a
PNG plot when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package: wherever it is imported from
from options import counts, subset, writable_folder  # noqa: E402

GAMMA = 4
OPS = ("sample", "verify")
RULES = ("dual", "primal", "nudging")  # kk.Dual(0.4), kk.Primal(0.9), kk.Nudging(0.4)
BATCHES = (1, 8, 64, 256)
VOCABS = (32000, 128256, 151936)
DTYPES = ("bf16", "fp32")
QUICK_BATCHES = (1, 8)
QUICK_VOCABS = (32000,)
COMPILE = "torch-compile"  # pseudo-backend: torch.compile of the reference path

# HBM peak in GB/s by GPU name: an entry matches a name that has a word starting with
# each of its keys (the first matching entry wins).  Words, not substrings: a GH200
# ("NVIDIA GH200 480GB": 96 GB HBM3 at 4000 GB/s, or HBM3e at 4900) is no H200, and
# is left unmatched (no %-of-peak column) rather than given a peak that may be wrong.
PEAK_GBS = (
    (("H200",), 4800.0),
    (("H100", "HBM3"), 3350.0),  # H100 SXM reports "NVIDIA H100 80GB HBM3"
    (("H100", "SXM"), 3350.0),
)

FIELDS = [
    "op", "rule", "dtype", "B", "V", "gamma", "backend", "median_us", "gbps", "pct_peak",
    "speedup_vs_torch", "speedup_vs_torch_compile", "mismatch_rows", "device", "error",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--backends", default=None,
                    help=f"comma list, e.g. torch,triton,{COMPILE} (default: every available backend that "
                    f"serves the device, plus {COMPILE})")
    ap.add_argument("--ops", type=subset(*OPS), default=",".join(OPS), help="comma list of: sample, verify")
    ap.add_argument("--rules", type=subset(*RULES), default=",".join(RULES),
                    help="comma list of: dual, primal, nudging")
    ap.add_argument("--batch", type=counts, default=None,
                    help=f"comma list of B (default {BATCHES}, --quick {QUICK_BATCHES})")
    ap.add_argument("--vocab", type=counts, default=None,
                    help=f"comma list of V (default {VOCABS}, --quick {QUICK_VOCABS})")
    ap.add_argument("--dtypes", type=subset("bf16", "fp16", "fp32"), default=",".join(DTYPES),
                    help="comma list of: bf16, fp16, fp32")
    ap.add_argument("--quick", action="store_true", help=f"small grid for CPU: B in {QUICK_BATCHES}, V in {QUICK_VOCABS}")
    ap.add_argument("--peak-gbs", type=float, default=None,
                    help="HBM peak in GB/s for the %%-of-peak column (default by GPU name: H100 SXM 3350, H200 4800)")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "out"),
                    help="where the CSV, markdown and PNG go (default benchmarks/out)")
    ap.add_argument("--warmup-ms", type=float, default=5.0, help="do_bench warmup per measurement (CUDA)")
    ap.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                    help="CUDA: time the replay of a CUDA graph of each call (default), or plain eager calls")
    ap.add_argument("--rep-ms", type=float, default=20.0, help="do_bench timed repetitions per measurement (CUDA)")
    ap.add_argument("--min-run-time", type=float, default=0.2, help="seconds of blocked_autorange per measurement (CPU)")
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="stop starting new measurements after this many seconds (0 = no limit); what ran is written")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.batch = tuple(args.batch or (QUICK_BATCHES if args.quick else BATCHES))
    args.vocab = tuple(args.vocab or (QUICK_VOCABS if args.quick else VOCABS))
    if not args.max_seconds >= 0:  # a negative limit would stop before the first measurement (NaN: never)
        ap.error(f"--max-seconds {args.max_seconds:g}: must be >= 0 (0 = no limit)")
    writable_folder(ap, "--out-dir", Path(args.out_dir))  # the partial CSV streams there from the first row
    return args


# --------------------------------------------------------------------------- setup


def make_rule(kk, name: str):
    return {"dual": lambda: kk.Dual(0.4), "primal": lambda: kk.Primal(0.9), "nudging": lambda: kk.Nudging(0.4)}[name]()


def pick_backends(kk, requested: str | None, device) -> list[str]:
    """Backends to time, ``torch`` first (the baseline), then ``torch-compile``."""
    from kad_kernels import _backends

    def serves(name: str) -> bool:
        try:
            _backends.resolve(name, device)
            return True
        except RuntimeError as exc:
            print(f"note: skipping backend {name!r}: {exc}", file=sys.stderr)
            return False

    if requested:
        names = [x.strip() for x in requested.split(",") if x.strip()]
        known = set(_backends._REGISTRY) | {COMPILE}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"--backends: unknown {unknown}; known: {', '.join(sorted(known))}")
        names = [n for n in names if n == COMPILE or serves(n)]
    else:
        names = [n for n in kk.available_backends() if serves(n)] + [COMPILE]
    order = {"torch": 0, COMPILE: 1}
    return sorted(dict.fromkeys(names), key=lambda n: order.get(n, 2))


def checked_device(torch, name: str):
    """``torch.device(name)``; ``SystemExit`` naming ``--device`` for a name torch does not
    know or a GPU this machine does not have."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise SystemExit(f"--device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch {torch.__version__} sees no CUDA GPU on this machine")
    return device


def default_peak_gbs(torch, device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    words = name.split()
    for keys, peak in PEAK_GBS:
        if all(any(word.startswith(key) for word in words) for key in keys):
            return peak
    print(f"note: no HBM peak known for {name!r}; pass --peak-gbs to fill the %-of-peak column", file=sys.stderr)
    return None


def fake_logits(torch, shape, vocab, dtype, device, gen):
    """p and q logits: Gaussian noise plus one favoured token per row (10-15 logits up),
    so rows differ in confidence and the rules defer some rows more than others."""
    lead = (*shape, 1)
    out = []
    for _ in range(2):
        x = 2.0 * torch.randn(*shape, vocab, device=device, generator=gen)
        top = torch.randint(vocab, lead, device=device, generator=gen)
        x.scatter_(-1, top, 10.0 + 5.0 * torch.rand(lead, device=device, generator=gen))
        out.append(x.to(dtype))
        del x
    return out


class Inputs:
    """Everything one (op, B, V, dtype) needs, shared by the rules and backends."""

    def __init__(self, torch, op, batch, vocab, dtype, device, seed):
        gen = torch.Generator(device=device).manual_seed(seed)
        shape = (batch,) if op == "sample" else (batch, GAMMA + 1)
        self.p, self.q = fake_logits(torch, shape, vocab, dtype, device, gen)
        self.temperature = torch.ones(batch, device=device)
        self.draw = torch.rand(batch, device=device, generator=gen)
        if op == "verify":
            q_probs = torch.softmax(self.q[:, :GAMMA].float(), dim=-1).reshape(batch * GAMMA, vocab)
            # a fresh tensor, not a view: torch.compile guards on a view's base and would recompile
            self.drafts = torch.multinomial(q_probs, 1, generator=gen).view(batch, GAMMA).clone()
            del q_probs
            self.accept = torch.rand(batch, GAMMA, device=device, generator=gen)
        self.bytes = 2 * self.p.numel() * self.p.element_size()


_COMPILED: dict = {}


def compiled_reference(torch, op: str, kind):
    """``torch.compile`` of the reference function for (op, rule kind)."""
    key = (op, int(kind))
    if key not in _COMPILED:
        from kad_kernels import reference

        if op == "sample":
            def fn(p, q, param, t, u):
                return reference.sample(kind, param, p, q, None, t, u)
        else:
            def fn(p, q, drafts, param, t, a, s):
                return reference.verify(kind, param, p, q, None, drafts, t, a, s)
        _COMPILED[key] = torch.compile(fn)
    return _COMPILED[key]


# Before torch 2.13, Inductor's split (multi-program) scan kernels crash on the
# reference's cumsum over V: TritonSymbols.get_block_shape indexes the row's None
# tensor dimension (torch 2.11 on the H100 and H200 runs; 2.12.1 has the same code,
# 2.13 fixes it).  There cumsum runs as its aten kernel, everything else compiled.
SPLIT_SCAN_FIXED = "2.13"


def configure_compile(torch) -> None:
    """Let torch-compile recompile per shape: all compilations of an op share one code
    object, and past the default limit of 8 dynamo would silently fall back to eager.
    (The mismatch column checks the compiled tokens against eager.)  Lower cumsum to
    aten where Inductor's own scan kernels crash (``SPLIT_SCAN_FIXED``)."""
    config = torch._dynamo.config
    if hasattr(config, "recompile_limit"):
        config.recompile_limit = 64
    else:
        config.cache_size_limit = 64
    if torch.torch_version.TorchVersion(torch.__version__) < SPLIT_SCAN_FIXED:
        from torch._inductor.lowering import make_fallback

        make_fallback(torch.ops.aten.cumsum, warn=False)
        print(f"{COMPILE}: torch {torch.__version__} < {SPLIT_SCAN_FIXED}: cumsum runs as its aten kernel "
              "(Inductor's split-scan bug)", file=sys.stderr)


def make_call(torch, kk, backend: str, op: str, rule, x: Inputs):
    """A no-argument callable running one op on the precomputed inputs."""
    if backend == COMPILE:
        from kad_kernels._backends import as_rows

        kind, param = rule.spec(x.p.shape[0], x.p.device)
        param = as_rows(param, x.p.shape[0], x.p.device)
        fn = compiled_reference(torch, op, kind)
        if op == "sample":
            return lambda: fn(x.p, x.q, param, x.temperature, x.draw)
        return lambda: fn(x.p, x.q, x.drafts, param, x.temperature, x.accept, x.draw)
    if op == "sample":
        return lambda: kk.sample(x.p, x.q, rule, 1.0, uniforms=x.draw, backend=backend, check=False)
    return lambda: kk.verify(x.p, x.q, x.drafts, rule, 1.0, uniforms=(x.accept, x.draw), backend=backend, check=False)


def mismatched_rows(out, ref) -> int:
    """Rows whose tokens (and, for verify, num_accepted) differ from the reference's."""
    if isinstance(out, tuple):
        tokens, accepted = out
        ref_tokens, ref_accepted = ref
        return int(((tokens != ref_tokens).any(-1) | (accepted != ref_accepted)).sum())
    return int((out != ref).sum())


def _captured(torch, fn):
    """``fn`` captured in a CUDA graph, returned as its replay: what a serving loop
    runs, and GPU time rather than Python launch overhead (several µs per kernel)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up on a side stream, as torch.cuda.graphs recommends
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def timer_us(torch, device, args):
    """Median time of ``fn()`` in microseconds."""
    if device.type == "cuda":
        import triton.testing

        def cuda_time(fn):
            if args.graphs:
                fn = _captured(torch, fn)
            return 1e3 * triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")

        return cuda_time

    from torch.utils import benchmark

    def cpu_time(fn):
        t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        return 1e6 * t.blocked_autorange(min_run_time=args.min_run_time).median

    return cpu_time


# --------------------------------------------------------------------------- run


def run(args, partial_csv: Path | None = None) -> tuple[list[dict], str]:
    """Measure the grid; each row is also appended to ``partial_csv`` as soon as it is
    measured (no speedups there), so a run killed by a time limit keeps its data.
    Returns the rows and the line naming the device and versions."""
    import torch

    import kad_kernels as kk

    configure_compile(torch)

    device = checked_device(torch, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backends = pick_backends(kk, args.backends, device)
    if not backends:
        raise SystemExit("no backend to benchmark on this device")
    peak = args.peak_gbs if args.peak_gbs is not None else default_peak_gbs(torch, device)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    time_us = timer_us(torch, device, args)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    environment = (f"device: {name} | torch {torch.__version__} | triton {_version('triton')} "
                   f"| kad_kernels {kk.__version__}{_interpreted(backends)}")  # fmt: skip
    print(environment)
    print(f"backends: {', '.join(backends)} | peak: {f'{peak:g} GB/s' if peak else 'n/a'} | "
          f"timer: {'triton do_bench (L2 flushed)' + (' of CUDA-graph replays' if args.graphs else '') if device.type == 'cuda' else 'torch.utils.benchmark'}")

    # Order: dtype, op, V (largest first: the plot's), B, rule, backend; --max-seconds cuts from the end.
    groups = [(dt, op, v, b) for dt in args.dtypes for op in args.ops for v in sorted(args.vocab, reverse=True)
              for b in args.batch]
    total = len(groups) * len(args.rules) * len(backends)
    progress = _progress(total)
    rows: list[dict] = []
    reported: set[str] = set()
    sink = _PartialCsv(partial_csv)
    start = time.perf_counter()
    skipped = 0
    for dt, op, vocab, batch in groups:
        if args.max_seconds and time.perf_counter() - start > args.max_seconds:
            skipped += len(args.rules) * len(backends)
            continue
        try:
            x = Inputs(torch, op, batch, vocab, dtypes[dt], device, args.seed)
        except torch.OutOfMemoryError as exc:
            for rule_name in args.rules:
                for backend in backends:
                    rows.append(_row(op, rule_name, dt, batch, vocab, backend, name, error=f"inputs: {exc}"[:200]))
                    sink.write(rows[-1])
                    progress.update(1)
            _free(torch, device)
            continue
        for rule_name in args.rules:
            if args.max_seconds and time.perf_counter() - start > args.max_seconds:
                skipped += len(backends)
                continue
            rule = make_rule(kk, rule_name)
            reference = None
            for backend in backends:
                row = _row(op, rule_name, dt, batch, vocab, backend, name)
                try:
                    call = make_call(torch, kk, backend, op, rule, x)
                    out = call()  # warm-up: JIT / torch.compile happens here
                    if backend == "torch":
                        reference = out
                    elif reference is not None:
                        row["mismatch_rows"] = mismatched_rows(out, reference)
                    us = time_us(call)
                    gbps = x.bytes / (us * 1e-6) / 1e9
                    row["median_us"] = _sig(us)
                    row["gbps"] = _sig(gbps)
                    if peak:
                        row["pct_peak"] = _sig(100.0 * gbps / peak)
                except Exception as exc:  # record and go on: one failure must not lose the grid
                    row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                    if row["error"] not in reported:  # the whole trace once per distinct error, to the log
                        reported.add(row["error"])
                        traceback.print_exc()
                    if isinstance(exc, torch.OutOfMemoryError):
                        _free(torch, device)
                rows.append(row)
                sink.write(row)
                progress.update(1)
        del x
    progress.close()
    sink.close()
    if skipped:
        print(f"note: --max-seconds {args.max_seconds:g} reached: {skipped} of {total} measurements not run",
              file=sys.stderr)
    _speedups(rows)
    return rows, environment


def _sig(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _row(op, rule, dtype, batch, vocab, backend, device, error=""):
    row = dict.fromkeys(FIELDS, "")
    row.update(op=op, rule=rule, dtype=dtype, B=batch, V=vocab, gamma=GAMMA if op == "verify" else "",
               backend=backend, device=device, error=error)
    return row


def _speedups(rows: list[dict]) -> None:
    """Speedup of each row vs the torch and torch-compile rows of the same configuration."""
    base: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r["median_us"] != "":
            base.setdefault(_config(r), {})[r["backend"]] = r["median_us"]
    for r in rows:
        if r["median_us"] == "":
            continue
        times = base.get(_config(r), {})
        for backend, field in (("torch", "speedup_vs_torch"), (COMPILE, "speedup_vs_torch_compile")):
            if backend in times:
                r[field] = _sig(times[backend] / r["median_us"], 3)


def _config(r: dict) -> tuple:
    return r["op"], r["rule"], r["dtype"], r["B"], r["V"]


def _free(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _interpreted(backends: list[str]) -> str:
    """A note for the header when the triton rows time Triton's interpreter (TRITON_INTERPRET,
    how the CPU runs them), not compiled kernels: nothing in the rows says so."""
    if "triton" not in backends:
        return ""
    from triton import knobs

    return " | TRITON_INTERPRET: triton rows are interpreter times" if knobs.runtime.interpret else ""


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "n/a"


class _PartialCsv:
    def __init__(self, path: Path | None):
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = path.open("w", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=FIELDS)
            self.writer.writeheader()

    def write(self, row: dict) -> None:
        if self.file is not None:
            self.writer.writerow(row)
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _LineProgress:
    """Progress for logs (no tty, or no tqdm): a line every ~10%."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.step = max(1, total // 10)

    def update(self, n: int) -> None:
        self.done += n
        if self.done % self.step == 0 or self.done == self.total:
            print(f"[{self.done}/{self.total}] {time.perf_counter() - self.start:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return _LineProgress(total)
    if not sys.stderr.isatty():
        return _LineProgress(total)
    return tqdm(total=total, desc="bench", unit="run", file=sys.stderr, dynamic_ncols=True)


# --------------------------------------------------------------------------- output


def markdown(rows: list[dict]) -> str:
    cols = [("op", "op"), ("rule", "rule"), ("dtype", "dtype"), ("B", "B"), ("V", "V"), ("backend", "backend"),
            ("median_us", "µs"), ("gbps", "GB/s"), ("pct_peak", "% peak"), ("speedup_vs_torch", "× torch"),
            ("speedup_vs_torch_compile", f"× {COMPILE}"), ("mismatch_rows", "mismatch")]
    ordered = sorted(rows, key=lambda r: (r["op"], r["rule"], r["dtype"], r["V"], r["B"]))
    lines = ["| " + " | ".join(title for _, title in cols) + " |", "|" + "---|" * len(cols)]
    for r in ordered:
        cells = [str(r[key]) for key, _ in cols]
        if r["error"]:
            cells[6] = "error"
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in ordered if r["error"]]
    if errors:
        lines.append("")
        lines.append("Errors:")
        lines += [f"- {r['op']} {r['rule']} {r['dtype']} B={r['B']} V={r['V']} {r['backend']}: {r['error']}"
                  for r in errors]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> bool:
    """Bandwidth (% of peak, or GB/s without a peak) vs B per backend; one panel per
    (op, rule) at the largest V measured, bf16 (or the first dtype measured)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed, no plot (pip install -e '.[bench]')", file=sys.stderr)
        return False
    good = [r for r in rows if r["median_us"] != ""]
    if not good:
        return False
    dtype = "bf16" if any(r["dtype"] == "bf16" for r in good) else good[0]["dtype"]
    vocab = max(r["V"] for r in good if r["dtype"] == dtype)
    good = [r for r in good if r["dtype"] == dtype and r["V"] == vocab]
    use_pct = all(r["pct_peak"] != "" for r in good)
    metric, label = ("pct_peak", "% of HBM peak") if use_pct else ("gbps", "effective GB/s")
    panels = sorted({(r["op"], r["rule"]) for r in good})
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (op, rule) in zip(axes.flat, panels):
        sub = [r for r in good if r["op"] == op and r["rule"] == rule]
        for backend in dict.fromkeys(r["backend"] for r in sub):
            pts = sorted((r["B"], r[metric]) for r in sub if r["backend"] == backend)
            ax.plot([b for b, _ in pts], [y for _, y in pts], marker="o", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{op} / {rule}")
        ax.set_xlabel("B")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{label}, V={vocab}, {dtype}, {good[0]['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out_dir)
    rows, environment = run(args, partial_csv=out / "bench_kernels.partial.csv")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    print()
    print(table)
    write_csv(rows, out / "bench_kernels.csv")
    (out / "bench_kernels.md").write_text(f"{environment}\n\n{table}\n")  # the table alone names no device
    written = [out / "bench_kernels.csv", out / "bench_kernels.md"]
    if plot(rows, out / "bench_kernels.png"):
        written.append(out / "bench_kernels.png")
    (out / "bench_kernels.partial.csv").unlink(missing_ok=True)
    print("\nwrote " + ", ".join(map(str, written)))
    failed = sum(1 for r in rows if r["error"])
    if failed:
        print(f"{failed} measurement(s) failed; see the error column", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
