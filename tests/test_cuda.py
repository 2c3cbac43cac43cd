"""The CUDA kernels against the CPU kernels and bandpo.reference, plus what only a GPU can show: opcheck and
torch.compile on CUDA, CUDA-graph capture/replay, run-to-run determinism, 64-bit indexing, streams.

Skipped, with the reason shown (pytest -rs), without a GPU or in a build without the CUDA kernels.
"""

import math

import numpy as np
import pytest
import torch

import bandpo
from bandpo import reference
from conftest import DTYPES, loss_options, make_batch

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
    pytest.mark.skipif(not bandpo.has_cuda_kernels(), reason="bandpo was built without CUDA kernels (BANDPO_CUDA)"),
]

DIVS = list(bandpo.DIVERGENCES)
AGGS = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
# Loss/grad tolerance of CUDA vs CPU for the same dtype: both compute the same formulas in the same precision;
# they differ by FMA contraction and summation order, and by one rounding of the stored bf16/fp16 result.
TOL = {
    torch.float64: (1e-11, 1e-13),
    torch.float32: (2e-5, 1e-7),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float16: (2e-3, 1e-6),
}


def loss_and_grad(fn, logp, *args, **kw):
    x = logp.detach().clone().requires_grad_()
    loss, metrics = fn(x, *args, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), metrics, grad


def to(device, *ts):
    return [t.to(device) if isinstance(t, torch.Tensor) else t for t in ts]


