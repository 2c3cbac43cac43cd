"""bandpo.f_divergence_bounds: the Band bounds of any f-divergence, held to the 50-digit tables (tests/data: KL, and
squared Hellinger, reverse KL and Jensen-Shannon), to the core's closed forms and KL solve, and to its own
definition (D(bound) = delta, checked in mpmath) over the alpha-family."""

import csv
import math
import os

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bandpo
from bandpo.f_divergence import NAMED, f_divergence, f_divergence_bounds

DATA = os.path.join(os.path.dirname(__file__), "data")
RAW = dict(ratio_max=math.inf)  # the divergence's own bounds, no cap


def table(name):
    if name == "kl":
        with open(os.path.join(DATA, "kl_bounds_mpmath.csv")) as fh:
            rows = list(csv.DictReader(fh))
    else:
        with open(os.path.join(DATA, "f_bounds_mpmath.csv")) as fh:
            rows = [r for r in csv.DictReader(fh) if r["divergence"] == name]
    assert len(rows) > 1000
    cols = {k: np.array([float(r[k]) for r in rows]) for k in ("old_logp", "delta", "lower", "upper")}
    return cols


@pytest.mark.parametrize("name", ["kl", "hellinger", "reverse_kl", "js"])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_matches_the_mpmath_tables(name, dtype, rtol):
    t = table(name)
    worst = 0.0
    for delta in np.unique(t["delta"]):
        sel = t["delta"] == delta
        lp = torch.tensor(t["old_logp"][sel], dtype=dtype)
        lower, upper = f_divergence_bounds(lp, name, delta=float(delta), **RAW)
        for got, want in ((lower, t["lower"][sel]), (upper, t["upper"][sel])):
            want = torch.tensor(want, dtype=torch.float64)
            got = got.double()
            finite = torch.isfinite(want) & (want < torch.finfo(dtype).max)
            # lower bounds below e^-100 are 0 in the table; float32 holds none below its normal range either
            atol = 4e-44 if dtype == torch.float64 else 1.2e-38
            err = ((got - want).abs() - atol).clamp(min=0) / want.abs().clamp(min=1e-300)
            worst = max(worst, float(err[finite].max()))
            assert torch.equal(torch.isinf(got), torch.isinf(want) | (want >= torch.finfo(dtype).max))
    assert worst <= rtol, worst


DENSE = torch.tensor(
    np.concatenate(
        [
            [0.0, -1e-300, -1e-17, -1e-12, -1e-9, -1e-6],
            # to -650: below, r - 1 of chi2's upper bound squared overflows float64 (f_divergence.py says so)
            -np.exp(np.linspace(np.log(1e-7), np.log(650.0), 300)),
        ]
    ),
    dtype=torch.float64,
)
DELTAS = [1e-12, 1e-6, 1e-3, 0.05, 1.0, 30.0, 1e6]


def ulps(a, b):
    spacing = torch.maximum(torch.abs(torch.nextafter(b, torch.full_like(b, math.inf)) - b), torch.tensor(5e-324))
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    return torch.where(same, torch.zeros_like(a), (a - b).abs() / spacing)


@pytest.mark.parametrize("name", ["kl", "tv", "chi2"])
@pytest.mark.parametrize("delta", DELTAS)
def test_agrees_with_the_cores_divergences(name, delta):
    lower, upper = f_divergence_bounds(DENSE, name, delta=delta, **RAW)
    c_lower, c_upper = torch.ops.bandpo.band_bounds(DENSE, divergence=name, delta=delta, **RAW)
    # A bound e^w carries its exponent's rounding, |w| ulps (KL's deep lower bounds: both solvers alike); the
    # chi2 closed form loses a few bits where its root term nearly cancels 1 (the generic solver is the closer to
    # the 50-digit value there); bounds below 1e-300 are e^-700 and under, 0 here.
    allowed = 16 + 4 * torch.log(c_lower.clamp(min=1e-300)).abs()
    if name == "chi2":  # 1 - sqrt(delta q / p): its cancellation costs about 1 / lower ulps near saturation
        allowed = allowed + 4 / c_lower.clamp(min=1e-300)
    low_ok = (ulps(lower, c_lower) <= allowed) | ((c_lower < 1e-300) & (lower < 1e-300))
    assert bool(low_ok.all()), DENSE[~low_ok]
    assert float(ulps(upper, c_upper).max()) <= 16 + (64 if name == "chi2" else 0)


