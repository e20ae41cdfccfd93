"""What the C++ ``cpu`` backend promises beyond the shared suite: a row's result does
not depend on the batch around it or on the thread count (csrc/cpu/row.h walks the
vocabulary in fixed chunks and combines them in order, whether the chunks of a row run
in parallel (small batches) or the rows do (large ones))."""

import pytest
import torch

import kad_kernels as kk
from helpers import make_logits
from kad_kernels.rules import Kind

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


# ------------------------------------------------- the ops called directly (torch.ops.kad.native_*)
# The ops are public, so the C++ side checks what would take a kernel out of bounds,
# even though kad_kernels' API validates it first.  (Before, a short uniforms tensor was
# read past its end and an ImplicitReward call without ref dereferenced null.)
DUAL, IMPLICIT = int(Kind.LOGISTIC), int(Kind.IMPLICIT_REWARD)
_DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in kk.available_backends(), reason="needs the cuda backend")])]


def _sample(device, kind=DUAL, p=None, ref=None, uniforms=None, seed=None, offset=None):
    p = torch.randn(4, 33, device=device) if p is None else p
    return torch.ops.kad.native_sample(kind, None, 0.05, p, p.clone(), ref, None, 1.0, uniforms, seed, offset)


def _verify(device, accept=None, draw=None, gamma=3):
    p = torch.randn(4, gamma + 1, 33, device=device)
    draft = torch.zeros(4, gamma, dtype=torch.long, device=device)
    return torch.ops.kad.native_verify(DUAL, None, 0.05, p, p.clone(), None, draft, None, 1.0, accept, draw, None, None)


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d: _sample(d, uniforms=torch.rand(3, device=d)), "uniforms must be f32 with 4 values"),
        (lambda d: _sample(d, uniforms=torch.rand(0, device=d)), "uniforms must be f32 with 4 values"),
        (lambda d: _sample(d, uniforms=torch.rand(4, device=d).double()), "uniforms must be f32 with 4 values"),
        (lambda d: _sample(d), "seed and offset"),
        (lambda d: _sample(d, seed=torch.zeros(2, dtype=torch.long, device=d),
                           offset=torch.zeros(1, dtype=torch.long, device=d)), "seed and offset must be int64 [1]"),
        (lambda d: _verify(d, torch.rand(4, 2, device=d), torch.rand(4, device=d)), "accept uniforms must be f32 with 12"),
        (lambda d: _verify(d, torch.rand(4, 3, device=d), torch.rand(3, device=d)), "draw uniforms must be f32 with 4"),
        (lambda d: _sample(d, kind=IMPLICIT, uniforms=torch.rand(4, device=d)), "ref logits go with ImplicitReward"),
        (lambda d: _sample(d, ref=torch.randn(4, 33, device=d), uniforms=torch.rand(4, device=d)),
         "ref logits go with ImplicitReward"),
        (lambda d: _sample(d, kind=99, uniforms=torch.rand(4, device=d)), "unknown rule kind 99"),
    ],
    ids=["short-uniforms", "empty-uniforms", "f64-uniforms", "no-randomness", "seed-shape", "short-accept",
         "short-draw", "implicit-without-ref", "ref-without-implicit", "unknown-kind"],
)
def test_ops_called_directly_refuse_what_would_read_out_of_bounds(device, call, message):
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[")):
        call(device)


def test_philox_offsets_wrap_past_int64s_maximum_as_the_reference_does():
    p, q = make_logits((6, 101), seed=8), make_logits((6, 101), seed=9)
    offset = 2**63 - 3  # the call's counters run past 2^63 - 1
    native = kk.sample(p, q, kk.Dual(0.01), seed=1, offset=offset, backend="cpu")
    assert torch.equal(native, kk.sample(p, q, kk.Dual(0.01), seed=1, offset=offset, backend="torch"))