def assert_close_to_cpu(dtype, cuda_out, cpu_out, metric_tol=1e-5):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(cuda_out[0].cpu().double(), cpu_out[0].double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(cuda_out[1].cpu(), cpu_out[1], rtol=metric_tol, atol=1e-6)
    torch.testing.assert_close(cuda_out[2].cpu().double(), cpu_out[2].double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("relax", [False, True])
def test_bounds_match_cpu(dtype, divergence, relax):
    g = torch.Generator().manual_seed(1)
    low = -700.0 if dtype == torch.float64 else -80.0
    old = torch.cat(
        [
            torch.rand(100_003, generator=g, dtype=torch.float64) * low,
            torch.tensor([0.0, -1e-12, -1e-6, -0.5, -1.0, -30.0, low]),
        ]
    ).to(dtype)
    kw = dict(divergence=divergence, delta=0.07, relax_high_p=relax, ratio_max=math.inf if relax else 10.0)
    lo_cpu, hi_cpu = torch.ops.bandpo.band_bounds(old, **kw)
    lo, hi = torch.ops.bandpo.band_bounds(old.cuda(), **kw)
    assert lo.device.type == "cuda" and lo.dtype == dtype
    rtol = {torch.float64: 1e-13, torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 2e-3}[dtype]
    # Bounds are ratios of order 1: a lower bound near 0 (1 - delta/p for p near delta) is compared absolutely.
    torch.testing.assert_close(lo.cpu(), lo_cpu, rtol=rtol, atol=rtol)
    torch.testing.assert_close(hi.cpu(), hi_cpu, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype,tol,min_logp", [(torch.float64, 1e-11, -700.0), (torch.float32, 4e-6, -80.0)])
def test_bounds_match_the_mpmath_table(dtype, tol, min_logp):
    from test_exactness import load_table, relative_errors

    t = load_table()
    worst = 0.0
    for delta in np.unique(t["delta"]):
        sel = (t["delta"] == delta) & (t["old_logp"] >= min_logp)
        lp = torch.tensor(t["old_logp"][sel], dtype=dtype, device="cuda")
        lower, upper = torch.ops.bandpo.band_bounds(lp, divergence="kl", delta=float(delta), ratio_max=math.inf)
        el, eu = relative_errors(
            lower.double().cpu().numpy(), upper.double().cpu().numpy(), t["lower"][sel], t["upper"][sel]
        )
        worst = max(worst, el.max(), eu.max())
    assert worst <= tol, f"worst relative error {worst:.3g} > {tol:g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("agg", AGGS)
def test_loss_matches_cpu(dtype, divergence, agg):
    # 333 columns: rows do not start on 16-byte boundaries (the unaligned path); 512: the vector path.
    for B, T in ((5, 333), (4, 512)):
        logp, old, adv, mask, ref = make_batch(B=B, T=T, seed=B * T, dtype=dtype, spread=0.4)
        kw = dict(divergence=divergence, agg=agg, dual_clip=3.0, ref_logp=ref, kl_coef=0.05)
        cpu = loss_and_grad(torch.ops.bandpo.band_loss, logp, old, adv, mask, **kw)
        kw["ref_logp"] = ref.cuda()
        gpu = loss_and_grad(torch.ops.bandpo.band_loss, *to("cuda", logp, old, adv, mask), **kw)
        assert_close_to_cpu(dtype, gpu, cpu)


OPTION_CASES = [
    dict(),
    dict(relax_high_p=True, ratio_max=math.inf),
    dict(delta=0.5, ratio_max=1.5),
    dict(normalizer=37.0),
    dict(kl_estimator="k1", kl_coef=0.1),
    dict(kl_estimator="k2", kl_coef=0.1),
    dict(per_row_advantages=True),
    dict(float_mask=True),
    dict(no_mask=True),
    dict(one_dimensional=True),
]


@pytest.mark.parametrize("case", range(len(OPTION_CASES)))
@pytest.mark.parametrize("agg", AGGS)
def test_loss_options_match_reference(case, agg):
    opts = dict(OPTION_CASES[case])
    logp, old, adv, mask, ref = make_batch(B=6, T=1000, seed=case, spread=1.0)
    if opts.pop("per_row_advantages", False):
        adv = adv[:, 0].clone()
    if opts.pop("float_mask", False):
        mask = mask.double() * torch.rand(mask.shape, dtype=torch.float64)
    if opts.pop("no_mask", False):
        mask = None
    if opts.pop("one_dimensional", False):
        if agg != "token-mean":
            pytest.skip("seq-* aggregations need 2-D inputs")
        logp, old, adv, mask, ref = (t.flatten() for t in (logp, old, adv, mask, ref))
    kw = dict(divergence="kl", agg=agg, ref_logp=ref, **opts)
    want = loss_and_grad(reference.band_loss, logp, old, adv, mask, **kw)
    kw["ref_logp"] = ref.cuda()
    got = loss_and_grad(torch.ops.bandpo.band_loss, *to("cuda", logp, old, adv, mask), **kw)
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1].cpu(), want[1].float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2].cpu(), want[2], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("agg", AGGS)
def test_huge_float64_weights_match_cpu(agg):
    """float64 mask weights up to 1e300 (scaled by a power of two before the sums, as on the CPU): finite
    metrics, the CPU's means, and weights times 2^990 give the same metrics as the weights themselves."""
    logp, old, adv, mask, _ = make_batch(B=8, T=300, seed=4, dtype=torch.float64)
    w = mask.double() * torch.rand(mask.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for weights in (w, w * 2.0**990, w * 1e300):
        cpu = torch.ops.bandpo.band_loss(logp, old, adv, weights, agg=agg)
        gpu = torch.ops.bandpo.band_loss(*to("cuda", logp, old, adv, weights), agg=agg)
        assert torch.isfinite(gpu[1]).all()
        torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-6, atol=0)
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-11, atol=0)
    plain = torch.ops.bandpo.band_loss(*to("cuda", logp, old, adv, w), agg=agg)
    scaled = torch.ops.bandpo.band_loss(*to("cuda", logp, old, adv, w * 2.0**990), agg=agg)
    assert torch.equal(plain[1][:-1], scaled[1][:-1])  # every metric but pg_loss: means over the weights


def test_non_contiguous_inputs():
    logp, old, adv, mask, ref = to("cuda", *make_batch(B=64, T=48, seed=7, dtype=torch.float32))
    t = lambda x: x.t()  # noqa: E731
    got = loss_and_grad(torch.ops.bandpo.band_loss, t(logp), t(old), t(adv), t(mask), ref_logp=t(ref), kl_coef=0.1)
    want = loss_and_grad(
        torch.ops.bandpo.band_loss,
        *(t(x).contiguous() for x in (logp, old, adv, mask)),
        ref_logp=t(ref).contiguous(),
        kl_coef=0.1,
    )
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    lo, hi = torch.ops.bandpo.band_bounds(old[:, ::3])
    lo2, hi2 = torch.ops.bandpo.band_bounds(old[:, ::3].contiguous())
    assert torch.equal(lo, lo2) and torch.equal(hi, hi2)


