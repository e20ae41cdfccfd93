"""Bad input raises the documented error, naming the argument (docs/design.md §1–§3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kad_kernels as kk
from helpers import make_logits
from kad_kernels import Dual, ImplicitReward, Nudging, Primal, Threshold

B, V, GAMMA = 4, 11, 3
RULE = Dual(0.3)


def _pq(shape=(B, V), dtype=torch.float32):
    return make_logits(shape, seed=1, dtype=dtype), make_logits(shape, seed=2, dtype=dtype)


def _verify_inputs(batch=B, gamma=GAMMA, vocab=V):
    p, q = _pq((batch, gamma + 1, vocab))
    drafts = torch.randint(0, vocab, (batch, gamma), generator=torch.Generator().manual_seed(3))
    return p, q, drafts


# Each entry point, called with the logits of the right rank.
CALLS = {
    "mixture": lambda p, q, rule=RULE, **kw: kk.mixture(p, q, rule, **kw),
    "sample": lambda p, q, rule=RULE, **kw: kk.sample(p, q, rule, **kw),
    "verify": lambda p, q, rule=RULE, **kw: kk.verify(
        p, q, torch.zeros(p.shape[0], p.shape[1] - 1, dtype=torch.long), rule, **kw
    ),
}
ENTRY = list(CALLS)


def _shape(entry: str, vocab: int = V) -> tuple[int, ...]:
    return (B, GAMMA + 1, vocab) if entry == "verify" else (B, vocab)


# --------------------------------------------------------------------------- logits


@pytest.mark.parametrize("entry", ENTRY)
def test_shape_mismatch(entry):
    p, _ = _pq(_shape(entry))
    _, q = _pq(_shape(entry, V + 1))
    with pytest.raises(ValueError, match=r"q_logits has shape .*but p_logits has"):
        CALLS[entry](p, q)


@pytest.mark.parametrize("entry", ENTRY)
def test_dtype_mismatch(entry):
    p, _ = _pq(_shape(entry))
    _, q = _pq(_shape(entry), dtype=torch.float16)
    with pytest.raises(TypeError, match=r"q_logits is torch.float16 but p_logits is torch.float32"):
        CALLS[entry](p, q)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float64, torch.bool])
@pytest.mark.parametrize("which", ["p_logits", "q_logits"])
def test_unsupported_logits_dtype(which, dtype):
    p, q = _pq()
    bad = torch.zeros(B, V, dtype=dtype)
    args = (bad, q) if which == "p_logits" else (p, bad)
    with pytest.raises(TypeError, match=rf"{which} must be float32, bfloat16 or float16"):
        kk.mixture(*args, RULE)


@pytest.mark.parametrize(
    "entry,shape",
    [("mixture", (B, 2, V)), ("mixture", (V,)), ("sample", (B, 2, V)), ("sample", (V,)), ("verify", (B, V)),
     ("verify", (1, B, 2, V))],
)
def test_wrong_ndim(entry, shape):
    p, q = _pq(shape)
    dims = 3 if entry == "verify" else 2
    with pytest.raises(ValueError, match=rf"p_logits must have {dims} dims, got shape"):
        if entry == "verify":
            kk.verify(p, q, torch.zeros(B, GAMMA, dtype=torch.long), RULE)
        else:
            CALLS[entry](p, q)


@pytest.mark.parametrize("which", ["p_logits", "q_logits"])
@pytest.mark.parametrize("entry", ENTRY)
def test_last_dim_not_contiguous(entry, which):
    shape = _shape(entry)
    p, q = _pq(shape)
    strided = make_logits(shape[:-1] + (2 * V,), seed=4)[..., ::2]  # last-dim stride 2
    assert strided.stride(-1) == 2
    args = (strided, q) if which == "p_logits" else (p, strided)
    with pytest.raises(ValueError, match=rf"{which} must be contiguous in its last dim"):
        CALLS[entry](*args)


def test_transposed_logits_refused():
    p = make_logits((V, B), seed=5).t()
    _, q = _pq()
    with pytest.raises(ValueError, match=r"p_logits must be contiguous in its last dim"):
        kk.mixture(p, q, RULE)


def test_non_contiguous_rows_are_fine():
    # Only the last dim must be contiguous: a row-strided view is accepted.
    big = make_logits((2 * B, V), seed=6)
    p, q = big[::2], make_logits((B, V), seed=7)
    assert not p.is_contiguous() and p.stride(-1) == 1
    got = kk.mixture(p, q, RULE).probs
    torch.testing.assert_close(got, kk.mixture(p.contiguous(), q, RULE).probs)


def test_empty_vocabulary():
    p = torch.empty(B, 0)
    with pytest.raises(ValueError, match=r"p_logits has an empty vocabulary"):
        kk.mixture(p, p.clone(), RULE)


def test_only_the_reference_differentiates_the_mixture(backend, device):
    """The kernels' π claimed a gradient and backward left p.grad None (cpu) or raised (triton)."""
    p, q = (x.to(device).requires_grad_() for x in _pq())
    probs = kk.mixture(p, q, RULE, backend=backend).probs
    if backend != "torch":
        assert not probs.requires_grad
        return
    probs[:, 0].sum().backward()
    assert p.grad is not None and q.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("rule", [Dual(0.3), Primal(0.9), ImplicitReward()], ids=repr)
