"""band_loss with bounds given by the caller (lower, upper): the same bits as the built-in bounds when given those,
the float64 reference for bounds of any making, the errors, and every face (torch op, Python face, numpy, CUDA)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bandpo
import bandpo.np as bnp
from bandpo import reference
from conftest import make_batch

AGGS = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
BOUND_KEYS = ("divergence", "delta", "eps_low", "eps_high", "relax_high_p", "ratio_max")
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and bandpo.has_cuda_kernels()), reason="needs a CUDA device and kernels"
        ),
    ),
]


def loss_and_grad(logp, *args, **kw):
    x = logp.detach().clone().requires_grad_()
    loss, metrics = torch.ops.bandpo.band_loss(x, *args, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), metrics, grad


def assert_same_bits(a, b):
    for u, v in zip(a, b):
        assert torch.equal(u, v), (u, v)


def own_bounds(old, seed, ratio_max=math.inf):
    """Bounds of nobody's divergence: lower in [0, 1], upper in [1, min(ratio_max, 5)]."""
    g = torch.Generator().manual_seed(seed)
    lower = torch.rand(old.shape, generator=g, dtype=torch.float64)
    upper = 1 + torch.rand(old.shape, generator=g, dtype=torch.float64) * (min(ratio_max, 5.0) - 1)
    return lower.to(old.dtype), upper.to(old.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("divergence", list(bandpo.DIVERGENCES))
@pytest.mark.parametrize("agg", AGGS)
def test_band_bounds_given_back_give_the_same_bits(device, dtype, divergence, agg):
    logp, old, adv, mask, ref = (t.to(device) for t in make_batch(seed=5, dtype=dtype))
    kw = dict(divergence=divergence, agg=agg, relax_high_p=True, ratio_max=6.0, dual_clip=3.0)
    # Half-precision inputs compute in float32: their bounds go in as float32 (rounded to bfloat16 they would clip
    # at the rounded values).
    bounds_of = old.float() if dtype == torch.bfloat16 else old
    lower, upper = torch.ops.bandpo.band_bounds(bounds_of, **{k: v for k, v in kw.items() if k in BOUND_KEYS})
    own = loss_and_grad(logp, old, adv, mask, ref, kl_coef=0.1, **kw)
    given = loss_and_grad(logp, old, adv, mask, ref, lower, upper, kl_coef=0.1, **kw)
    assert_same_bits(own, given)
    assert 0 < own[1][0] < 1  # some tokens clip: the bounds decide something


def op_matches_the_reference(logp, old, adv, mask, ref, lower, upper, **kw):
    """The op's loss, metrics and gradient against bandpo.reference's (float64) on the same given bounds."""
    op = loss_and_grad(logp, old, adv, mask, ref, lower, upper, **kw)
    x = logp.clone().requires_grad_()
    loss, metrics = reference.band_loss(x, old, adv, mask, ref, lower, upper, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(op[0], loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(op[1], metrics, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(op[2], grad, rtol=1e-12, atol=1e-14)
    return op


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("dual_clip", [None, 2.0])
@pytest.mark.parametrize("relax", [False, True])
def test_bounds_of_any_making_match_the_reference(agg, dual_clip, relax):
    logp, old, adv, mask, ref = make_batch(seed=7, spread=0.8)
    lower, upper = own_bounds(old, seed=1, ratio_max=4.0)
    kw = dict(agg=agg, dual_clip=dual_clip, relax_high_p=relax, ratio_max=4.0, kl_coef=0.05, kl_estimator="k3")
    op = op_matches_the_reference(logp, old, adv, mask, ref, lower, upper, **kw)
    assert op[1][1] > 0 and op[1][2] > 0  # both sides clip


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 200)),
    spread=st.sampled_from([0.05, 0.5, 2.0]),
    ratio_max=st.sampled_from([1.0, 2.0, math.inf]),
    per_row=st.booleans(),
)
def test_property_against_the_reference(seed, shape, spread, ratio_max, per_row):
    logp, old, adv, mask, _ = make_batch(B=shape[0], T=shape[1], seed=seed, spread=spread)
    if per_row:
        adv = adv[:, 0]
    lower, upper = own_bounds(old, seed, ratio_max)
    kw = dict(ratio_max=ratio_max, agg="seq-mean-token-mean")
    op_matches_the_reference(logp, old, adv, mask, None, lower, upper, **kw)


def test_the_divergence_plays_no_part_and_no_kl_table_is_built():
    logp, old, adv, mask, _ = make_batch(seed=2, dtype=torch.float32)
    lower, upper = own_bounds(old, seed=3)
    builds = bandpo._capi.kl_table_builds()
    outs = [
        loss_and_grad(logp, old, adv, mask, None, lower, upper, divergence=d, delta=0.0917) for d in bandpo.DIVERGENCES
    ]
    for o in outs[1:]:
        assert_same_bits(outs[0], o)
    assert bandpo._capi.kl_table_builds() == builds


def test_python_face_and_numpy_face_agree_with_the_op():
    logp, old, adv, mask, ref = make_batch(seed=4, dtype=torch.float32)
    lower, upper = own_bounds(old, seed=9)
    op = loss_and_grad(logp, old, adv, mask, ref, lower, upper, kl_coef=0.1, dual_clip=3.0)
    x = logp.clone().requires_grad_()
    out = bandpo.band_loss(x, old, adv, mask, ref_logp=ref, lower=lower, upper=upper, kl_coef=0.1, dual_clip=3.0)
    out.loss.backward()
    assert torch.equal(out.loss.detach(), op[0]) and torch.equal(x.grad, op[2])
    n = bnp.band_loss(
        logp.numpy(),
        old.numpy(),
        adv.numpy(),
        mask.numpy(),
        ref_logp=ref.numpy(),
        lower=lower.numpy(),
        upper=upper.numpy(),
        kl_coef=0.1,
        dual_clip=3.0,
    )
    assert np.float32(n.loss) == op[0].item()
    assert np.array_equal(n.grad, op[2].numpy())


def test_mixed_precision_bounds_in_float32_beside_bfloat16_logp():
    logp, old, adv, mask, _ = make_batch(seed=6, dtype=torch.float32)
    lower, upper = torch.ops.bandpo.band_bounds(old)
    half = loss_and_grad(logp.bfloat16(), old, adv, mask, None, lower, upper)
    own = loss_and_grad(logp.bfloat16(), old, adv, mask)
    assert_same_bits(own, half)
    assert half[0].dtype == torch.bfloat16 and half[2].dtype == torch.bfloat16


def test_half_bounds_past_the_types_range_are_taken_back():
    # ratio_max = 1e6 is past float16's range: band_bounds stores such an upper bound as inf, which the loss must
    # take back (its cap, as the bounds' dtype holds it, is inf too). Found by the fuzzer (tests/fuzz).
    logp, old, adv, mask, _ = make_batch(seed=3, dtype=torch.float16)
    old[0, :4] = logp[0, :4] = -30.0  # p ~ 1e-13: bounds far above 65504
    lower, upper = torch.ops.bandpo.band_bounds(old, divergence="tv", ratio_max=1e6)
    assert torch.isinf(upper).any()
    loss, _ = torch.ops.bandpo.band_loss(logp, old, adv, mask, None, lower, upper, ratio_max=1e6)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "where, value, message",
    [
        ("lower", 1.5, r"lower\[7\] = 1.5 must be in \[0, 1\]"),
        ("lower", -0.1, r"lower\[7\] = -0.1 must be in \[0, 1\]"),
        ("lower", math.nan, r"lower\[7\] = nan must be in \[0, 1\]"),
        ("upper", 0.5, r"upper\[7\] = 0.5 must be in \[1, ratio_max = 10\]"),
        ("upper", 11.0, r"upper\[7\] = 11 must be in \[1, ratio_max = 10\]"),
        ("upper", math.inf, r"upper\[7\] = inf must be in \[1, ratio_max = 10\]"),
    ],
)
def test_bad_bounds_at_a_valid_position_are_refused_by_index(where, value, message):
    logp, old, adv, mask, _ = make_batch(B=2, T=20, seed=1)
    mask[:] = True
    lower, upper = own_bounds(old, seed=2)
    (lower if where == "lower" else upper).view(-1)[7] = value
    with pytest.raises(ValueError, match=message):
        torch.ops.bandpo.band_loss(logp, old, adv, mask, None, lower, upper, ratio_max=10.0)
    with pytest.raises(ValueError, match=message):
        bnp.band_loss(
            logp.numpy(),
            old.numpy(),
            adv.numpy(),
            mask.numpy(),
            lower=lower.numpy(),
            upper=upper.numpy(),
            ratio_max=10.0,
        )
    mask.view(-1)[7] = False  # a masked position may hold anything
    torch.ops.bandpo.band_loss(logp, old, adv, mask, None, lower, upper, ratio_max=10.0)


