"""``offline.ticket_faults``, the static check of the tickets' memory order that
``sm90_compile.py`` runs on every ticketed launch, against SASS sequences with one
link of the protocol broken at a time.  The sequence below is the ticket of
``_mass_sample_kernel`` as ptxas emits it for sm_90 (operands dropped); the
faults are those a wrong ``sem``/``scope`` in ``layout.last_to_finish`` produces
(checked by compiling each), or a load moved across the ticket."""

import pytest

import kad_kernels as kk

pytestmark = pytest.mark.skipif("triton" not in kk.available_backends(), reason="triton not installed")

TICKET = [
    "LDS", "STG.E", "BSYNC", "BAR.SYNC.DEFER_BLOCKING",  # the slice's partials stored, then the barrier
    "S2R", "VOTEU.ANY", "FLO.U32", "POPC", "ISETP.EQ.U32.AND",
    "MEMBAR.ALL.GPU", "ERRBAR", "CGAERRBAR",  # release
    "ATOMG.E.ADD.STRONG.GPU",
    "CCTL.IVALL",  # acquire: the SM's L1 invalidated
    "SHFL.IDX", "BSYNC", "STS", "BAR.SYNC.DEFER_BLOCKING", "LDS",  # the ticket handed to the CTA
    "ISETP.NE.U32.AND", "LDG.E.STRONG.GPU", "LDG.E.128",  # the last program reads the partials, then logits
]


def edited(*changes):
    """TICKET with each instruction ``old`` replaced by ``new`` (None: removed)."""
    ops = list(TICKET)
    for old, new in changes:
        i = ops.index(old)
        ops[i:i + 1] = [] if new is None else [new]
    return ops


def moved(op, after):
    """TICKET with ``op`` moved to just after the instruction ``after``."""
    ops = list(TICKET)
    ops.remove(op)
    ops.insert(ops.index(after) + 1, op)
    return ops


def test_the_emitted_ticket_keeps_the_protocol():
    from kad_kernels.triton.offline import ticket_faults
    assert ticket_faults(TICKET) == []
    assert ticket_faults([op for op in TICKET if not op.startswith("ATOMG")]) == []


@pytest.mark.parametrize("ops,fault", [
    pytest.param(edited(("MEMBAR.ALL.GPU", None), ("CCTL.IVALL", None)), "not released", id="relaxed"),
    pytest.param(edited(("MEMBAR.ALL.GPU", None)), "not released", id="acquire-only"),
    pytest.param(edited(("CCTL.IVALL", None)), "no acquire", id="release-only"),
    pytest.param(edited(("ATOMG.E.ADD.STRONG.GPU", "ATOMG.E.ADD.STRONG.SM")), "GPU scope", id="cta-scope"),
    pytest.param(edited(("MEMBAR.ALL.GPU", "MEMBAR.ALL.CTA")), "not released", id="cta-fence"),
    pytest.param(edited(("BAR.SYNC.DEFER_BLOCKING", None)), "not released", id="no-barrier-before"),
    pytest.param(moved("STG.E", after="MEMBAR.ALL.GPU"), "not released", id="store-after-release"),
    pytest.param(moved("LDG.E.STRONG.GPU", after="CCTL.IVALL"), "load before the barrier",
                 id="read-before-handoff"),
    pytest.param(edited(("LDG.E.128", "LDG.E.128.CONSTANT")), "non-coherent", id="non-coherent-read"),
])
def test_a_broken_link_is_named(ops, fault):
    from kad_kernels.triton.offline import ticket_faults
    found = ticket_faults(ops)
    assert found and all("ATOMG" in f for f in found)
    assert any(fault in f for f in found), found
