"""What the ``triton`` backend promises beyond the shared suite: its results do not
depend on how it cuts rows into slices.

The cut follows the GPU's SM count and the batch (``layout.layout``): one slice per
row at large batches, many one-chunk slices at small ones, uneven last slices in
between.  Under the interpreter the SM count is a stand-in of 2, so the shared
suite sees few of the cuts a GPU makes; here the count is set to others, and every
cut must give the reference's tokens (uniforms) and its π and α.
"""

import pytest
import torch
import triton

import kad_kernels as kk
from helpers import make_logits, masked, neg_inf_mask
from kad_kernels.triton import layout

pytestmark = pytest.mark.skipif("triton" not in kk.available_backends(), reason="triton not available")

V = 9000  # 5 chunks of 2048, the last one ragged
B = 3
GAMMA = 3
# 1 SM: a slice per row (several chunks each); 3: uneven slices; 132: one chunk each.
SMS = [1, 3, 132]
RULES = [kk.Dual(0.002), kk.Primal(0.6), kk.Nudging(0.5), kk.ImplicitReward()]
TEMPERATURE = torch.tensor([1.0, 0.0, 0.8])  # a greedy row between sampled ones
# The two paths of sample and verify: with a row that may be greedy (arg-max pass, then
# a draw kernel), and with a float T > 0 (each row drawn by the last of its slices to
# finish the pass before: pass 2, or verify's accept pass).
TEMPERATURES = {"per-row": TEMPERATURE, "float": 0.8}


@pytest.fixture(params=SMS, ids=lambda n: f"{n}sm")
def multiprocessors(request, monkeypatch):
    monkeypatch.setattr(layout, "multiprocessors", lambda device: request.param)
    return request.param


def _logits(shape, seed):
    logits = [make_logits(shape, seed=seed + i, dtype=torch.bfloat16) for i in range(3)]
    mask = neg_inf_mask(shape, seed=seed + 9, fraction=0.2)
    return [masked(x, mask) for x in logits]


# The draw walks a slice's chunks a few at a time: the last uniforms land in the last
# chunk of a row, past the first step's chunks when the row is one slice.
UNIFORMS = [[0.31, 0.5, 0.87], [0.97, 0.5, 0.999]]


@pytest.mark.parametrize("temperature", TEMPERATURES.values(), ids=TEMPERATURES.keys())
@pytest.mark.parametrize("uniforms", UNIFORMS, ids=["mid", "tail"])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_sample_and_mixture_do_not_depend_on_the_cut(multiprocessors, rule, uniforms, temperature):
    p, q, ref = _logits((B, V), seed=10)
    ref = ref if rule.needs_ref else None
    u = torch.tensor(uniforms)
    kwargs = dict(ref_logits=ref)
    got = kk.mixture(p, q, rule, temperature, backend="triton", **kwargs)
    want = kk.mixture(p, q, rule, temperature, backend="torch", **kwargs)
    torch.testing.assert_close(got.probs, want.probs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.alpha, want.alpha, rtol=1e-5, atol=1e-7)
    tokens = kk.sample(p, q, rule, temperature, uniforms=u, backend="triton", **kwargs)
    assert torch.equal(tokens, kk.sample(p, q, rule, temperature, uniforms=u, backend="torch", **kwargs))


@pytest.mark.parametrize("temperature", TEMPERATURES.values(), ids=TEMPERATURES.keys())
@pytest.mark.parametrize("rule", RULES[:2], ids=lambda r: type(r).__name__)
def test_verify_does_not_depend_on_the_cut(multiprocessors, rule, temperature):
    p, q, _ = _logits((B, GAMMA + 1, V), seed=20)
    # Drafts from q itself; row 0 accepts all (zero coins: the bonus draw), row 1 is
    # greedy under the per-row T, row 2 rejects somewhere (the residual draw).
    q_probs = torch.softmax(q[:, :GAMMA].float(), -1).reshape(-1, V)
    drafts = torch.multinomial(q_probs, 1, generator=torch.Generator().manual_seed(5)).view(B, GAMMA)
    accept = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [0.6, 0.95, 0.3]])
    draw = torch.tensor([0.4, 0.7, 0.05])
    args = (p, q, drafts, rule, temperature)
    got = kk.verify(*args, uniforms=(accept, draw), backend="triton")
    want = kk.verify(*args, uniforms=(accept, draw), backend="torch")
    assert want.num_accepted[0] == GAMMA and want.num_accepted[2] < GAMMA, "both draws are exercised"
    assert torch.equal(got.num_accepted, want.num_accepted)
    assert torch.equal(got.tokens, want.tokens)


@pytest.mark.parametrize("rows", [1, 3, 8, 40, 64, 256, 320, 1280])
@pytest.mark.parametrize("chunks", [1, 5, 16, 25, 75, 125])
def test_slices_are_even_and_fill_at_most_two_waves(rows, chunks):
    """The cut of ``layout.layout``: slices of equal length (the last may be shorter),
    within two waves of 4 programs per SM on 132 SMs unless a row is one slice."""
    slots = layout.PROGRAMS_PER_SM * 132
    per_slice = layout._chunks_per_slice(rows, chunks, slots)
    slices = triton.cdiv(chunks, per_slice)
    assert per_slice == triton.cdiv(chunks, slices), "slices of equal length"
    assert slices == 1 or rows * slices <= 2 * slots


@pytest.mark.parametrize("rows,slices", [(1, 75), (64, 8), (256, 2), (1280, 1)])
def test_headline_cuts(rows, slices):
    """V = 151936 (75 chunks) on an H100: B = 1 as many slices as chunks, B = 64 one
    wave of 512 programs, B = 256 two slices, verify's 1280 rows unsplit."""
    per_slice = layout._chunks_per_slice(rows, 75, layout.PROGRAMS_PER_SM * 132)
    assert triton.cdiv(75, per_slice) == slices
