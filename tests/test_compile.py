"""torch.compile captures the public API whole (DESIGN §2: custom ops with fake impls)."""

import pytest
import torch

import kad_kernels as kk

pytestmark = pytest.mark.skipif("triton" not in kk.available_backends(), reason="triton not installed")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("rule", [kk.Dual(0.05), kk.Primal(0.9)], ids=["dual", "primal"])
def test_sample_compiles_without_graph_breaks(rule):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(4, 300, generator=gen).to(_device())
    q = torch.randn(4, 300, generator=gen).to(_device())
    seed = torch.tensor([7], dtype=torch.int64, device=_device())

    def step(p, q, seed):
        return kk.sample(p, q, rule, 0.8, seed=seed, offset=3, backend="triton", check=False)

    compiled = torch.compile(step, fullgraph=True)  # raises on any graph break
    assert torch.equal(compiled(p, q, seed), step(p, q, seed))
    reference = kk.sample(p, q, rule, 0.8, seed=7, offset=3, backend="torch")
    assert torch.equal(compiled(p, q, seed), reference)


def test_verify_compiles_without_graph_breaks():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(2, 4, 200, generator=gen).to(_device())
    q = torch.randn(2, 4, 200, generator=gen).to(_device())
    draft = torch.randint(0, 200, (2, 3), generator=gen).to(_device())
    seed = torch.tensor([11], dtype=torch.int64, device=_device())

    def step(p, q, draft, seed):
        return kk.verify(p, q, draft, kk.Dual(0.05), seed=seed, backend="triton", check=False)

    out = torch.compile(step, fullgraph=True)(p, q, draft, seed)
    expected = kk.verify(p, q, draft, kk.Dual(0.05), seed=11, backend="torch")
    assert torch.equal(out.tokens, expected.tokens)
    assert torch.equal(out.num_accepted, expected.num_accepted)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_replays_in_a_cuda_graph():
    gen = torch.Generator(device="cuda").manual_seed(2)
    p = torch.randn(8, 32000, device="cuda", generator=gen, dtype=torch.bfloat16)
    q = torch.randn(8, 32000, device="cuda", generator=gen, dtype=torch.bfloat16)
    seed = torch.tensor([5], dtype=torch.int64, device="cuda")
    offset = torch.tensor([0], dtype=torch.int64, device="cuda")
    rule = kk.Dual(torch.full((8,), 0.01, device="cuda"))
    temperature = torch.ones(8, device="cuda")

    def step():
        return kk.sample(p, q, rule, temperature, seed=seed, offset=offset, backend="triton", check=False)

    step()  # compile the kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens = step()
    for off in (0, 8, 16):
        offset.fill_(off)
        graph.replay()
        expected = kk.sample(p, q, kk.Dual(0.01), seed=5, offset=off, backend="torch")
        assert torch.equal(tokens, expected)
