"""The triton backend serves CPU tensors exactly where Triton runs its interpreter.

Which values of TRITON_INTERPRET switch the interpreter on is Triton's fact
(``triton.knobs.runtime.interpret``); kad spells it out in ``_backends`` because
reading the knob inside a torch.compile trace breaks the graph.  These tests hold
the two readings together on the installed Triton (CI runs them on the lowest and
the newest Triton declared).
"""

import os
import subprocess
import sys

import pytest

import kad_kernels as kk
from kad_kernels import _backends

triton = pytest.importorskip("triton")
from triton import knobs  # noqa: E402  (after the skip: Triton may be absent)

@pytest.fixture(autouse=True)
def _kernels_made_for_the_interpreter():
    """Triton decides at ``@triton.jit`` time whether a kernel is interpreted: the backend is
    loaded under this process's TRITON_INTERPRET=1 before a test changes it, or a later CPU
    test of this process would get kernels built for a GPU."""
    if _backends.triton_interprets():
        _backends._load("triton")


# Not " 1": Triton 3.4 strips spaces around the value and 3.7 does not (kad does not).
SPELLINGS = ["1", "true", "TRUE", "On", "yes", "y", "0", "false", "off", "no", "", "2", "t", "interpret"]


@pytest.mark.parametrize("value", SPELLINGS, ids=repr)
def test_kad_reads_triton_interpret_as_triton_does(monkeypatch, value):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert _backends.triton_interprets() == bool(knobs.runtime.interpret)


def test_kad_reads_an_unset_triton_interpret_as_triton_does(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert _backends.triton_interprets() is False
    assert not knobs.runtime.interpret


@pytest.mark.parametrize("value, serves", [("1", True), ("true", True), ("On", True), ("0", False), ("", False)])
def test_triton_serves_cpu_tensors_where_triton_interprets(monkeypatch, value, serves):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    if serves:
        assert kk.resolve_backend(kk.Dual(0.3), "cpu", "triton") == "triton"
    else:
        with pytest.raises(RuntimeError, match=r"backend 'triton' does not run on cpu tensors here: .*TRITON_INTERPRET=1"):
            kk.resolve_backend(kk.Dual(0.3), "cpu", "triton")


# Triton decides at @triton.jit time whether a kernel is interpreted, so a spelling
# other than "1" is only seen end to end by a process that starts with it.
RUN_ON_CPU = """
import torch, kad_kernels as kk
g = torch.Generator().manual_seed(0)
p, q = torch.randn(3, 37, generator=g), torch.randn(3, 37, generator=g)
u = torch.rand(3, generator=g)
got = kk.sample(p, q, kk.Dual(0.3), uniforms=u, backend="triton")
want = kk.sample(p, q, kk.Dual(0.3), uniforms=u, backend="torch")
assert torch.equal(got, want), (got, want)
print("ok")
"""


def test_triton_runs_cpu_tensors_under_another_spelling():
    env = {**os.environ, "TRITON_INTERPRET": "true"}
    done = subprocess.run([sys.executable, "-c", RUN_ON_CPU], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout[-2000:] + done.stderr[-4000:]
