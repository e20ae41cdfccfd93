#!/usr/bin/env python
"""The default pair on the llama.cpp engine (GGUF Q4_K_M) vs the torch engine (bf16), one run.

    python benchmarks/bench_llamacpp.py        # RESULTS.md's run adds --out benchmarks/results/llamacpp-cpu

Each engine runs in a process of its own, one after the other, with the OpenMP
wait policy that suits it: torch with ``OMP_WAIT_POLICY=PASSIVE`` (as in the other
CPU benchmarks: its spinning threads otherwise slow the loop), llama.cpp with
libgomp's default (measured here: PASSIVE makes one llama.cpp step 40 % slower).
Both engines decode the same GSM8K prompts (the aligned model's chat template) with
``base`` (the base model alone), ``kad`` and ``kad-spec`` at each γ, ``Dual(0.4)``,
T = 1, at each batch size, after a warm-up of each engine; every run produces
exactly ``--new-tokens`` tokens per row (no stop token).  Reported: tokens/s (all
rows together), acceptance, wall time.  The torch engine runs the bf16 safetensors
kad converts the GGUF files to; llama.cpp runs the GGUF files themselves.  The
engines' rows gather in ``bench_llamacpp.partial.csv``, which becomes
``bench_llamacpp.csv`` once every engine has run: a failed run leaves the last
results in place.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import kad
import kad_kernels as kk
from kad import default_pair
from kad.tasks import TASKS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from options import (  # noqa: E402  (benchmarks/ is not a package)
    checked_rule, count, counts, default_pair_missing, subset, writable_folder,
)
from provenance import cpu_name, kad_commit  # noqa: E402

OUT = HERE / "out" / "llamacpp-cpu"  # git-ignored: RESULTS.md's run names its folder
# The OpenMP wait policy of each engine's process (None: libgomp's default).
WAIT_POLICY = {"llama.cpp": None, "torch": "PASSIVE"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=counts, default="1,4")
    parser.add_argument("--gammas", type=counts, default="2,4,6")
    parser.add_argument("--engines", type=subset(*WAIT_POLICY), default="llama.cpp,torch",
                        help=f"comma-separated subset of {', '.join(WAIT_POLICY)}")  # fmt: skip
    parser.add_argument("--new-tokens", type=count, default=64)
    parser.add_argument("--lam", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT,
                        help=f"folder of bench_llamacpp.csv (default: {OUT.relative_to(HERE.parent)})")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one engine, this process
    args = parser.parse_args(argv)
    checked_rule(parser, kk.Dual, args.lam)  # before the engines run, not in each child's traceback
    if not args.child:
        writable_folder(parser, "--out", args.out)  # before the engines run, not after
        return run_each_engine_apart(args, argv or sys.argv[1:])
    try:
        return run_engines(args)
    except default_pair.DefaultPairError as error:  # packages missing, damaged, or a cache that takes no files
        return default_pair_missing(parser.prog, error)  # one line, no traceback


def threads(decoder: kad.Decoder) -> str:
    """The threads a run used: llama.cpp's own (its engine's ``n_threads``, not torch's
    setting), and torch's (the torch engine's models, both engines' KAD kernels)."""
    llama = getattr(decoder.engines["base"], "n_threads", None)
    torch_threads = f"{torch.get_num_threads()} torch threads"
    return f"{llama} llama.cpp threads, {torch_threads}" if llama else torch_threads


def run_engines(args: argparse.Namespace) -> int:
    """The runs of ``--engines`` in this process (a child: one engine); rows appended to
    ``bench_llamacpp.partial.csv``."""
    print(f"# device: CPU {cpu_name()}; torch {torch.__version__}; "
          f"kad {kad_commit()}; {kk.Dual(args.lam)!r}, T = 1, {args.new_tokens} tokens per row")  # fmt: skip
    task = TASKS["gsm8k"]
    items = task.load(max(args.batch_sizes))
    runs = [("base", None)] + [("kad", None)] + [("kad-spec", g) for g in args.gammas]
    rows = []
    print(f"{'engine':<10} {'B':>3} {'mode':<12} {'tok/s':>7} {'accept':>6} {'wall s':>7}", flush=True)
    for name in args.engines:
        started = time.perf_counter()
        # llama.cpp runs the GGUF files' own types (it refuses a dtype).
        dtype = torch.bfloat16 if name == "torch" else "auto"
        decoder = kad.Decoder.from_pretrained(device="cpu", dtype=dtype, engine=name)
        decoder.stop_ids = frozenset()
        loaded = time.perf_counter() - started
        device = f"CPU {cpu_name()}, {threads(decoder)}"
        prompts = [decoder.encode(task.user_message(item), chat=True) for item in items]
        decoder.generate(prompts[:1], "kad-spec", kk.Dual(args.lam), max_new_tokens=8, seed=0)  # warm-up
        print(f"# {name}: loaded in {loaded:.1f} s ({decoder.engines['base'].name}); {threads(decoder)}", flush=True)
        for batch in args.batch_sizes:
            for mode, gamma in runs:
                mode_rule = None if mode == "base" else kk.Dual(args.lam)
                out = decoder.generate(prompts[:batch], mode, mode_rule, gamma=gamma or 4, temperature=1.0,
                                       max_new_tokens=args.new_tokens, seed=args.seed, track_alpha=False)  # fmt: skip
                s = out.stats
                label = f"{mode} γ={gamma}" if gamma else mode
                rows.append(dict(device=device, engine=name, batch=batch, mode=mode, gamma=gamma or "",
                                 tokens_per_s=s.tokens_per_s, acceptance=s.acceptance_rate if gamma else "",
                                 wall_s=s.wall_time_s, new_tokens=s.new_tokens))  # fmt: skip
                accept = f"{s.acceptance_rate:.3f}" if gamma else "—"
                print(f"{name:<10} {batch:>3} {label:<12} {s.tokens_per_s:>7.2f} {accept:>6} {s.wall_time_s:>7.2f}",
                      flush=True)  # fmt: skip
        del decoder
    with (args.out / "bench_llamacpp.partial.csv").open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if f.tell() == 0:
            writer.writeheader()
        writer.writerows(rows)
    return 0


def run_each_engine_apart(args: argparse.Namespace, argv: list[str]) -> int:
    partial = args.out / "bench_llamacpp.partial.csv"
    partial.unlink(missing_ok=True)
    for name in args.engines:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if WAIT_POLICY[name]:
            env["OMP_WAIT_POLICY"] = WAIT_POLICY[name]
        print(f"# {name}: OMP_WAIT_POLICY={WAIT_POLICY[name] or '(unset)'}", flush=True)
        child = [sys.executable, __file__, *argv, "--engines", name, "--child"]
        if subprocess.run(child, env=env).returncode != 0:
            return 1
    partial.replace(args.out / "bench_llamacpp.csv")
    print(f"wrote {args.out / 'bench_llamacpp.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
