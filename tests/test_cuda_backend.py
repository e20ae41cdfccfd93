"""The ``cuda`` backend's layouts that the shared suite's sizes do not reach.

csrc/cuda picks one block per row (one launch per call) only when a call has at
least about 4 rows per SM, i.e. several hundred rows on an H100; the shared suite's
largest case has fewer, so at V > 8192 it only ever runs the split-vocabulary path.
These GPU-marked tests run both layouts on the same rows against the reference."""

import pytest
import torch

import kad_kernels as kk
from helpers import cdf_boundary_distance, make_logits

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif("cuda" not in kk.available_backends(), reason="the extension was built without CUDA"),
]

V = 50257
RULES = [kk.Dual(0.001), kk.Primal(0.9), kk.ImplicitReward()]


def _rows(n: int):
    return [make_logits((n, V), seed=s, dtype=torch.bfloat16, device="cuda") for s in (1, 2, 3)]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_one_block_per_row_matches_the_reference_and_the_sliced_layout(rule):
    rows = 8 * torch.cuda.get_device_properties(0).multi_processor_count  # one launch, one block per row
    p, q, ref = _rows(rows)
    ref = ref if rule.needs_ref else None
    full = kk.mixture(p, q, rule, ref_logits=ref, backend="cuda")
    expected = kk.mixture(p, q, rule, ref_logits=ref, backend="torch")
    torch.testing.assert_close(full.probs, expected.probs, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(full.alpha, expected.alpha, rtol=1e-4, atol=1e-6)
    few = kk.mixture(p[:8], q[:8], rule, ref_logits=None if ref is None else ref[:8], backend="cuda")  # sliced
    torch.testing.assert_close(few.probs, full.probs[:8], rtol=1e-5, atol=1e-7)

    u = torch.rand(rows, device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    tokens = kk.sample(p, q, rule, ref_logits=ref, uniforms=u, backend="cuda").cpu()
    expected_tokens = kk.sample(p, q, rule, ref_logits=ref, uniforms=u, backend="torch").cpu()
    pi = expected.probs.double().cpu().numpy()
    for n in torch.nonzero(tokens != expected_tokens).flatten().tolist():
        assert cdf_boundary_distance(pi[n], float(u[n])) <= 1e-5, f"row {n}: {tokens[n]} vs {expected_tokens[n]}"


def test_auto_takes_the_backend_measured_fastest_for_the_rule():
    """RESULTS.md (H100): cuda for Primal, triton (when installed) for the others."""
    from kad_kernels import _backends
    from kad_kernels.rules import Kind

    device = torch.device("cuda")
    assert _backends.resolve("auto", device, Kind.PRIMAL).name == "cuda"
    others = "triton" if "triton" in kk.available_backends() else "cuda"
    assert _backends.resolve("auto", device, Kind.LOGISTIC).name == others