@pytest.mark.parametrize("randomness", ["generator", "uniforms", "seed"])
def test_a_batch_of_no_rows_gives_empty_outputs(backend, device, rule, randomness):
    # A serving loop whose rows have all finished may still call the kernels.
    p, q = (torch.zeros(0, GAMMA + 1, V, device=device) for _ in range(2))
    ref = p.clone() if rule.needs_ref else None
    ref_row = None if ref is None else ref[:, 0]
    drafts = torch.zeros(0, GAMMA, dtype=torch.long, device=device)
    draws = {
        "generator": (dict(generator=torch.Generator(device).manual_seed(0)),) * 2,
        "uniforms": (dict(uniforms=torch.zeros(0, device=device)),
                     dict(uniforms=(torch.zeros(0, GAMMA, device=device), torch.zeros(0, device=device)))),
        "seed": (dict(seed=1, offset=0),) * 2,
    }[randomness]  # fmt: skip
    mixed = kk.mixture(p[:, 0], q[:, 0], rule, ref_logits=ref_row, backend=backend)
    assert (mixed.probs.shape, mixed.alpha.shape, mixed.probs.dtype) == ((0, V), (0,), torch.float32)
    tokens = kk.sample(p[:, 0], q[:, 0], rule, ref_logits=ref_row, backend=backend, **draws[0])
    assert (tokens.shape, tokens.dtype, tokens.device.type) == ((0,), torch.int64, device.type)
    verified = kk.verify(p, q, drafts, rule, ref_logits=ref, backend=backend, **draws[1])
    assert (verified.tokens.shape, verified.num_accepted.shape) == ((0, GAMMA + 1), (0,))
    assert verified.tokens.dtype == verified.num_accepted.dtype == torch.int64


def test_logits_not_a_tensor():
    _, q = _pq()
    with pytest.raises(TypeError, match=r"p_logits must be a tensor"):
        kk.mixture(q.tolist(), q, RULE)


@pytest.mark.parametrize("which", ["q_logits", "ref_logits"])
def test_different_devices(which):
    p, q = _pq()
    ref = make_logits((B, V), seed=8)
    meta = lambda x: torch.empty_like(x, device="meta")  # noqa: E731
    if which == "q_logits":
        args = dict(q_logits=meta(q), ref_logits=ref)
    else:
        args = dict(q_logits=q, ref_logits=meta(ref))
    with pytest.raises(ValueError, match=rf"{which} is on meta but p_logits on cpu"):
        kk.mixture(p, args["q_logits"], ImplicitReward(), ref_logits=args["ref_logits"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_different_devices_cuda():
    p, q = _pq()
    with pytest.raises(ValueError, match=r"q_logits is on cuda:0 but p_logits on cpu"):
        kk.mixture(p, q.cuda(), RULE)


def test_rule_not_a_rule():
    p, q = _pq()
    with pytest.raises(TypeError, match=r"rule must be a kad_kernels rule"):
        kk.mixture(p, q, "token_wise")
    with pytest.raises(TypeError, match=r"rule must be a kad_kernels rule .*got str"):
        kk.resolve_backend("Dual", "cpu")


@pytest.mark.parametrize("backend", [["cpu"], None, 0], ids=repr)
@pytest.mark.parametrize("entry", ENTRY)
def test_backend_not_a_name(entry, backend):
    p, q = _pq(_shape(entry))
    message = r"backend must be a backend's name \(a str, e.g. 'auto'\), got "
    with pytest.raises(TypeError, match=message):
        CALLS[entry](p, q, backend=backend)
    with pytest.raises(TypeError, match=message):
        kk.resolve_backend(RULE, "cpu", backend)


@pytest.mark.parametrize("entry", ["sample", "verify"])
def test_generator_not_a_generator(entry):
    p, q = _pq(_shape(entry))
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        CALLS[entry](p, q, generator=5)


def test_a_rule_is_immutable():
    """Checked when built: neither a field set later nor a write to the given tensor reaches the kernels."""
    lam = torch.tensor([0.3, 0.4])
    rule = Dual(lam)
    lam.fill_(math.nan)
    assert torch.equal(rule.param, torch.tensor([0.3, 0.4]))
    for made, field in [(Dual(0.3), "param"), (Primal(0.9), "kind"), (ImplicitReward(), "param"), (Dual(0.3), "new")]:
        with pytest.raises(AttributeError, match=f"{type(made).__name__} is immutable: build a new rule .*{field}"):
            setattr(made, field, 7.0)
    assert Dual(0.3) == Dual(0.3) and repr(Dual(0.3)) == "Dual(loss='logistic', param=0.3)"
    assert Dual(torch.tensor([0.3], requires_grad=True)).param.requires_grad  # the copy stays in autograd's graph


@pytest.mark.parametrize("value", [True, False, "1", None, 1.0j])
def test_temperature_in_range_is_false_for_what_the_entry_points_refuse(value):
    assert kk.temperature_in_range(value) is False


# --------------------------------------------------------------------------- ref_logits


@pytest.mark.parametrize("entry", ENTRY)
def test_ref_logits_missing_for_implicit_reward(entry):
    p, q = _pq(_shape(entry))
    with pytest.raises(ValueError, match=r"ImplicitReward needs ref_logits"):
        CALLS[entry](p, q, ImplicitReward())


@pytest.mark.parametrize("rule", [Dual(0.3), Primal(0.9), Nudging(0.3), Threshold(0.1, "max_q_minus")], ids=repr)
@pytest.mark.parametrize("entry", ENTRY)
def test_ref_logits_refused_by_other_rules(entry, rule):
    p, q = _pq(_shape(entry))
    with pytest.raises(ValueError, match=rf"ref_logits is only used by ImplicitReward, not {type(rule).__name__}"):
        CALLS[entry](p, q, rule, ref_logits=p.clone())


def test_ref_logits_shape_and_dtype():
    p, q = _pq()
    with pytest.raises(ValueError, match=r"ref_logits has shape \(4, 12\) but p_logits has \(4, 11\)"):
        kk.mixture(p, q, ImplicitReward(), ref_logits=make_logits((B, V + 1), seed=9))
    with pytest.raises(TypeError, match=r"ref_logits is torch.bfloat16 but p_logits is torch.float32"):
        kk.mixture(p, q, ImplicitReward(), ref_logits=p.bfloat16())


# --------------------------------------------------------------------------- rule parameters


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda v: Dual(v), "lam"),
        (lambda v: Nudging(v), "lam"),
        (lambda v: Threshold(v, "max_q_minus"), "lam"),
        (lambda v: Threshold(v, "minus_max_p_plus"), "lam"),
    ],
    ids=["Dual", "Nudging", "Threshold-max_q_minus", "Threshold-minus_max_p_plus"],
)
@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, -math.inf, math.inf], ids=str)
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "tensor"])
def test_lam_outside_unit_interval(make, name, value, as_tensor):
    arg = torch.tensor([0.2, value, 0.3]) if as_tensor else value
    with pytest.raises(ValueError, match=rf"{name} must lie in \[0.0, 1.0\]"):
        make(arg)


