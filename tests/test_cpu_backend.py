"""What the C++ ``cpu`` backend promises beyond the shared suite: a row's result does
not depend on the batch around it or on the thread count (csrc/cpu/row.h walks the
vocabulary in fixed chunks and combines them in order, whether the chunks of a row run
in parallel (small batches) or the rows do (large ones))."""

import pytest
import torch

import kad_kernels as kk
from helpers import make_logits

pytestmark = pytest.mark.skipif("cpu" not in kk.available_backends(), reason="the C++ extension did not build")

V = 50257  # several 16k chunks, and a ragged last one
RULES = [kk.Dual(0.001), kk.Primal(0.9), kk.Nudging(0.4), kk.ImplicitReward()]


def _inputs(batch: int, seed: int):
    p, q, ref = (make_logits((batch, V), seed=seed + i, dtype=torch.bfloat16) for i in range(3))
    return p, q, ref


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_a_row_does_not_depend_on_its_batch(rule):
    p, q, ref = _inputs(8, seed=1)
    ref = ref if rule.needs_ref else None
    batched = kk.mixture(p, q, rule, 0.8, ref_logits=ref, backend="cpu")
    for row in (0, 5):
        alone = kk.mixture(p[row : row + 1], q[row : row + 1], rule, 0.8,
                           ref_logits=None if ref is None else ref[row : row + 1], backend="cpu")
        assert torch.equal(alone.probs[0], batched.probs[row])
        assert torch.equal(alone.alpha[0], batched.alpha[row])


@pytest.mark.parametrize("batch", [1, 8])
def test_results_do_not_depend_on_the_thread_count(batch):
    p, q, _ = _inputs(batch, seed=2)
    draft_p, draft_q = (make_logits((batch, 4, V), seed=s, dtype=torch.float16) for s in (3, 4))
    drafts = torch.randint(0, V, (batch, 3), generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()

    def run():
        mix = kk.mixture(p, q, kk.Primal(0.5), backend="cpu")
        tokens = kk.sample(p, q, kk.Dual(0.001), seed=7, offset=0, backend="cpu")
        out = kk.verify(draft_p, draft_q, drafts, kk.Dual(0.001), seed=7, offset=0, backend="cpu")
        return mix.probs, mix.alpha, tokens, out.tokens, out.num_accepted

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
