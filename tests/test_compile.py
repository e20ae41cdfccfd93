"""torch.compile captures the public API whole (docs/design.md §2.5: custom ops with fake impls)."""

import pytest
import torch

import kad_kernels as kk

HAS_CUDA = torch.cuda.is_available()
_GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]


def _kernel_backends(cuda_only: bool = False) -> list:
    """(backend, device) of every kernel backend: triton (interpreted on CPU without a GPU),
    the C++ cpu backend, and the cuda backend (GPU-marked)."""
    available = kk.available_backends()
    params = []
    if "triton" in available:
        device = "cuda" if HAS_CUDA or cuda_only else "cpu"
        params.append(pytest.param("triton", device, id="triton", marks=_GPU if cuda_only else []))
    if "cpu" in available and not cuda_only:
        params.append(pytest.param("cpu", "cpu", id="cpu"))
    if "cuda" in available:
        params.append(pytest.param("cuda", "cuda", id="cuda", marks=_GPU))
    return params or [pytest.param(None, None, marks=pytest.mark.skip(reason="no kernel backend is available"))]


@pytest.mark.parametrize("backend,device", _kernel_backends())
@pytest.mark.parametrize("rule", [kk.Dual(0.05), kk.Primal(0.9)], ids=["dual", "primal"])
def test_sample_compiles_without_graph_breaks(rule, backend, device):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(4, 300, generator=gen).to(device)
    q = torch.randn(4, 300, generator=gen).to(device)
    seed = torch.tensor([7], dtype=torch.int64, device=device)

    def step(p, q, seed):
        return kk.sample(p, q, rule, 0.8, seed=seed, offset=3, backend=backend, check=False)

    compiled = torch.compile(step, fullgraph=True)  # raises on any graph break
    assert torch.equal(compiled(p, q, seed), step(p, q, seed))
    reference = kk.sample(p, q, rule, 0.8, seed=7, offset=3, backend="torch")
    assert torch.equal(compiled(p, q, seed), reference)


@pytest.mark.parametrize("backend,device", _kernel_backends())
def test_verify_compiles_without_graph_breaks(backend, device):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(2, 4, 200, generator=gen).to(device)
    q = torch.randn(2, 4, 200, generator=gen).to(device)
    draft = torch.randint(0, 200, (2, 3), generator=gen).to(device)
    seed = torch.tensor([11], dtype=torch.int64, device=device)

    def step(p, q, draft, seed):
        return kk.verify(p, q, draft, kk.Dual(0.05), seed=seed, backend=backend, check=False)

    out = torch.compile(step, fullgraph=True)(p, q, draft, seed)
    expected = kk.verify(p, q, draft, kk.Dual(0.05), seed=11, backend="torch")
    assert torch.equal(out.tokens, expected.tokens)
    assert torch.equal(out.num_accepted, expected.num_accepted)


@pytest.mark.parametrize("backend,device", _kernel_backends(cuda_only=True))
def test_sample_replays_in_a_cuda_graph(backend, device):
    gen = torch.Generator(device="cuda").manual_seed(2)
    p = torch.randn(8, 32000, device="cuda", generator=gen, dtype=torch.bfloat16)
    q = torch.randn(8, 32000, device="cuda", generator=gen, dtype=torch.bfloat16)
    seed = torch.tensor([5], dtype=torch.int64, device="cuda")
    offset = torch.tensor([0], dtype=torch.int64, device="cuda")
    rule = kk.Dual(torch.full((8,), 0.01, device="cuda"))
    temperature = torch.ones(8, device="cuda")

    def step():
        return kk.sample(p, q, rule, temperature, seed=seed, offset=offset, backend=backend, check=False)

    step()  # compile the kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens = step()
    for off in (0, 8, 16):
        offset.fill_(off)
        graph.replay()
        expected = kk.sample(p, q, kk.Dual(0.01), seed=5, offset=off, backend="torch")
        assert torch.equal(tokens, expected)