@pytest.mark.parametrize("value", [-0.1, -1e-9, math.nan, -math.inf], ids=str)
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "tensor"])
def test_budget_negative_or_nan(value, as_tensor):
    arg = torch.tensor([0.2, value]) if as_tensor else value
    with pytest.raises(ValueError, match=r"budget must lie in \[0.0, inf\]"):
        Primal(arg)


@pytest.mark.parametrize("loss", ["logistic", "perceptron", "zero_one", "squared"])
@pytest.mark.parametrize("value", [-0.5, math.nan], ids=str)
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "tensor"])
def test_mu_negative_or_nan(loss, value, as_tensor):
    arg = torch.tensor([value, 0.1]) if as_tensor else value
    with pytest.raises(ValueError, match=r"mu must lie in \[0.0, inf\]"):
        Dual(mu=arg, loss=loss)


@pytest.mark.parametrize("make", [lambda v: Dual(v), lambda v: Primal(v), lambda v: Dual(mu=v, loss="squared")],
                         ids=["lam", "budget", "mu"])
def test_edge_parameters_accepted(make):
    # The closed ends of the ranges are valid.
    for value in (0.0, 1.0, torch.tensor([0.0, 1.0])):
        make(value)


def test_ints_beyond_float_are_parameters_past_the_ends():
    """An int too large for a float is +inf (a budget, a mu) or out of range (lam), not an OverflowError."""
    assert Primal(10**400).param == math.inf and Dual(mu=10**400, loss="perceptron").param == math.inf
    with pytest.raises(ValueError, match=r"lam must lie in \[0.0, 1.0\], got inf"):
        Dual(10**400)
    with pytest.raises(ValueError, match=r"budget must lie in \[0.0, inf\], got -inf"):
        Primal(-(10**400))


def test_rules_compare_and_hash_with_tensor_parameters():
    per_row = lambda *values: Dual(torch.tensor(values))  # noqa: E731
    assert per_row(0.3, 0.4) == per_row(0.3, 0.4) and hash(per_row(0.3, 0.4)) == hash(per_row(0.3, 0.4))
    assert per_row(0.3, 0.4) != per_row(0.3, 0.5) and per_row(0.3, 0.4) != per_row(0.3, 0.4, 0.5)
    assert per_row(0.3) != Dual(0.3) and Dual(0.3) != Dual(mu=-math.log(0.3), loss="perceptron")
    assert Dual(torch.tensor([0.3])) != Dual(torch.tensor([0.3], dtype=torch.float64))
    assert len({Dual(0.3), Dual(0.3), Primal(0.3), Nudging(0.3), per_row(0.3, 0.4)}) == 4


@pytest.mark.parametrize("value", ["0.3", None, [0.3], True], ids=repr)
def test_parameter_of_wrong_type(value):
    with pytest.raises(TypeError, match=r"budget must be a float or a tensor"):
        Primal(value)


def test_parameter_tensor_2d():
    with pytest.raises(ValueError, match=r"lam must be a float or a 1-d tensor \[B\], got shape \(2, 2\)"):
        Dual(torch.full((2, 2), 0.3))


def test_parameter_tensor_complex_or_bool():
    with pytest.raises(TypeError, match=r"budget must be a real tensor"):
        Primal(torch.tensor([True, False]))


@pytest.mark.parametrize(
    "rule",
    [Dual(torch.full((B - 1,), 0.3)), Primal(torch.full((B + 1,), 0.5)), Nudging(torch.full((1,), 0.3))],
    ids=["Dual-3", "Primal-5", "Nudging-1"],
)
@pytest.mark.parametrize("entry", ENTRY)
def test_per_row_parameter_of_wrong_length(entry, rule):
    p, q = _pq(_shape(entry))
    n = rule.param.shape[0]
    name = {"Dual": "lam", "Primal": "budget", "Nudging": "lam"}[type(rule).__name__]  # the argument, by name
    with pytest.raises(ValueError, match=rf"{type(rule).__name__} {name} has {n} values for {B} rows"):
        CALLS[entry](p, q, rule)