@pytest.mark.parametrize("name", list(NAMED))
def test_the_two_forms_of_each_named_f_agree(name):
    fd = NAMED[name]
    x = torch.tensor(np.concatenate([-np.logspace(-0.4, -12, 40), np.logspace(-12, 3, 60)]), dtype=torch.float64)
    t = 1 + x
    for a, b in ((fd.f1(x), fd.f(t)), (fd.g1(x), fd.g(t))):
        # the centred form is the exact one near x = 0 (f(t) cancels there: JS loses 1 / x^2 ulps); away, both are
        far = x.abs() > 0.1
        torch.testing.assert_close(a[far], b[far], rtol=1e-12, atol=1e-300)
    assert float(fd.f1(torch.zeros((), dtype=torch.float64))) == 0.0


@pytest.mark.parametrize("name", ["hellinger", "reverse_kl", "js"])
def test_a_users_function_of_t_gives_the_named_bounds(name):
    fd = NAMED[name]
    lp = DENSE[DENSE > -200]
    want = f_divergence_bounds(lp, name, delta=0.05, **RAW)
    for derivative in (fd.g, None):  # given, or autograd's
        got = f_divergence_bounds(lp, fd.f, delta=0.05, derivative=derivative, **RAW)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-300)


def test_the_alpha_family_meets_its_members():
    lp = DENSE[DENSE > -300]
    same = [("alpha", dict(alpha=0.0), "kl", 1.0), ("alpha", dict(alpha=1.0), "reverse_kl", 1.0)]
    same.append(("alpha", dict(alpha=2.0), "chi2", 2.0))  # f = (t - 1)^2 / 2: chi2 at 2 delta
    for f, kw, other, scale in same:
        a = f_divergence_bounds(lp, f, delta=0.05, **kw, **RAW)
        b = f_divergence_bounds(lp, other, delta=0.05 * scale, **RAW)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-300)


def _mp_divergence(alpha, p, r):
    q = 1 - p

    def f(t):
        if alpha == 0:
            return t - 1 - mp.log(t)
        if alpha == 1:
            return t * mp.log(t) - t + 1 if t > 0 else mp.mpf(1)
        return (t**alpha - 1 - alpha * (t - 1)) / (alpha * (alpha - 1))

    return p * f(r) + q * f((1 - p * r) / q)


@settings(max_examples=40, deadline=None)
@given(
    lp=st.floats(-60.0, -1e-6),
    log_delta=st.floats(-9.0, 1.0),
    alpha=st.sampled_from([-1.0, 0.0, 0.3, 0.5, 1.0, 1.7, 2.0, 3.0]),
)
@example(lp=-1e-06, log_delta=0.0, alpha=-1.0)  # a root within 1e-12 of 1 / p: r (1 + e) lies past the simplex
def test_property_each_bound_is_the_root_of_its_condition(lp, log_delta, alpha):
    delta = 10.0**log_delta
    lower, upper = f_divergence_bounds(
        torch.tensor([lp], dtype=torch.float64), "alpha", delta=delta, alpha=alpha, **RAW
    )
    with mp.workdps(40):
        p = mp.exp(mp.mpf(lp))
        d = mp.mpf(delta)
        for r, edge in ((float(lower), mp.mpf("1e-300")), (float(upper), (1 / p) * (1 - mp.mpf("1e-30")))):
            if _mp_divergence(alpha, p, edge) <= d:  # saturated: the bound is the simplex's edge (0 or 1 / p)
                assert abs(r - edge) <= 1e-15 * edge + 1e-250, (r, edge)
                continue
            if r < 1e-250:  # a root below 1e-250 (the solve stops at e^-700)
                continue
            # the exact root lies within 1e-12 of r: D - delta changes sign across [r (1 - e), r (1 + e)], that
            # interval's top held below the simplex's edge (D is defined for r < 1 / p only)
            e = mp.mpf(1e-12)
            top = min(mp.mpf(r) * (1 + e), edge) if r > 1 else mp.mpf(r) * (1 + e)
            lo, hi = _mp_divergence(alpha, p, mp.mpf(r) * (1 - e)), _mp_divergence(alpha, p, top)
            assert (lo - d) * (hi - d) <= 0, (r, lo, hi, d)