def test_argument_errors_name_the_argument():
    logp, old, adv, mask, _ = make_batch(B=2, T=20, seed=1)
    lower, upper = own_bounds(old, seed=2)
    with pytest.raises(ValueError, match="lower and upper come together .* got only lower"):
        torch.ops.bandpo.band_loss(logp, old, adv, mask, None, lower)
    with pytest.raises(ValueError, match="got only upper"):
        bandpo.band_loss(logp, old, adv, mask, upper=upper)
    with pytest.raises(ValueError, match=r"upper must have the shape of logp \[2, 20\]; got \[2, 19\]"):
        torch.ops.bandpo.band_loss(logp, old, adv, mask, None, lower, upper[:, :19])
    with pytest.raises(TypeError, match="lower has dtype float32 but logp has float64"):
        torch.ops.bandpo.band_loss(logp, old, adv, mask, None, lower.float(), upper)
    with pytest.raises(TypeError, match="upper must be a torch.Tensor"):
        bandpo.band_loss(logp, old, adv, mask, lower=lower, upper=upper.numpy())


def test_torch_compile_fullgraph_and_opcheck():
    torch._dynamo.reset()
    logp, old, adv, mask, ref = make_batch(B=3, T=33, seed=8)
    lower, upper = own_bounds(old, seed=4)

    def step(x):
        return torch.ops.bandpo.band_loss(x, old, adv, mask, ref, lower, upper, kl_coef=0.1)[0]

    compiled = torch.compile(step, fullgraph=True)
    x = logp.clone().requires_grad_()
    (g_compiled,) = torch.autograd.grad(compiled(x), x)
    (g_eager,) = torch.autograd.grad(step(x), x)
    assert torch.equal(g_compiled, g_eager)
    torch.library.opcheck(
        torch.ops.bandpo.band_loss.default, (logp.clone().requires_grad_(), old, adv, mask, ref, lower, upper), {}
    )
    torch.library.opcheck(
        torch.ops.bandpo.band_loss_backward.default,
        (torch.tensor(1.0, dtype=torch.float64), logp, old, adv, mask, ref, lower, upper),
        {},
    )


@pytest.mark.skipif(
    not (torch.cuda.is_available() and bandpo.has_cuda_kernels()), reason="needs a CUDA device and kernels"
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cuda_matches_cpu_with_bounds_of_any_making(dtype):
    logp, old, adv, mask, ref = make_batch(seed=11, dtype=dtype)
    lower, upper = own_bounds(old, seed=5)
    kw = dict(dual_clip=3.0, kl_coef=0.1, agg="seq-mean-token-sum")
    cpu = loss_and_grad(logp, old, adv, mask, ref, lower, upper, **kw)
    gpu = loss_and_grad(*(t.cuda() for t in (logp, old, adv, mask, ref, lower, upper)), **kw)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(gpu[0].cpu().double(), cpu[0].double(), **tol)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gpu[2].cpu().double(), cpu[2].double(), **tol)