@pytest.mark.parametrize(
    "huge, limit",
    [(Primal(1e300), Primal(math.inf)), (Dual(mu=1e39, loss="perceptron"), Dual(mu=math.inf, loss="perceptron"))],
    ids=str,
)
def test_a_finite_parameter_beyond_float32_reads_as_inf(backend, device, huge, limit):
    """The kernels take it as a float argument (inf in fp32); the reference refused it
    with a raw conversion error."""
    p, q = (x.to(device) for x in _pq())
    got = kk.mixture(p, q, huge, backend=backend)
    want = kk.mixture(p, q, limit, backend=backend)
    assert torch.equal(got.probs, want.probs) and torch.equal(got.alpha, want.alpha)


def test_a_float64_default_dtype_changes_nothing(backend, device):
    """torch.set_default_dtype(torch.float64) made the drawn uniforms float64, which the
    cpu backend refused, and the reference's α of ImplicitReward float64."""
    p, q, drafts = (x.to(device) for x in _verify_inputs())
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        seeded = [torch.Generator(device).manual_seed(0) for _ in range(2)]
        tokens = kk.sample(p[:, 0], q[:, 0], RULE, generator=seeded[0], backend=backend)
        verified = kk.verify(p, q, drafts, RULE, generator=seeded[1], backend=backend)
        alpha = kk.mixture(p[:, 0], q[:, 0], ImplicitReward(), ref_logits=q[:, 0], backend=backend).alpha
    finally:
        torch.set_default_dtype(default)
    seeded = [torch.Generator(device).manual_seed(0) for _ in range(2)]
    assert torch.equal(tokens, kk.sample(p[:, 0], q[:, 0], RULE, generator=seeded[0], backend=backend))
    assert torch.equal(verified.tokens, kk.verify(p, q, drafts, RULE, generator=seeded[1], backend=backend).tokens)
    assert alpha.dtype == torch.float32


# --------------------------------------------------------------------------- temperature


# 1e-40 and 1e-45: subnormal in fp32, whose 1/T overflows (the cpu backend drew garbage);
# 1e39 and 1e300: beyond fp32 (the torch backend raised a raw conversion error).
@pytest.mark.parametrize("value", [-0.5, -1e-12, math.nan, math.inf, -math.inf, 1e-40, 1e-45, 1e39, 1e300], ids=str)
@pytest.mark.parametrize("entry", ENTRY)
def test_bad_float_temperature(entry, value):
    p, q = _pq(_shape(entry))
    with pytest.raises(ValueError, match=r"temperature must be finite and >= 0"):
        CALLS[entry](p, q, temperature=value)


# A float64 tensor is checked as given: -1e-50 and 1e-50 would read as 0 (greedy) in fp32.
@pytest.mark.parametrize(
    "value, dtype",
    [(v, torch.float32) for v in (-0.5, math.nan, math.inf, 1e-40, 1e39)]
    + [(v, torch.float64) for v in (-0.5, math.nan, 1e-40, 1e39, 1e300, -1e-50, 1e-50)],
    ids=str,
)
@pytest.mark.parametrize("entry", ENTRY)
def test_bad_tensor_temperature(entry, value, dtype):
    p, q = _pq(_shape(entry))
    t = torch.tensor([1.0, 0.0, value, 0.7], dtype=dtype)
    with pytest.raises(ValueError, match=r"temperature must be finite and >= 0"):
        CALLS[entry](p, q, temperature=t)


def test_the_ends_of_the_temperature_range_sample_their_limits(backend, device):
    """T at fp32's smallest normal number draws as any tiny T does; at its largest, from uniform rows."""
    p, q = (x.to(device) for x in _pq())
    u = torch.full((B,), 0.5, device=device)
    cold = kk.sample(p, q, RULE, torch.finfo(torch.float32).tiny, uniforms=u, backend=backend)
    colder = kk.sample(p, q, RULE, 1e-30, uniforms=u, backend="torch")
    assert torch.equal(cold, colder)
    hot = kk.sample(p, q, kk.Dual(0.4), torch.finfo(torch.float32).max, uniforms=u, backend=backend)
    assert torch.equal(hot.cpu(), torch.full((B,), p.shape[1] // 2))  # π uniform: the middle token at u = 0.5


@pytest.mark.parametrize("shape", [(B - 1,), (B + 1,), (B, 1)])
@pytest.mark.parametrize("entry", ENTRY)
def test_temperature_tensor_of_wrong_shape(entry, shape):
    p, q = _pq(_shape(entry))
    with pytest.raises(ValueError, match=rf"temperature must be a float or a tensor \[{B}\], got shape"):
        CALLS[entry](p, q, temperature=torch.ones(shape))


@pytest.mark.parametrize("value", ["1.0", None, True, np.bool_(True)], ids=repr)
def test_temperature_of_wrong_type(value):
    p, q = _pq()
    with pytest.raises(TypeError, match=r"temperature must be a float or a tensor"):
        kk.mixture(p, q, RULE, temperature=value)


def test_numpy_numbers_are_numbers():
    """numpy's float32 and int64 are no Python floats (float64 is), but numbers all the same."""
    p, q = _pq()
    expected = kk.mixture(p, q, Dual(float(np.float32(0.3))), temperature=float(np.float32(0.7))).probs
    got = kk.mixture(p, q, Dual(np.float32(0.3)), temperature=np.float32(0.7)).probs
    assert torch.equal(got, expected)
    assert Primal(np.int64(1)) == Primal(1.0)
    with pytest.raises(ValueError, match="temperature must be finite and >= 0"):
        kk.mixture(p, q, RULE, temperature=np.float32("nan"))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool], ids=str)