def test_empty_and_all_masked():
    e = torch.empty(0, 5, device="cuda")
    loss, metrics = torch.ops.bandpo.band_loss(e, e, e)
    assert loss.item() == 0.0 and torch.all(metrics == 0)
    logp, old, adv, mask, _ = to("cuda", *make_batch(B=3, T=40, dtype=torch.float32))
    x = logp.clone().requires_grad_()
    loss, metrics = torch.ops.bandpo.band_loss(x, old, adv, torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


def test_bad_values_give_nan_or_raise_with_checks():
    logp, old, adv, mask, _ = to("cuda", *make_batch(B=3, T=40, dtype=torch.float32))
    mask[1, 7] = True
    old[1, 7] = float("nan")
    loss, metrics = torch.ops.bandpo.band_loss(logp, old, adv, mask)
    assert torch.isnan(loss).item() and torch.isnan(metrics).all().item()
    old_masked = old.clone()
    mask[1, 7] = False
    loss, _ = torch.ops.bandpo.band_loss(logp, old_masked, adv, mask)
    assert torch.isfinite(loss).item()
    mask[1, 7] = True
    bandpo.set_input_checks(True)
    try:
        with pytest.raises(ValueError, match=r"old_logp\[47\] is NaN"):
            torch.ops.bandpo.band_loss(logp, old, adv, mask)
    finally:
        bandpo.set_input_checks(False)


@pytest.mark.parametrize("name", ["logp", "ref"])
def test_log_probabilities_above_zero_give_nan_or_raise_with_checks(name):
    # the rule of every face (token_loss.h bad_token): a probability above 1 at a valid position is refused
    logp, old, adv, mask, ref = to("cuda", *make_batch(B=3, T=40, dtype=torch.float32))
    mask[1, 7] = True
    dict(logp=logp, ref=ref)[name][1, 7] = 0.5
    loss, metrics = torch.ops.bandpo.band_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1)
    assert torch.isnan(loss).item() and torch.isnan(metrics).all().item()
    bandpo.set_input_checks(True)
    try:
        arg = dict(logp="logp", ref="ref_logp")[name]
        with pytest.raises(ValueError, match=rf"{arg}\[47\] = 0.5 > 0 is not a log-probability"):
            torch.ops.bandpo.band_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1)
    finally:
        bandpo.set_input_checks(False)


def test_argument_errors_on_cuda():
    logp, old, adv, mask, _ = make_batch(B=2, T=8, dtype=torch.float32)
    with pytest.raises(ValueError, match="old_logp is on cpu but logp is on cuda"):
        torch.ops.bandpo.band_loss(logp.cuda(), old, adv.cuda(), mask.cuda())
    with pytest.raises(ValueError, match="delta"):
        torch.ops.bandpo.band_bounds(old.cuda(), delta=-1.0)


def opcheck_samples():
    logp, old, adv, mask, ref = to("cuda", *make_batch(B=3, T=50, seed=2))
    return [
        ((logp.requires_grad_(), old, adv, mask), dict(divergence="kl", agg="seq-mean-token-mean")),
        ((logp, old, adv[:, 0].contiguous(), None), dict(divergence="chi2", dual_clip=3.0, ref_logp=ref, kl_coef=0.1)),
    ]


@pytest.mark.parametrize("i", [0, 1])
def test_opcheck_band_loss(i):
    args, kwargs = opcheck_samples()[i]
    torch.library.opcheck(torch.ops.bandpo.band_loss.default, args, kwargs)


def test_opcheck_band_bounds_and_backward():
    logp, old, adv, mask, ref = to("cuda", *make_batch(B=3, T=50, seed=4))
    torch.library.opcheck(torch.ops.bandpo.band_bounds.default, (old,), dict(divergence="tv", delta=0.1))
    g = torch.tensor(1.5, dtype=torch.float64, device="cuda")
    torch.library.opcheck(
        torch.ops.bandpo.band_loss_backward.default,
        (g, logp, old, adv, mask, ref),
        loss_options(kl_coef=0.1),
    )


