"""Compile every Triton kernel launch of the ``triton`` backend for a Hopper GPU
(sm_90) without one (``kad_kernels.triton.offline``).

The interpreter that runs the kernels on CPU in CI accepts code the GPU compiler
refuses (e.g. non-constexpr globals); this closes that gap.  The launches are
those of real calls, specialized as on a GPU: every rule, each dtype, vocabulary
sizes with and without 16-byte rows, batches with split and unsplit rows,
uniforms and Philox, greedy rows, T and λ as floats and per row.  Run as a script (``python tests/sm90_compile.py``)
in a process without ``TRITON_INTERPRET``; ``test_triton_compiles.py`` does that.
Prints one line per call.

It also fails on performance regressions a compiler can show: a launch that
spills registers to local memory; a 16-bit load of one element where rows of
16-byte multiples allow vector loads (the draw lost its vector loads once; only
the accept chain, which reads single draft tokens, loads elements alone); and a
pass over whole rows with fewer resident programs per SM than the slicing
(``layout.PROGRAMS_PER_SM``) counts on.

And it checks what the interpreter, running one program at a time, cannot: that
each launch whose last program per row reads the others' partials (a ticket,
``layout.last_to_finish``) keeps release/acquire order in its SASS
(``offline.ticket_faults``).
"""

from __future__ import annotations

import sys

from kad_kernels._backends import triton_interprets

assert not triton_interprets(), "the GPU compiler does not run under TRITON_INTERPRET"

import torch  # noqa: E402

from kad_kernels.rules import Kind  # noqa: E402
from kad_kernels.triton import layout, offline  # noqa: E402


WIDE = 50304  # rows of 16-byte multiples in every dtype: vector loads possible
POINT_LOADS = {"_accept_kernel"}  # its draft tokens (its pass loads 16 bytes)
STREAMING = {"_stats_kernel", "_mass_kernel", "_mass_sample_kernel", "_argmax_kernel", "_accept_kernel"}
# Launches that always take a ticket; ``_argmax_kernel`` takes one in ``sample`` with greedy rows.
TICKETED = {"_mass_sample_kernel", "_accept_kernel"}


def calls():
    """(label, call) for the launches to compile."""
    # Every rule in every dtype: a rule's constexpr paths (ref logits, Σp², q in pass 2,
    # the radix select) meet each dtype's tile shapes (fp32 once crashed a compiler pass
    # that bf16 did not).
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        for kind in Kind:
            for op in ("mixture", "sample", "verify"):
                yield f"{op} {kind.name} {dtype}", offline.operation(op, kind, 4, WIDE, dtype)
    for op in ("mixture", "sample", "verify"):
        yield f"{op} PRIMAL bf16 per-row budget and T", offline.operation(op, Kind.PRIMAL, 4, WIDE, torch.bfloat16,
                                                                         per_row=True)
    for gamma in (1, 8):
        yield f"verify LOGISTIC bf16 γ={gamma}", offline.operation("verify", Kind.LOGISTIC, 4, WIDE, torch.bfloat16,
                                                                 gamma=gamma)
    for philox in (False, True):
        for temperature in (0.0, 0.7):
            for op in ("sample", "verify"):
                label = f"{op} LOGISTIC bf16 odd V, B=256, philox={philox}, T={temperature}"
                yield label, offline.operation(op, Kind.LOGISTIC, 256, 50257, torch.bfloat16,
                                               philox=philox, temperature=temperature)


def regressions(launch: offline.Launch, wide: bool) -> list[str]:
    r = offline.resources(launch)
    found = [f"{launch.name} spills {r.local_bytes} B per thread"] if r.local_bytes else []
    if wide and launch.name not in POINT_LOADS and r.loads.get("U16"):
        found.append(f"{launch.name} loads 16-bit elements one by one ({r.loads['U16']} LDG.U16)")
    if launch.name in STREAMING and r.blocks_per_sm < layout.PROGRAMS_PER_SM:
        found.append(f"{launch.name}: {r.blocks_per_sm} programs per SM ({r.registers} registers, "
                     f"{r.shared_bytes} B shared), the slicing assumes {layout.PROGRAMS_PER_SM}")
    ops = offline.opcodes(launch)
    if launch.name in TICKETED and not any(op.startswith("ATOMG") for op in ops):
        found.append(f"{launch.name} takes no ticket")
    found += [f"{launch.name}: {fault}" for fault in offline.ticket_faults(ops)]
    return found


def main() -> int:
    failures = 0
    for label, call in calls():
        try:
            launches = offline.compile_launches(call)
            found = [x for launch in launches for x in regressions(launch, "odd V" not in label)]
        except Exception as exc:  # report every call, then fail
            found = [f"{type(exc).__name__}: {exc}"]
        failures += bool(found)
        names = ", ".join(launch.name for launch in launches) if not found else "; ".join(found)
        print(f"{'FAIL' if found else 'ok  '} {label}: {names}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