@pytest.mark.parametrize("check", [True, False])
def test_temperature_tensor_of_a_dtype_that_is_not_real(dtype, check):
    """A complex T lost its imaginary part unchecked (and failed inside a comparison
    checked); a bool T read as 1.0."""
    p, q = _pq()
    with pytest.raises(TypeError, match=rf"temperature must be a real tensor, got {dtype}"):
        kk.mixture(p, q, RULE, temperature=torch.ones(B, dtype=dtype), check=check)


def test_temperature_zero_d_tensor_and_int_accepted():
    p, q = _pq()
    a = kk.mixture(p, q, RULE, temperature=torch.tensor(0.5)).probs
    b = kk.mixture(p, q, RULE, temperature=0.5).probs
    torch.testing.assert_close(a, b)
    kk.mixture(p, q, RULE, temperature=1)
    kk.mixture(p, q, RULE, temperature=0)


# --------------------------------------------------------------------------- draft tokens


@pytest.mark.parametrize(
    "bad,dtype",
    [(bad, dtype) for dtype in (torch.int32, torch.int64) for bad in (-1, V, V + 100, -(2**31))] + [(2**40, torch.int64)],
    ids=str,
)
def test_draft_token_out_of_range(bad, dtype):
    p, q, drafts = _verify_inputs()
    drafts = drafts.to(dtype)
    drafts[2, 1] = bad
    with pytest.raises(ValueError, match=rf"draft_tokens\[2, 1\] = {bad} is outside the vocabulary \[0, {V}\)"):
        kk.verify(p, q, drafts, RULE)


WRAPS = "2**32 + a token"  # read as int32 it would be that token, accepted at a coin of 0


@pytest.mark.parametrize("bad", [-1, V, 10**8, WRAPS], ids=str)
def test_check_false_rejects_a_draft_outside_the_vocabulary(backend, device, bad):
    """Unchecked, such a draft has π = q = 0: rejected, never read out of bounds (the
    cpu backend read past the row and emitted it, or crashed; Triton read 2³² + v as v).
    The torch reference raises a RuntimeError (an index out of bounds)."""
    if backend == "torch":
        pytest.skip("the reference indexes the draft")
    p, q, _ = _verify_inputs()
    first = kk.mixture(p[:, 0], q[:, 0], RULE).probs.argmax(-1)  # accepted with a coin of 0
    drafts = torch.stack([first, first, first], dim=1)
    drafts[2, 1] = 2**32 + first[2].item() if bad == WRAPS else bad
    accept, draw = torch.zeros(B, GAMMA), torch.full((B,), 0.5)
    out = kk.verify(p.to(device), q.to(device), drafts.to(device), RULE, uniforms=(accept.to(device), draw.to(device)),
                    backend=backend, check=False)
    assert out.num_accepted[2].item() == 1 and out.tokens[2, 0].item() == first[2].item()
    assert 0 <= out.tokens[2, 1].item() < V and out.tokens[2, 2].item() == -1


def test_check_false_still_checks_draft_shape():
    # check=False skips the value checks (a host sync); only shape/dtype are still checked.
    p, q, drafts = _verify_inputs()
    with pytest.raises(ValueError, match=r"draft_tokens must have shape"):
        kk.verify(p, q, drafts[:, :1], RULE, check=False)


@pytest.mark.parametrize("shape", [(B, GAMMA + 1), (B, GAMMA - 1), (B + 1, GAMMA), (B * GAMMA,), (B, GAMMA, 1)])
def test_draft_wrong_shape(shape):
    p, q, _ = _verify_inputs()
    with pytest.raises(ValueError, match=rf"draft_tokens must have shape \[B, γ\] = \[{B}, {GAMMA}\]"):
        kk.verify(p, q, torch.zeros(shape, dtype=torch.long), RULE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.uint8, torch.bool])
def test_draft_wrong_dtype(dtype):
    p, q, drafts = _verify_inputs()
    with pytest.raises(TypeError, match=r"draft_tokens must be int32 or int64"):
        kk.verify(p, q, drafts.to(dtype), RULE)


def test_draft_not_a_tensor():
    p, q, drafts = _verify_inputs()
    with pytest.raises(TypeError, match=r"draft_tokens must be a tensor"):
        kk.verify(p, q, drafts.tolist(), RULE)


def test_draft_on_other_device():
    p, q, drafts = _verify_inputs()
    with pytest.raises(ValueError, match=r"draft_tokens is on meta"):
        kk.verify(p, q, torch.empty_like(drafts, device="meta"), RULE)


def test_gamma_zero():
    p, q = _pq((B, 1, V))
    with pytest.raises(ValueError, match=r"verify needs γ >= 1 drafts: p_logits must be \[B, γ\+1, V\]"):
        kk.verify(p, q, torch.zeros(B, 0, dtype=torch.long), RULE)


# --------------------------------------------------------------------------- uniforms


