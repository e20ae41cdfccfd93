#!/usr/bin/env python
"""The headline calls once each, for a profiler or a sanitizer: run under Nsight Compute,

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy \\
        python benchmarks/profile_kernels.py [--backend triton] [--batch 64] [--vocab 151936]

Warms every call up first (compilation, autotuning, allocator), then brackets one
``sample`` (Dual, Primal; Dual again with a per-row temperature that makes every
other row greedy, the path with the arg-max launch) and one ``verify`` (Dual, γ = 4) with
``torch.cuda.profiler.start``/``stop``, so ncu sees exactly their kernels: per kernel, the
achieved DRAM throughput, issue-slot use and occupancy that explain the times of
``bench_kernels.py``.  Inputs are Gaussian bf16 logits, as there.

Or under compute-sanitizer (``gpu_check.sh`` does both), where every launch of the
warm-up and the bracketed calls is checked:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \\
        python benchmarks/profile_kernels.py --backend cuda --batch 8 --vocab 50257
"""

from __future__ import annotations

import argparse

import torch

import kad_kernels as kk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--gamma", type=int, default=4)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_kernels.py needs a CUDA GPU")
    g = torch.Generator(device="cuda").manual_seed(0)

    def logits(*shape):
        return (torch.randn(*shape, args.vocab, generator=g, device="cuda") * 2).to(torch.bfloat16)

    B, gamma = args.batch, args.gamma
    p, q = logits(B), logits(B)
    pv, qv = logits(B, gamma + 1), logits(B, gamma + 1)
    drafts = torch.randint(0, args.vocab, (B, gamma), generator=g, device="cuda")
    u = torch.rand(B, generator=g, device="cuda")
    a = torch.rand(B, gamma, generator=g, device="cuda")
    greedy_rows = torch.tensor([1.0, 0.0], device="cuda").repeat(B)[:B]
    calls = {
        "sample dual": lambda: kk.sample(p, q, kk.Dual(0.4), uniforms=u, backend=args.backend, check=False),
        "sample dual, greedy rows": lambda: kk.sample(p, q, kk.Dual(0.4), greedy_rows, uniforms=u,
                                                      backend=args.backend, check=False),
        "sample primal": lambda: kk.sample(p, q, kk.Primal(0.9), uniforms=u, backend=args.backend, check=False),
        "verify dual": lambda: kk.verify(pv, qv, drafts, kk.Dual(0.4), uniforms=(a, u), backend=args.backend,
                                         check=False),
    }
    for call in calls.values():
        for _ in range(3):
            call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for name, call in calls.items():
        torch.cuda.nvtx.range_push(name)
        call()
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"profiled {', '.join(calls)} on {torch.cuda.get_device_name()}: {args.backend}, B={B}, V={args.vocab}, bf16")


if __name__ == "__main__":
    main()
