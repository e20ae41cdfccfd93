"""What the interpreter cannot show about the ``triton`` backend's tickets.

A row's last slice to finish a launch — ``sample``'s pass 2, ``verify``'s accept
launch, ``sample``'s arg-max launch for greedy rows — emits the row's token from
what programs on other SMs have just written (kad_kernels/triton/sample.py).  The
interpreter runs programs one after another, so under it that order always holds;
on a GPU a release or acquire missing around the ticket would let the last slice
read stale partials now and then.  Such a call's tokens would differ from the same
call's a moment before: so these GPU tests repeat calls on layouts with many slices
per row and require every result to equal the first (which the shared suite checks
against the reference).  Without a GPU, ``sm90_compile.py`` checks the order of the
fences around each ticket in the compiled SASS (``offline.ticket_faults``).
"""

import pytest
import torch

import kad_kernels as kk
from helpers import make_logits

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif("triton" not in kk.available_backends(), reason="triton not available"),
]

V = 151936
GAMMA = 4
REPEATS = 50
# B = 1 cuts a row into 75 one-chunk slices on an H100, B = 64 into 8; a float T > 0
# leaves out the arg-max launch, a tensor with greedy rows brings it in.
BATCHES = [1, 8, 64]
TEMPERATURES = {"float": lambda batch: 1.0, "per-row": lambda batch: torch.tensor([1.0, 0.0]).repeat(batch)[:batch]}


def _temperature(kind: str, batch: int):
    t = TEMPERATURES[kind](batch)
    return t.cuda() if isinstance(t, torch.Tensor) else t


@pytest.mark.parametrize("kind", TEMPERATURES)
@pytest.mark.parametrize("batch", BATCHES)
def test_sample_repeats_itself(batch, kind):
    p, q = (make_logits((batch, V), seed=s, dtype=torch.bfloat16, device="cuda") for s in (1, 2))
    rule, temperature = kk.Dual(0.001), _temperature(kind, batch)
    u = torch.rand(batch, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    first = kk.sample(p, q, rule, temperature, uniforms=u, backend="triton")
    for _ in range(REPEATS):
        assert torch.equal(kk.sample(p, q, rule, temperature, uniforms=u, backend="triton"), first)


@pytest.mark.parametrize("kind", TEMPERATURES)
@pytest.mark.parametrize("batch", BATCHES)
def test_verify_repeats_itself(batch, kind):
    p, q = (make_logits((batch, GAMMA + 1, V), seed=s, dtype=torch.bfloat16, device="cuda") for s in (4, 5))
    rule, temperature = kk.Dual(0.001), _temperature(kind, batch)
    g = torch.Generator("cuda").manual_seed(6)
    q_probs = torch.softmax(q[:, :GAMMA].float(), -1).reshape(-1, V)
    drafts = torch.multinomial(q_probs, 1, generator=g).view(batch, GAMMA)
    uniforms = (torch.rand(batch, GAMMA, device="cuda", generator=g), torch.rand(batch, device="cuda", generator=g))
    first = kk.verify(p, q, drafts, rule, temperature, uniforms=uniforms, backend="triton")
    for _ in range(REPEATS):
        again = kk.verify(p, q, drafts, rule, temperature, uniforms=uniforms, backend="triton")
        assert torch.equal(again.tokens, first.tokens) and torch.equal(again.num_accepted, first.num_accepted)