@pytest.mark.parametrize("shape", [(B + 1,), (B, 1), (1,), ()])
def test_sample_uniforms_wrong_shape(shape):
    p, q = _pq()
    with pytest.raises(ValueError, match=rf"uniforms must have shape \[{B}\]"):
        kk.sample(p, q, RULE, uniforms=torch.full(shape, 0.5))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64])
def test_sample_uniforms_wrong_dtype(dtype):
    p, q = _pq()
    with pytest.raises(TypeError, match=r"uniforms must be float32"):
        kk.sample(p, q, RULE, uniforms=torch.zeros(B, dtype=dtype))


@pytest.mark.parametrize("value", [1.0, 1.5, -1e-7, math.nan, math.inf], ids=str)
def test_sample_uniforms_out_of_range(value):
    p, q = _pq()
    u = torch.tensor([0.1, 0.2, value, 0.3])
    with pytest.raises(ValueError, match=r"uniforms must lie in \[0, 1\)"):
        kk.sample(p, q, RULE, uniforms=u)


def test_sample_uniforms_not_a_tensor():
    p, q = _pq()
    with pytest.raises(TypeError, match=r"uniforms must be a tensor"):
        kk.sample(p, q, RULE, uniforms=[0.5] * B)


def test_sample_uniforms_other_device():
    p, q = _pq()
    with pytest.raises(ValueError, match=r"uniforms is on meta"):
        kk.sample(p, q, RULE, uniforms=torch.empty(B, device="meta"))


def test_verify_uniforms_not_a_pair():
    p, q, drafts = _verify_inputs()
    with pytest.raises(TypeError, match=r"uniforms must be a pair \(accept \[B, γ\], draw \[B\]\)"):
        kk.verify(p, q, drafts, RULE, uniforms=torch.rand(B, GAMMA + 1))
    with pytest.raises(TypeError, match=r"uniforms must be a pair"):
        kk.verify(p, q, drafts, RULE, uniforms=(torch.rand(B, GAMMA),))


@pytest.mark.parametrize(
    "accept,draw,error,match",
    [
        ((B, GAMMA + 1), (B,), ValueError, r"uniforms\[0\] \(accept\) must have shape \[4, 3\]"),
        ((B,), (B,), ValueError, r"uniforms\[0\] \(accept\) must have shape"),
        ((B, GAMMA), (B, 1), ValueError, r"uniforms\[1\] \(draw\) must have shape \[4\]"),
        ((B, GAMMA), (B + 1,), ValueError, r"uniforms\[1\] \(draw\) must have shape"),
    ],
)
def test_verify_uniforms_wrong_shape(accept, draw, error, match):
    p, q, drafts = _verify_inputs()
    with pytest.raises(error, match=match):
        kk.verify(p, q, drafts, RULE, uniforms=(torch.rand(accept), torch.rand(draw)))


def test_verify_uniforms_wrong_dtype_and_range():
    p, q, drafts = _verify_inputs()
    a, s = torch.rand(B, GAMMA), torch.rand(B)
    with pytest.raises(TypeError, match=r"uniforms\[0\] \(accept\) must be float32"):
        kk.verify(p, q, drafts, RULE, uniforms=(a.double(), s))
    with pytest.raises(TypeError, match=r"uniforms\[1\] \(draw\) must be float32"):
        kk.verify(p, q, drafts, RULE, uniforms=(a, s.half()))
    bad = a.clone()
    bad[1, 2] = 1.0
    with pytest.raises(ValueError, match=r"uniforms\[0\] \(accept\) must lie in \[0, 1\)"):
        kk.verify(p, q, drafts, RULE, uniforms=(bad, s))
    with pytest.raises(ValueError, match=r"uniforms\[1\] \(draw\) must lie in \[0, 1\)"):
        kk.verify(p, q, drafts, RULE, uniforms=(a, -s))


@pytest.mark.parametrize(
    "extra",
    [dict(generator=torch.Generator()), dict(seed=1), dict(offset=3), dict(seed=1, offset=2)],
    ids=["generator", "seed", "offset", "seed+offset"],
)
@pytest.mark.parametrize("entry", ["sample", "verify"])
def test_uniforms_with_other_randomness(entry, extra):
    if entry == "sample":
        p, q = _pq()
        call = lambda: kk.sample(p, q, RULE, uniforms=torch.rand(B), **extra)  # noqa: E731
    else:
        p, q, drafts = _verify_inputs()
        call = lambda: kk.verify(  # noqa: E731
            p, q, drafts, RULE, uniforms=(torch.rand(B, GAMMA), torch.rand(B)), **extra
        )
    with pytest.raises(ValueError, match=r"uniforms fixes the randomness: do not also pass generator, seed or offset"):
        call()


@pytest.mark.parametrize("entry", ["sample", "verify"])
def test_generator_with_seed(entry):
    kw = dict(generator=torch.Generator().manual_seed(0), seed=5)
    with pytest.raises(ValueError, match=r"pass either generator or seed/offset, not both"):
        if entry == "sample":
            kk.sample(*_pq(), RULE, **kw)
        else:
            p, q, drafts = _verify_inputs()
            kk.verify(p, q, drafts, RULE, **kw)


@pytest.mark.parametrize("entry", ["sample", "verify"])
def test_offset_without_seed(entry):
    with pytest.raises(ValueError, match=r"offset needs seed"):
        if entry == "sample":
            kk.sample(*_pq(), RULE, offset=4)
        else:
            p, q, drafts = _verify_inputs()
            kk.verify(p, q, drafts, RULE, offset=4)


