#!/usr/bin/env python
"""Static profile of the ``triton`` backend's launches on an H100, without a GPU.

    python benchmarks/kernel_resources.py                 # the headline shapes
    python benchmarks/kernel_resources.py --batch 1,64 --ops sample --rules dual

Every launch of a real call is compiled for sm_90 as Triton's launcher would on
the GPU (``kad_kernels.triton.offline``) and read back from its cubin: registers
and spilled bytes per thread, shared memory, the resident blocks per SM and the
waves the grid takes on 132 SMs, the global loads by width (``128`` = 16-byte
vector loads, ``U16`` = one bf16 element), and the SASS instruction count.
This is what a profile can be checked against before a GPU run, and what makes
a regression in occupancy, spilling or vectorization visible in review.  Times
come only from ``bench_kernels.py`` on a GPU.  Run without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse

import torch
from triton import knobs

from kad_kernels.rules import Kind
from kad_kernels.triton import offline
from options import count, counts, subset  # benchmarks/ is not a package: its scripts import each other

RULES = {"dual": Kind.LOGISTIC, "primal": Kind.PRIMAL, "nudging": Kind.NUDGING}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=subset(*offline.OPERATIONS), default="sample,verify",
                    help=f"comma-separated subset of {', '.join(offline.OPERATIONS)}")
    ap.add_argument("--rules", type=subset(*RULES), default="dual,primal",
                    help=f"comma-separated subset of {', '.join(RULES)}")
    ap.add_argument("--batch", type=counts, default="1,64,256", help="comma-separated batch sizes")
    ap.add_argument("--vocab", type=count, default=151936)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--gamma", type=count, default=4)
    ap.add_argument("--per-row", action="store_true",
                    help="T and the rule parameter as tensors [B]: calls that may have greedy rows, with the "
                    "arg-max pass")
    args = ap.parse_args()
    if knobs.runtime.interpret:  # the kernels are then Python functions: no launch compiles, the table stays empty
        ap.error("TRITON_INTERPRET is set: the kernels are interpreted, nothing compiles for sm_90; "
                 "run without it (env -u TRITON_INTERPRET python benchmarks/kernel_resources.py ...)")
    print(f"sm_90, {offline.H100_SMS} SMs, V = {args.vocab}, {args.dtype}, γ = {args.gamma} (verify)\n")
    print("| op | rule | B | launch | grid | warps | regs | spill B | smem B | blocks/SM | waves | loads | SASS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for op in args.ops:
        for rule in args.rules:
            for batch in args.batch:
                call = offline.operation(op, RULES[rule], batch, args.vocab, DTYPES[args.dtype], gamma=args.gamma,
                                         per_row=args.per_row)
                for launch in offline.compile_launches(call):
                    r = offline.resources(launch)
                    loads = " ".join(f"{width}×{n}" for width, n in sorted(r.loads.items()))
                    print(f"| {op} | {rule} | {batch} | `{launch.name}` | {'×'.join(map(str, launch.grid))} "
                          f"| {launch.num_warps} | {r.registers} | {r.local_bytes} | {r.shared_bytes} "
                          f"| {r.blocks_per_sm} | {r.waves:.2f} | {loads} | {r.instructions} |")


if __name__ == "__main__":
    main()