def test_options_saturation_and_special_values():
    lp = torch.tensor([0.0, -1e-300, -1e-3, -5.0, -math.inf, math.nan, 1.0], dtype=torch.float64)
    lower, upper = f_divergence_bounds(lp, "hellinger", delta=0.05)  # ratio_max 10
    assert lower[0] == upper[0] == upper[1] == 1.0 or upper[0] == 1.0
    assert float(upper[3]) <= 10.0 and float(upper[4]) == 10.0 and float(lower[4]) == 0.0
    assert torch.isnan(lower[5:]).all() and torch.isnan(upper[5:]).all()
    lower, upper = f_divergence_bounds(lp[:5], "js", delta=0.05, relax_high_p=True, eps_low=0.2, eps_high=0.28)
    assert bool((lower <= 0.8).all()) and bool((upper >= 1.28).all())
    half = f_divergence_bounds(lp[:5].to(torch.bfloat16), "hellinger")
    assert half[0].dtype == torch.bfloat16


def test_errors_name_the_argument():
    lp = torch.tensor([-1.0])
    with pytest.raises(ValueError, match=r"f must be one of 'kl', 'tv', 'chi2', 'reverse_kl', 'hellinger', 'js', "):
        f_divergence_bounds(lp, "renyi")
    with pytest.raises(ValueError, match='f="alpha" needs alpha'):
        f_divergence_bounds(lp, "alpha")
    with pytest.raises(ValueError, match="alpha must be a finite number; got nan"):
        f_divergence_bounds(lp, "alpha", alpha=math.nan)
    with pytest.raises(ValueError, match=r"f must have f\(1\) = 0 .* got f\(1\) = 1.0"):
        f_divergence_bounds(lp, lambda t: t**2)
    with pytest.raises(ValueError, match="delta"):
        f_divergence_bounds(lp, "js", delta=-1.0)
    with pytest.raises(ValueError, match="divergence plays no part"):
        f_divergence_bounds(lp, "js", divergence="kl")
    with pytest.raises(TypeError, match="old_logp must be a torch.Tensor"):
        f_divergence_bounds([-1.0], "js")
    assert f_divergence(NAMED["js"]) is NAMED["js"]


def test_into_the_fused_loss():
    from conftest import make_batch

    logp, old, adv, mask, _ = make_batch(seed=2)
    lower, upper = f_divergence_bounds(old, "kl", delta=0.05)
    x = logp.clone().requires_grad_()
    given = bandpo.band_loss(x, old, adv, mask, lower=lower, upper=upper)
    (g_given,) = torch.autograd.grad(given.loss, x)
    own = bandpo.band_loss(x, old, adv, mask)
    (g_own,) = torch.autograd.grad(own.loss, x)
    torch.testing.assert_close(given.loss, own.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_given, g_own, rtol=1e-12, atol=0)
    h_lower, h_upper = f_divergence_bounds(old, "hellinger", delta=0.05)
    out = bandpo.band_loss(x, old, adv, mask, lower=h_lower, upper=h_upper)
    assert 0 < float(out.metrics["pg_clipfrac"]) < 1


def test_torch_compile():
    torch._dynamo.reset()
    lp = DENSE[::10]
    compiled = torch.compile(lambda x: f_divergence_bounds(x, "kl", delta=0.05))
    for a, b in zip(compiled(lp), f_divergence_bounds(lp, "kl", delta=0.05)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-300)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    for name in ("kl", "hellinger", "js"):
        cpu = f_divergence_bounds(DENSE, name, delta=0.05, **RAW)
        gpu = f_divergence_bounds(DENSE.cuda(), name, delta=0.05, **RAW)
        for a, b in zip(gpu, cpu):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-13, atol=1e-300)