@pytest.mark.parametrize(
    "kw,error,match",
    [
        (dict(seed=1.5), TypeError, r"seed must be an int or a 1-element int64 tensor"),
        (dict(seed=True), TypeError, r"seed must be an int"),
        (dict(seed=2**63), ValueError, r"seed must fit in int64"),
        (dict(seed=-(2**63) - 1), ValueError, r"seed must fit in int64"),
        (dict(seed=torch.tensor([1], dtype=torch.int32)), ValueError, r"seed must be an int or a 1-element int64"),
        (dict(seed=torch.tensor([1, 2])), ValueError, r"seed must be an int or a 1-element int64"),
        (dict(seed=1, offset=0.5), TypeError, r"offset must be an int"),
        (dict(seed=1, offset=torch.tensor([1.0])), ValueError, r"offset must be an int or a 1-element int64"),
        (dict(seed=torch.empty(1, dtype=torch.long, device="meta")), ValueError, r"seed is on meta"),
    ],
    ids=["float-seed", "bool-seed", "seed-2^63", "seed-below-int64", "int32-tensor", "two-seeds", "float-offset",
         "float-offset-tensor", "seed-device"],
)
def test_bad_seed_or_offset(kw, error, match):
    with pytest.raises(error, match=match):
        kk.sample(*_pq(), RULE, **kw)


# --------------------------------------------------------------------------- bad logits


def _bad_row(x, row, kind):
    x = x.clone()
    if kind == "nan":
        x[row, ..., 3] = float("nan")
    elif kind == "posinf":
        x[row, ..., 5] = float("inf")
    else:
        x[row] = float("-inf")
    return x


BAD_KINDS = [
    pytest.param("nan", r"contains NaN or \+inf", id="nan"),
    pytest.param("posinf", r"contains NaN or \+inf", id="posinf"),
    pytest.param("all_neg_inf", r"is -inf everywhere", id="all_neg_inf"),
]


@pytest.mark.parametrize("which", ["p_logits", "q_logits", "ref_logits"])
@pytest.mark.parametrize("kind,message", BAD_KINDS)
@pytest.mark.parametrize("entry", ["mixture", "sample"])
def test_bad_logits_row_raises(backend, device, entry, kind, message, which):
    p, q = _pq()
    ref = make_logits((B, V), seed=9)
    tensors = {"p_logits": p, "q_logits": q, "ref_logits": ref}
    tensors[which] = _bad_row(tensors[which], 2, kind)
    p, q, ref = (tensors[k].to(device) for k in ("p_logits", "q_logits", "ref_logits"))
    rule = ImplicitReward() if which == "ref_logits" else RULE
    ref = ref if rule.needs_ref else None
    fn = kk.mixture if entry == "mixture" else kk.sample
    with pytest.raises(ValueError, match=rf"{which} row \[2\] {message}"):
        fn(p, q, rule, ref_logits=ref, backend=backend)


@pytest.mark.parametrize("which", ["p_logits", "q_logits"])
@pytest.mark.parametrize("kind,message", BAD_KINDS)
def test_bad_logits_row_raises_in_verify(backend, device, kind, message, which):
    p, q, drafts = _verify_inputs()
    x = (p if which == "p_logits" else q).clone()
    if kind == "all_neg_inf":
        x[1, 2] = float("-inf")
    else:
        x[1, 2, 4] = float("nan") if kind == "nan" else float("inf")
    p, q = (x, q) if which == "p_logits" else (p, x)
    with pytest.raises(ValueError, match=rf"{which} row \[1, 2\] {message}"):
        kk.verify(p.to(device), q.to(device), drafts.to(device), RULE, backend=backend)


def test_neg_inf_entries_are_fine(backend, device):
    p, q = _pq()
    p[:, :3] = float("-inf")
    q[:, 5:] = float("-inf")
    kk.mixture(p.to(device), q.to(device), RULE, backend=backend)
    kk.sample(p.to(device), q.to(device), RULE, backend=backend)


@pytest.mark.parametrize("kind", ["nan", "posinf", "all_neg_inf"])
@pytest.mark.parametrize("entry", ["mixture", "sample", "verify"])
def test_check_false_skips_bad_logits_check(backend, device, entry, kind):
    if entry == "verify":
        p, q, drafts = _verify_inputs()
        p = _bad_row(p, 1, kind)
        out = kk.verify(p.to(device), q.to(device), drafts.to(device), RULE, backend=backend, check=False)
        assert out.tokens.shape == (B, GAMMA + 1)
        return
    p, q = _pq()
    p = _bad_row(p, 1, kind)
    fn = kk.mixture if entry == "mixture" else kk.sample
    out = fn(p.to(device), q.to(device), RULE, backend=backend, check=False)
    shape = (B, V) if entry == "mixture" else (B,)
    assert (out.probs if entry == "mixture" else out).shape == shape
    with pytest.raises(ValueError, match=r"p_logits row \[1\]"):
        fn(p.to(device), q.to(device), RULE, backend=backend, check=True)