def test_compile_matches_eager_on_cuda():
    logp, old, adv, mask, ref = to("cuda", *make_batch(B=8, T=300, seed=9, dtype=torch.float32))

    def step(x, old, adv, mask, ref):
        loss, metrics = torch.ops.bandpo.band_loss(
            x * 1.0, old, adv, mask, agg="seq-mean-token-mean", ref_logp=ref, kl_coef=0.1
        )
        return loss * 2.0, metrics

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    outs = []
    for fn in (step, compiled):
        x = logp.clone().requires_grad_()
        loss, metrics = fn(x, old, adv, mask, ref)
        loss.backward()
        outs.append((loss.detach(), metrics, x.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_cuda_graph_capture_and_replay():
    shapes = dict(B=16, T=1024, dtype=torch.float32)
    logp, old, adv, mask, ref = to("cuda", *make_batch(seed=11, **shapes))
    static = [t.clone() for t in (logp, old, adv, mask)]
    x = static[0].requires_grad_()

    def step():  # "kl" in float32: each op builds its bounds table on the device first, inside the graph too
        loss, metrics = torch.ops.bandpo.band_loss(x, *static[1:], agg="seq-mean-token-mean", dual_clip=3.0)
        (grad,) = torch.autograd.grad(loss, x)
        return (loss, metrics, grad) + tuple(torch.ops.bandpo.band_bounds(static[1], divergence="kl"))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for seed in (12, 13):
        fresh = to("cuda", *make_batch(seed=seed, **shapes))
        with torch.no_grad():
            for s, f in zip(static, fresh[:4]):
                s.copy_(f)
        graph.replay()
        want = loss_and_grad(torch.ops.bandpo.band_loss, *fresh[:4], agg="seq-mean-token-mean", dual_clip=3.0)
        want = tuple(want) + tuple(torch.ops.bandpo.band_bounds(fresh[1], divergence="kl"))
        assert len(out) == len(want) == 5
        for a, b in zip(out, want):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_runs_are_bitwise_equal(dtype):
    logp, old, adv, mask, ref = to("cuda", *make_batch(B=256, T=4096, seed=5, dtype=dtype))
    runs = [
        loss_and_grad(torch.ops.bandpo.band_loss, logp, old, adv, mask, agg=agg, ref_logp=ref, kl_coef=0.1)
        for agg in ("token-mean", "seq-mean-token-mean")
        for _ in range(2)
    ]
    for a, b in ((runs[0], runs[1]), (runs[2], runs[3])):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    lo1, hi1 = torch.ops.bandpo.band_bounds(old)
    lo2, hi2 = torch.ops.bandpo.band_bounds(old)
    assert torch.equal(lo1, lo2) and torch.equal(hi1, hi2)


def test_runs_on_the_current_stream():
    logp, old, adv, mask, _ = to("cuda", *make_batch(B=64, T=2048, seed=3, dtype=torch.float32))
    want = loss_and_grad(torch.ops.bandpo.band_loss, logp, old, adv, mask)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = loss_and_grad(torch.ops.bandpo.band_loss, logp, old, adv, mask)
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    logp, old, adv, mask, _ = to("cuda:1", *make_batch(B=4, T=100, seed=3))
    got = loss_and_grad(torch.ops.bandpo.band_loss, logp, old, adv, mask)
    assert got[0].device == torch.device("cuda:1") and got[2].device == torch.device("cuda:1")
    want = loss_and_grad(torch.ops.bandpo.band_loss, *to("cuda:0", logp, old, adv, mask))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0)


def test_more_than_2_pow_31_tokens():
    n = 2**31 + 4099
    need = 5 * 2 * n + (1 << 30)  # three bf16 inputs, the gradient, bounds outputs reuse; plus slack
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory; {free / 2**30:.1f} GiB free")
    old = torch.full((n,), -2.0, dtype=torch.bfloat16, device="cuda")
    old[-5:] = -0.5
    lo, hi = torch.ops.bandpo.band_bounds(old, divergence="tv", delta=0.1)
    want_lo, want_hi = torch.ops.bandpo.band_bounds(old[-8:].cpu(), divergence="tv", delta=0.1)
    assert torch.equal(lo[-8:].cpu(), want_lo) and torch.equal(hi[-8:].cpu(), want_hi)
    del lo, hi
    logp = old.clone().requires_grad_()
    adv = torch.ones_like(old)
    adv[-5:] = 3.0
    loss, metrics = torch.ops.bandpo.band_loss(logp, old, adv)
    (grad,) = torch.autograd.grad(loss, logp)
    # ratio 1 everywhere: loss = -mean(A), grad = -A / n, and the last tokens (index > 2^31) count.
    assert metrics[5].item() == pytest.approx(1.0)
    expected = -(n - 5 + 15) / n
    assert loss.float().item() == pytest.approx(expected, rel=1e-2)
    assert grad[-5:].float().cpu().tolist() == pytest.approx([-3.0 / n] * 5, rel=1e-2)
    assert grad[:3].float().cpu().tolist() == pytest.approx([-1.0 / n] * 3, rel=1e-2)
