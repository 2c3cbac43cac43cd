"""torch.ops.bandpo.band_loss against bandpo.reference: values, gradients, metrics, edge cases."""

import math
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bandpo
from bandpo import reference
from conftest import make_batch

AGGS = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
DIVS = list(bandpo.DIVERGENCES)


def both(logp, old, adv, mask, **kw):
    """(loss, metrics, grad) from the op and from the reference."""
    out = []
    for fn in (torch.ops.bandpo.band_loss, reference.band_loss):
        x = logp.detach().clone().requires_grad_()
        loss, metrics = fn(x, old, adv, mask, **kw)
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        out.append((loss.detach(), metrics, torch.zeros_like(x) if grad is None else grad))
    return out


def assert_match(op, ref, rtol, atol):
    torch.testing.assert_close(op[0].double(), ref[0].double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(op[1], ref[1], rtol=max(rtol, 1e-5), atol=max(atol, 1e-6))
    torch.testing.assert_close(op[2].double(), ref[2].double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("agg", AGGS)
def test_matches_reference_float64(divergence, agg):
    logp, old, adv, mask, ref = make_batch(seed=3)
    kw = dict(divergence=divergence, agg=agg, dual_clip=3.0, ref_logp=ref, kl_coef=0.05, kl_estimator="k3")
    op, rf = both(logp, old, adv, mask, **kw)
    assert_match(op, rf, rtol=1e-10, atol=1e-12)


@given(
    seed=st.integers(0, 10_000),
    divergence=st.sampled_from(DIVS),
    agg=st.sampled_from(AGGS),
    delta=st.floats(-4.0, 1.0).map(lambda e: 10.0**e),
    relax=st.booleans(),
    ratio_max=st.sampled_from([1.5, 10.0, math.inf]),
    dual_clip=st.sampled_from([None, 1.5, 3.0]),
    estimator=st.sampled_from(["k1", "k2", "k3"]),
    kl_coef=st.sampled_from([0.0, 0.1]),
    per_seq_adv=st.booleans(),
    float_mask=st.booleans(),
    normalizer=st.sampled_from([None, 37.0]),
    spread=st.sampled_from([0.05, 0.5, 3.0]),
    shape=st.tuples(st.integers(1, 5), st.integers(1, 300)),
)
def test_hypothesis_matches_reference_random(
    seed,
    divergence,
    agg,
    delta,
    relax,
    ratio_max,
    dual_clip,
    estimator,
    kl_coef,
    per_seq_adv,
    float_mask,
    normalizer,
    spread,
    shape,
):
    logp, old, adv, mask, ref = make_batch(B=shape[0], T=shape[1], seed=seed, spread=spread)
    if per_seq_adv:
        adv = adv[:, 0].clone()
    if float_mask:
        mask = mask.double() * torch.rand(
            mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
        )
    kw = dict(
        divergence=divergence,
        agg=agg,
        delta=delta,
        relax_high_p=relax,
        ratio_max=ratio_max,
        dual_clip=dual_clip,
        ref_logp=ref,
        kl_coef=kl_coef,
        kl_estimator=estimator,
        normalizer=normalizer,
    )
    op, rf = both(logp, old, adv, mask, **kw)
    assert_match(op, rf, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("divergence", DIVS)
def test_low_precision_dtypes(dtype, tol, divergence):
    logp, old, adv, mask, ref = make_batch(seed=5, dtype=dtype, spread=0.3)
    kw = dict(divergence=divergence, agg="seq-mean-token-mean", ref_logp=ref, kl_coef=0.1)
    op, rf = both(logp, old, adv, mask, **kw)
    assert op[0].dtype == dtype and op[2].dtype == dtype and op[1].dtype == torch.float32
    # The reference computes in float64 from the same rounded inputs.
    torch.testing.assert_close(op[0].double(), rf[0].double(), rtol=tol, atol=tol)
    torch.testing.assert_close(op[2].double(), rf[2].double(), rtol=tol, atol=tol * 1e-2)


def test_gradcheck_float64():
    logp, old, adv, mask, ref = make_batch(B=3, T=20, seed=11, spread=0.3)
    for kw in [
        dict(),
        dict(divergence="tv", agg="seq-mean-token-mean", dual_clip=2.0),
        dict(ref_logp=ref, kl_coef=0.3, kl_estimator="k3", agg="seq-mean-token-sum"),
    ]:
        fn = lambda x: torch.ops.bandpo.band_loss(x, old, adv, mask, **kw)[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, (logp.clone().requires_grad_(),), eps=1e-7, atol=1e-7)


def test_masked_positions_may_hold_nan_and_inf():
    logp, old, adv, mask, ref = make_batch(seed=2)
    clean = both(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1)[0]
    bad = ~mask
    logp2, old2, adv2, ref2 = logp.clone(), old.clone(), adv.clone(), ref.clone()
    logp2[bad], old2[bad], adv2[bad], ref2[bad] = float("nan"), float("inf"), float("-inf"), float("nan")
    dirty = both(logp2, old2, adv2, mask, ref_logp=ref2, kl_coef=0.1)[0]
    torch.testing.assert_close(dirty[0], clean[0], rtol=0, atol=0)
    torch.testing.assert_close(dirty[2], clean[2], rtol=0, atol=0)
    assert torch.isfinite(dirty[1]).all()


@pytest.mark.parametrize("agg", AGGS)
def test_all_masked_gives_zero_loss_and_gradient(agg):
    logp, old, adv, mask, _ = make_batch(B=3, T=8)
    op, _ = both(logp, old, adv, torch.zeros_like(mask), agg=agg)
    assert op[0].item() == 0.0 and not op[2].any() and not op[1].any()


def test_empty_tensors():
    e = torch.empty(0, 5, dtype=torch.float64)
    loss, metrics = torch.ops.bandpo.band_loss(e.requires_grad_(), e, e)
    loss.backward()
    assert loss.item() == 0.0 and metrics.shape == (8,)
    lo, up = bandpo.band_bounds(torch.empty(0))
    assert lo.shape == (0,)


def test_normalizer_gives_data_parallel_gradient():
    logp, old, adv, mask, _ = make_batch(B=8, T=50, seed=4)
    total = float(mask.sum())
    full = both(logp, old, adv, mask)[0]
    parts = [both(logp[s], old[s], adv[s], mask[s], normalizer=total)[0] for s in (slice(0, 3), slice(3, 8))]
    torch.testing.assert_close(parts[0][0] + parts[1][0], full[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([parts[0][2], parts[1][2]]), full[2], rtol=1e-12, atol=1e-14)


def test_per_sequence_advantages_broadcast():
    logp, old, adv, mask, _ = make_batch(B=4, T=30)
    a = adv[:, :1]
    out_b1 = both(logp, old, a, mask)[0]
    out_b = both(logp, old, a[:, 0], mask)[0]
    out_bt = both(logp, old, a.expand_as(logp).contiguous(), mask)[0]
    for o in (out_b1, out_b):
        torch.testing.assert_close(o[0], out_bt[0], rtol=0, atol=0)
        torch.testing.assert_close(o[2], out_bt[2], rtol=0, atol=0)


def test_non_contiguous_inputs():
    logp, old, adv, mask, ref = make_batch(B=6, T=40)
    t = lambda x: x.t().contiguous().t()  # noqa: E731  (same values, column-major)
    a = both(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1)[0]
    b = both(t(logp), t(old), t(adv), t(mask), ref_logp=t(ref), kl_coef=0.1)[0]
    c = both(logp[:, ::2], old[:, ::2], adv[:, ::2], mask[:, ::2])[0]
    d = both(logp[:, ::2].contiguous(), old[:, ::2].contiguous(), adv[:, ::2].contiguous(), mask[:, ::2].contiguous())[
        0
    ]
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)
    torch.testing.assert_close(c[0], d[0], rtol=0, atol=0)


def test_one_d_and_nd_token_mean():
    logp, old, adv, mask, _ = make_batch(B=4, T=30)
    flat = both(logp.reshape(-1), old.reshape(-1), adv.reshape(-1), mask.reshape(-1))[0]
    nd = both(logp.reshape(2, 2, 30), old.reshape(2, 2, 30), adv.reshape(2, 2, 30), mask.reshape(2, 2, 30))[0]
    two = both(logp, old, adv, mask)[0]
    torch.testing.assert_close(flat[0], two[0], rtol=1e-14, atol=0)
    torch.testing.assert_close(nd[0], two[0], rtol=1e-14, atol=0)


def test_band_raises_rare_positive_token_more_than_clip():
    """The mechanism: for a tail token with A > 0 the band lets the ratio grow past 1 + eps."""
    old = torch.log(torch.tensor([0.02, 0.5], dtype=torch.float64))
    logp = old + math.log(2.0)  # both tokens doubled (second is outside the simplex, clipped by anyone)
    adv = torch.ones(2, dtype=torch.float64)
    clip = both(logp[:1], old[:1], adv[:1], None, divergence="clip", eps_high=0.28)[0]
    band = both(logp[:1], old[:1], adv[:1], None, divergence="kl", delta=0.05)[0]
    assert clip[2].item() == 0.0  # clipped: no push
    assert band[2].item() < 0.0  # still inside the KL band (upper ~ 4.0 at p = 0.02): gradient raises logp


def test_python_face_names_metrics():
    logp, old, adv, mask, _ = make_batch()
    out = bandpo.band_loss(logp, old, adv, mask, bandpo.BandConfig(divergence="tv", delta=0.1))
    assert set(out.metrics) == set(bandpo.METRIC_NAMES)
    assert out.metrics["pg_clipfrac"] == out.metrics_tensor[0]
    direct = torch.ops.bandpo.band_loss(logp, old, adv, mask, divergence="tv", delta=0.1)
    torch.testing.assert_close(out.loss, direct[0])
    lo, up = bandpo.band_bounds(old, delta=0.1)
    torch.testing.assert_close(lo, torch.ops.bandpo.band_bounds(old, delta=0.1)[0])


@pytest.mark.parametrize("agg", AGGS)
def test_rows_longer_than_a_work_item(agg):
    """Rows of more than 4096 tokens are split across work items and reassembled per row."""
    logp, old, adv, mask, ref = make_batch(B=3, T=9000, seed=8)
    mask[1] = False  # one empty row
    op, rf = both(logp, old, adv[:, 0], mask, agg=agg, ref_logp=ref, kl_coef=0.1)
    assert_match(op, rf, rtol=1e-9, atol=1e-12)


def test_float_mask_of_another_dtype_is_accepted():
    logp, old, adv, mask, _ = make_batch(dtype=torch.bfloat16)
    a = torch.ops.bandpo.band_loss(logp, old, adv, mask.float())
    b = torch.ops.bandpo.band_loss(logp, old, adv, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("divergence", ["kl", "tv", "clip"])  # chi2's band is [1, 1] at p = 1: any r < 1 is out
def test_certain_old_token_is_not_clipped_by_a_tiny_ratio_change(dtype, divergence):
    # found by the fuzzer (tests/fuzz): with old_logp = 0, q = -expm1(0) was -0 and the KL test divided by it,
    # so float64 read r = 1 - 9e-12 as infinitely far and clipped the token at the lower bound
    # (no token sits exactly on a bound: how autograd splits a tie of max/clamp there differs by torch release)
    logp = torch.tensor([-9.09494702e-12, -1e-6, -1e-3], dtype=dtype)
    old = torch.tensor([0.0, -0.0, 0.0], dtype=dtype)
    adv = torch.tensor([-2.5, 1.0, -1.0], dtype=dtype)
    op, rf = both(logp, old, adv, None, divergence=divergence)
    assert op[1][0].item() == 0.0  # pg_clipfrac
    assert_match(op, rf, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_without_kl_coef_an_infinite_kl_estimate_leaves_the_loss_finite(dtype, estimator):
    # found by the fuzzer (tests/fuzz): k2 of a log-ratio of 1e30 overflows float32 to inf, and kl_coef = 0
    # times that inf made the loss NaN; ref_logp = -inf gives an infinite k1/k2 in any dtype
    logp = torch.tensor([[0.0, -15.77]], dtype=dtype)
    old = torch.tensor([[-13.7, -1.88]], dtype=dtype)
    adv = torch.tensor([[2.95, -1.16]], dtype=dtype)
    for ref in ([[-17.6, -1e30]], [[-17.6, -math.inf]]):
        ref = torch.tensor(ref, dtype=dtype)
        x = logp.clone().requires_grad_()
        loss, metrics = torch.ops.bandpo.band_loss(x, old, adv, ref_logp=ref, kl_coef=0.0, kl_estimator=estimator)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        want = torch.ops.bandpo.band_loss(logp, old, adv)[0]  # the same loss without ref_logp
        assert loss.item() == want.item()


@pytest.mark.parametrize("public", ["0", "1"])
def test_both_autograd_paths_give_the_same_gradient(public, tmp_path):
    """The fast autograd kernel (private torch names, feature-tested at import) and the public
    torch.library.register_autograd fallback (BANDPO_PUBLIC_AUTOGRAD=1, or wherever the feature test fails):
    the same loss and gradient bits, opcheck and torch.compile(fullgraph) on both."""
    import subprocess
    import sys

    code = """
import torch, bandpo, bandpo._ops as ops
from torch.library import opcheck
import sys
sys.path.insert(0, %r)
from conftest import make_batch
logp, old, adv, mask, ref = make_batch(B=3, T=17, seed=3, dtype=torch.float64)
x = logp.clone().requires_grad_()
loss, _ = torch.ops.bandpo.band_loss(x, old, adv, mask, ref_logp=ref, kl_coef=0.1, agg="seq-mean-token-mean")
(g,) = torch.autograd.grad(loss * 3, x)
want = torch.ops.bandpo.band_loss_backward(torch.tensor(3.0, dtype=torch.float64), logp, old, adv, mask, ref,
                                           kl_coef=0.1, agg="seq-mean-token-mean")
assert torch.equal(g, want)
opcheck(torch.ops.bandpo.band_loss.default, (x, old, adv, mask, ref), {"kl_coef": 0.1})
f = torch.compile(lambda a: torch.ops.bandpo.band_loss(a, old, adv, mask, ref_logp=ref, kl_coef=0.1)[0], fullgraph=True)
(g2,) = torch.autograd.grad(f(x), x)
assert torch.equal(g2, torch.ops.bandpo.band_loss_backward(torch.tensor(1.0, dtype=torch.float64), logp, old, adv,
                                                           mask, ref, kl_coef=0.1))
print("public" if ops.PUBLIC_AUTOGRAD else "fast")
""" % os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "BANDPO_PUBLIC_AUTOGRAD": public, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == ("public" if public == "1" else "fast")