@pytest.mark.parametrize("entry", ["sample", "verify"])
def test_check_false_draws_rows_of_a_negative_or_nan_temperature_at_t1(backend, device, entry):
    """Such a temperature tensor is a value check's to refuse (a host sync): unchecked, its
    rows are drawn at T = 1 on every backend, never left as uninitialized memory."""
    bad = torch.tensor([-1.0, float("nan"), 1.0, -0.5])
    one = torch.ones(B)
    if entry == "sample":
        p, q = _pq()
        u = torch.tensor([0.1, 0.5, 0.7, 0.9])

        def tokens(temperature, where, backend):
            return kk.sample(p.to(where), q.to(where), RULE, temperature=temperature.to(where), uniforms=u.to(where),
                             backend=backend, check=False).cpu()  # fmt: skip
    else:
        p, q, drafts = _verify_inputs()
        accept = torch.rand(B, GAMMA, generator=torch.Generator().manual_seed(4))
        draw = torch.tensor([0.1, 0.5, 0.7, 0.9])

        def tokens(temperature, where, backend):
            out = kk.verify(p.to(where), q.to(where), drafts.to(where), RULE, temperature=temperature.to(where),
                            uniforms=(accept.to(where), draw.to(where)), backend=backend, check=False)
            return out.tokens.cpu()

    expected = tokens(one, "cpu", "torch")
    assert torch.equal(tokens(bad, device, backend), expected)


def test_first_bad_row_is_named():
    p, q = _pq()
    p[3, 0] = float("nan")
    q[1] = float("-inf")
    with pytest.raises(ValueError, match=r"row \[1\]"):
        kk.mixture(p, q, RULE)


# --------------------------------------------------------------------------- backends and names


@pytest.mark.parametrize("name", ["foo", "cuda_graphs", "", "TORCH"])
def test_unknown_backend(name):
    p, q = _pq()
    with pytest.raises(RuntimeError, match=rf"unknown backend '{name}'"):
        kk.mixture(p, q, RULE, backend=name)


def test_unavailable_backend_says_how_to_get_it():
    from kad_kernels import _backends

    p, q = _pq()
    for name in _backends._REGISTRY:
        try:
            _backends.resolve(name, p.device)
        except RuntimeError as exc:
            assert name in str(exc) and ("not available" in str(exc) or "does not run on" in str(exc))
            with pytest.raises(RuntimeError, match=rf"backend '{name}'"):
                kk.mixture(p, q, RULE, backend=name)
            return
    pytest.skip("every registered backend serves CPU tensors here")


@pytest.mark.parametrize("name", ["torch", "cpu", "triton", "cuda", "auto"])
def test_backend_on_a_device_it_does_not_serve(name):
    """Meta tensors (no backend serves them) get the devices the backend serves, not a how-to-install hint."""
    p, q = (x.to("meta") for x in _pq())
    expected = "torch" if name == "auto" else name  # auto falls back to the reference
    if expected not in kk.available_backends():
        pytest.skip(f"backend {expected!r} does not load here")
    with pytest.raises(RuntimeError, match=rf"backend '{expected}' does not run on meta tensors; it serves (cpu|cuda)"):
        kk.mixture(p, q, RULE, backend=name)


def test_available_backends():
    names = kk.available_backends()
    assert isinstance(names, list) and "torch" in names


@pytest.mark.parametrize("name", ["unknown", "token-wise", "TOKEN_WISE", "budget", ""])
def test_rule_from_name_unknown(name):
    with pytest.raises(ValueError, match=rf"unknown rule name {name!r}; known: token_wise"):
        kk.rule_from_name(name, 0.3)


def test_rule_from_name_checks_the_parameter():
    with pytest.raises(ValueError, match=r"lam must lie in"):
        kk.rule_from_name("token_wise", 1.5)
    with pytest.raises(ValueError, match=r"budget must lie in"):
        kk.rule_from_name("budget_lr", -0.5)


def test_dual_wrong_loss():
    with pytest.raises(ValueError, match=r"loss must be one of \['logistic', 'perceptron', 'squared', 'zero_one'\]"):
        Dual(0.3, loss="hinge")


def test_dual_needs_exactly_one_of_lam_and_mu():
    with pytest.raises(ValueError, match=r"Dual needs exactly one of lam \(logistic loss\) or mu"):
        Dual(0.3, mu=1.0)
    with pytest.raises(ValueError, match=r"Dual needs exactly one of lam"):
        Dual()
    with pytest.raises(ValueError, match=r"Dual needs exactly one of lam"):
        Dual(0.3, loss="perceptron", mu=0.1)


@pytest.mark.parametrize("loss", ["perceptron", "zero_one", "squared"])
def test_dual_lam_with_other_losses(loss):
    with pytest.raises(ValueError, match=rf"the {loss} loss takes mu=, not lam"):
        Dual(0.3, loss=loss)


def test_threshold_wrong_form():
    with pytest.raises(ValueError, match=r"form must be one of"):
        Threshold(0.1, "max_q")


def test_resolve_backend_names_what_auto_runs_and_refuses_what_cannot_run():
    for rule in (Dual(0.3), Primal(0.5)):
        name = kk.resolve_backend(rule, "cpu")
        assert name in kk.available_backends()
        p, q = _pq()
        u = torch.full((B,), 0.5)
        assert torch.equal(kk.sample(p, q, rule, uniforms=u), kk.sample(p, q, rule, uniforms=u, backend=name))
    assert kk.resolve_backend(RULE, torch.device("cpu"), "torch") == "torch"
    with pytest.raises(RuntimeError, match="unknown backend 'fast'"):
        kk.resolve_backend(RULE, "cpu", "fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
def test_resolve_backend_refuses_cuda_where_there_is_none(backend):
    with pytest.raises(RuntimeError, match="device 'cuda': CUDA is not available here"):
        kk.resolve_backend(RULE, "cuda", backend)
