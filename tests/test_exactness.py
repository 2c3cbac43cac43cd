"""Band bounds against the 50-digit table (tests/data/kl_bounds_mpmath.csv) and the closed forms."""

import csv
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bandpo
from bandpo import reference

TABLE = os.path.join(os.path.dirname(__file__), "data", "kl_bounds_mpmath.csv")


def load_table():
    with open(TABLE) as f:
        rows = list(csv.DictReader(f))
    cols = {k: np.array([float(r[k]) for r in rows]) for k in ("old_logp", "delta", "lower", "upper")}
    return cols


def relative_errors(lower, upper, exact_lower, exact_upper):
    err_upper = np.abs(upper - exact_upper) / np.maximum(exact_upper, 1.0)
    err_lower = np.abs(lower - exact_lower) / np.maximum(exact_lower, 1e-3)
    return err_lower, err_upper


@pytest.mark.parametrize("dtype,tol,min_logp", [(torch.float64, 1e-11, -700.0), (torch.float32, 4e-6, -80.0)])
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_kl_bounds_match_mpmath(dtype, tol, min_logp, impl):
    t = load_table()
    fn = torch.ops.bandpo.band_bounds if impl == "op" else reference.band_bounds
    worst = 0.0
    checked = 0
    for delta in np.unique(t["delta"]):
        sel = (t["delta"] == delta) & (t["old_logp"] >= min_logp)
        lp = torch.tensor(t["old_logp"][sel], dtype=dtype)
        lower, upper = fn(lp, divergence="kl", delta=float(delta), ratio_max=math.inf)
        el, eu = relative_errors(lower.double().numpy(), upper.double().numpy(), t["lower"][sel], t["upper"][sel])
        worst = max(worst, el.max(), eu.max())
        checked += int(sel.sum())
    assert checked > 1000
    assert worst <= tol, f"worst relative error {worst:.3g} > {tol:g}"


def test_paper_table_values():
    # PAPER-NOTES.md, delta = 0.05
    lp = torch.tensor([math.log(0.01), math.log(0.08), math.log(0.5), math.log(0.99)], dtype=torch.float64)
    kw = dict(delta=0.05, ratio_max=math.inf)
    lo, up = bandpo.band_bounds(lp, divergence="kl", **kw)
    np.testing.assert_allclose(lo.numpy(), [0.002497, 0.2617, 0.6915, 0.9312], rtol=2e-4)
    np.testing.assert_allclose(up.numpy(), [7.810, 2.4106, 1.3085, 1.0101], rtol=2e-4)
    lo, up = bandpo.band_bounds(lp, divergence="tv", **kw)
    np.testing.assert_allclose(lo.numpy(), [0, 0.375, 0.9, 0.9495], atol=2e-4)
    np.testing.assert_allclose(up.numpy(), [6, 1.625, 1.1, 1.0101], rtol=2e-4)
    lo, up = bandpo.band_bounds(lp, divergence="chi2", **kw)
    np.testing.assert_allclose(lo.numpy(), [0, 0.2417, 0.7764, 0.9775], atol=2e-4)
    np.testing.assert_allclose(up.numpy(), [3.225, 1.7583, 1.2236, 1.0101], rtol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_limits_come_out_of_the_formulas(dtype):
    delta = 0.05
    lp = torch.tensor([0.0, 5e-7, -1e-300 if dtype == torch.float64 else -1e-40], dtype=dtype)
    lo, up = bandpo.band_bounds(lp, delta=delta)
    np.testing.assert_allclose(lo.double().numpy(), math.exp(-delta), rtol=1e-6)
    np.testing.assert_allclose(up.double().numpy(), 1.0, rtol=1e-6)
    lo, up = bandpo.band_bounds(lp, divergence="tv", delta=delta)
    np.testing.assert_allclose(lo.double().numpy(), 1 - delta, rtol=1e-6)
    lo, up = bandpo.band_bounds(torch.tensor([-float("inf")], dtype=dtype), ratio_max=math.inf)
    assert lo.item() == 0.0 and up.item() == math.inf
    # p -> 0: p * upper -> 1 - e^-delta
    lp = torch.tensor([-200.0], dtype=torch.float64)
    _, up = bandpo.band_bounds(lp, ratio_max=math.inf)
    assert abs(up.item() * math.exp(-200.0) - (1 - math.exp(-delta))) < 1e-12


@pytest.mark.parametrize("divergence", ["kl", "tv", "chi2", "dcpo"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bounds_monotone_in_p(divergence, dtype):
    lp = -torch.logspace(-7, math.log10(80), 20000, dtype=torch.float64).flip(0)  # increasing p
    lp = lp.to(dtype)
    lo, up = bandpo.band_bounds(lp, divergence=divergence, delta=0.05, ratio_max=math.inf)
    lo, up = lo.double(), up.double()
    eps = torch.finfo(dtype).eps
    assert (torch.diff(lo) >= -4 * eps * lo[1:]).all()
    assert (torch.diff(up) <= 4 * eps * up[1:]).all()


def _dcpo_exact(lp: float, eps: float, side: str):
    """DCPO's bound at old log-probability lp, to 50 digits (mpmath), from the formula as published."""
    import mpmath

    with mpmath.workdps(50):
        x = 4 * mpmath.mpf(eps) * mpmath.exp(-mpmath.mpf(lp))
        inner = 1 - x if side == "lower" else 1 + x
        return float(0.5 + 0.5 * mpmath.sqrt(max(inner, 0)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dcpo_bounds_match_mpmath(dtype):
    """Over p in (0, 1], subnormal p included, and densely where the lower bound's root term vanishes (p -> 4 eps_low: infinite
    slope in p). float32 is exact at its input there too (log(4 eps) held as head + tail, bounds.h). float64
    is exact to 1e-13 away from that point and backward-stable at it: the exact bound of an input within 2
    ulps, since log(4 eps) itself is only rounded to double."""
    eps_low, eps_high = 0.16, 0.2
    npdt = np.float32 if dtype == torch.float32 else np.float64
    near = [npdt(math.log(4 * eps_low))]
    for _ in range(64):
        near.append(np.nextafter(near[-1], npdt(0)))
    lps = np.array(
        near
        + list(np.linspace(math.log(4 * eps_low), 0.0, 500))
        + list(-np.logspace(-12, math.log10(103.0 if npdt is np.float32 else 740.0), 500)),
        dtype=npdt,
    )
    lo, up = torch.ops.bandpo.band_bounds(
        torch.from_numpy(lps), divergence="dcpo", eps_low=eps_low, eps_high=eps_high, ratio_max=math.inf
    )
    ulp = float(np.finfo(npdt).eps)
    for i, lp in enumerate(lps.tolist()):
        want_up = _dcpo_exact(lp, eps_high, "upper")
        assert abs(float(up[i]) - want_up) <= 2 * ulp * want_up, (lp, float(up[i]), want_up)
        want_lo = _dcpo_exact(lp, eps_low, "lower")
        if dtype == torch.float32 or abs(want_lo - 0.5) > 1e-5:
            assert abs(float(lo[i]) - want_lo) <= (2 * ulp if dtype == torch.float32 else 1e-13), (
                lp,
                float(lo[i]),
                want_lo,
            )
        else:
            step = 2 * abs(lp) * ulp  # two ulps of the input
            assert (
                _dcpo_exact(lp - step, eps_low, "lower") - 1e-16
                <= float(lo[i])
                <= _dcpo_exact(lp + step, eps_low, "lower") + 1e-16
            ), (lp, float(lo[i]), want_lo)


def test_dcpo_limits_and_published_values():
    eps_low, eps_high = 0.16, 0.2
    p = torch.tensor([1.0, 0.64, 0.5, 0.2, 0.01, 1e-300, 0.0], dtype=torch.float64)
    lo, up = bandpo.band_bounds(p.log(), divergence="dcpo", eps_low=eps_low, eps_high=eps_high, ratio_max=math.inf)
    # p = 1: the roots of r (1 - r) = eps_low and r (r - 1) = eps_high
    assert lo[0] == pytest.approx((1 + math.sqrt(1 - 4 * eps_low)) / 2, rel=1e-15) == pytest.approx(0.8)
    assert up[0] == pytest.approx((1 + math.sqrt(1 + 4 * eps_high)) / 2, rel=1e-15)
    assert bool((lo[1:] == 0.5).all())  # p <= 4 eps_low: the lower root term is 0
    assert up[2] == pytest.approx((1 + math.sqrt(1 + 8 * eps_high)) / 2, rel=1e-15)
    assert up[4] == pytest.approx((1 + math.sqrt(81.0)) / 2, rel=1e-15)  # p = 0.01: 1 + 4 * 0.2 / 0.01 = 81
    assert up[5] == pytest.approx(0.5 + 0.5 * math.sqrt(0.8e300), rel=1e-13)  # 4 eps / p overflows; the bound not
    assert math.isinf(up[6])  # p = 0: unbounded, before the cap
    capped = bandpo.band_bounds(p.log(), divergence="dcpo", eps_low=eps_low, eps_high=eps_high)[1]
    assert capped[4] == pytest.approx(5.0) and capped[6] == 10.0  # DCPO's suggested cap is the default ratio_max, 10
    # eps = 0 pins the ratio, even at p = 0; relax_high_p unites DCPO's bounds with the fixed interval
    lo, up = bandpo.band_bounds(p.log(), divergence="dcpo", eps_low=0.0, eps_high=0.0)
    assert bool((lo == 1).all()) and bool((up == 1).all())
    lo, up = bandpo.band_bounds(p.log(), divergence="dcpo", eps_low=eps_low, eps_high=eps_high, relax_high_p=True)
    assert bool((lo <= 1 - eps_low).all()) and bool((up >= 1 + eps_high).all())


def test_saturation_points():
    delta = 0.05
    p = torch.tensor([0.04, 0.06, 0.9, 0.96], dtype=torch.float64)
    lo, up = bandpo.band_bounds(p.log(), divergence="tv", delta=delta, ratio_max=math.inf)
    assert lo[0] == 0 and lo[1] > 0  # TV lower = 0 for p <= delta
    assert up[3] == pytest.approx(1 / 0.96) and up[2] < 1 / 0.9
    lo, up = bandpo.band_bounds(p.log(), divergence="chi2", delta=delta, ratio_max=math.inf)
    assert lo[0] == 0 and lo[1] > 0  # delta/(1+delta) = 0.0476
    assert up[3] == pytest.approx(1 / 0.96)  # 1/(1+delta) = 0.952


def test_relax_and_caps():
    lp = torch.log(torch.tensor([0.001, 0.3, 0.999], dtype=torch.float64))
    lo, up = bandpo.band_bounds(lp, relax_high_p=True, ratio_max=5.0)
    assert (lo <= 0.8).all() and (up >= 1.28).all() and (up <= 5.0).all()
    raw_lo, raw_up = bandpo.band_bounds(lp, ratio_max=math.inf)
    torch.testing.assert_close(lo, torch.minimum(raw_lo, torch.tensor(0.8, dtype=torch.float64)))
    torch.testing.assert_close(up, torch.maximum(raw_up, torch.tensor(1.28, dtype=torch.float64)).clamp(max=5.0))
    lo, up = bandpo.band_bounds(lp, divergence="clip", eps_low=0.2, eps_high=0.28)
    assert torch.equal(lo, torch.full_like(lo, 0.8)) and torch.equal(up, torch.full_like(up, 1.28))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    lp = torch.linspace(-15, 0, 1001).to(dtype)
    lo, up = bandpo.band_bounds(lp)
    assert lo.dtype == dtype and up.dtype == dtype
    rlo, rup = reference.band_bounds(lp.double())
    # atol: float-computed lower bounds underflow below ~1e-38 where the float64 reference does not
    torch.testing.assert_close(lo.double(), rlo.to(dtype).double(), rtol=torch.finfo(dtype).eps, atol=1e-30)
    torch.testing.assert_close(up.double(), rup.to(dtype).double(), rtol=torch.finfo(dtype).eps, atol=0)


def test_nan_and_positive_old_logp_give_nan_bounds():
    lo, up = bandpo.band_bounds(torch.tensor([float("nan"), 0.5, 1e-7], dtype=torch.float64))
    assert torch.isnan(lo[:2]).all() and torch.isnan(up[:2]).all()
    assert lo[2] == pytest.approx(math.exp(-0.05)) and up[2] == 1.0


def test_chi2_bounds_of_subnormal_float32_probabilities():
    # found by test_hypothesis_bounds_match_reference: delta q / p overflowed float32 for subnormal p, so the
    # upper bound was inf (then ratio_max) instead of about 1/sqrt(p)
    lp = torch.tensor([-88.0, -89.0, -90.0], dtype=torch.float32)
    kw = dict(divergence="chi2", delta=1.0, ratio_max=1e30)
    upper = torch.ops.bandpo.band_bounds(lp, **kw)[1]
    torch.testing.assert_close(upper, reference.band_bounds(lp, **kw)[1], rtol=4e-6, atol=0)
    # deeper, p keeps only a few bits in float32 (FLOAT32_NORMAL_LOGP), but the bound stays finite and below the cap
    upper = torch.ops.bandpo.band_bounds(torch.tensor([-95.0, -103.0]), **kw)[1]
    assert bool((upper > 1e20).all() and (upper < 1e30).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kl_bounds_at_huge_delta_and_tiny_p(dtype):
    # found while hardening: a Halley step from a root far left of exp's underflow overflowed to -inf, then NaN,
    # and the float32 lower bound came out 1 instead of 0 (delta >= 1e4 at old_logp = -80)
    lp = torch.tensor([-80.0, -103.5, -700.0, -745.0, -0.01, 0.0], dtype=torch.float64).to(dtype)
    for delta in (1e3, 1e4, 1e5, 1e6):
        lower, upper = torch.ops.bandpo.band_bounds(lp, divergence="kl", delta=delta, ratio_max=math.inf)
        want_lower, want_upper = reference.band_bounds(lp, divergence="kl", delta=delta, ratio_max=math.inf)
        assert not torch.isnan(want_lower).any() and not torch.isnan(want_upper).any()  # the reference too
        torch.testing.assert_close(lower, want_lower, rtol=0, atol=1e-6)
        assert bool((lower[:4] == 0).all())


# exp(old_logp) is a normal float32 from here up; below it p is subnormal in the float32 compute type, with
# fewer bits the further down (none left at -103.3), and the float bounds have only that precision.
FLOAT32_NORMAL_LOGP = -87.3


# Old log-probabilities across the whole domain: plausible ones, the tails (p -> 0 and p -> 1, exp's underflow,
# subnormal p), and the special values bounds map to NaN (NaN, above 0).
LOGPS = st.one_of(
    st.floats(-30.0, 0.0),
    st.floats(-800.0, 0.0),
    st.floats(-1e-6, 0.0),
    st.sampled_from([0.0, -0.0, -1e-300, -5e-324, -103.5, -745.0, -1e300, -math.inf, math.nan, 1e-7, 5e-7, 0.5]),
)


@given(
    old=st.lists(LOGPS, min_size=1, max_size=64),
    divergence=st.sampled_from(bandpo.DIVERGENCES),
    delta=st.floats(-12.0, 6.0).map(lambda e: 10.0**e),
    eps_low=st.floats(0.0, 1.0),
    eps_high=st.floats(0.0, 5.0),
    relax=st.booleans(),
    ratio_max=st.sampled_from([1.0, 1.5, 10.0, 1e30, math.inf]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_hypothesis_bounds_match_reference(old, divergence, delta, eps_low, eps_high, relax, ratio_max, dtype):
    lp = torch.tensor(old, dtype=torch.float64).to(dtype)
    kw = dict(
        divergence=divergence, delta=delta, eps_low=eps_low, eps_high=eps_high, relax_high_p=relax, ratio_max=ratio_max
    )
    lower, upper = torch.ops.bandpo.band_bounds(lp, **kw)
    want_lower, want_upper = reference.band_bounds(lp, **kw)  # float64 math, rounded to dtype
    # float64: 1e-11 as against the mpmath table; float32: 4e-6 relative (upper), 4e-6 absolute (lower, in
    # [0, 1]: where the band's lower bound is 1 - delta/p the relative error near 0 means nothing).
    rtol, atol = (1e-11, 1e-12) if dtype == torch.float64 else (4e-6, 4e-6)
    tol = torch.full_like(lp, atol, dtype=torch.float64)
    if divergence == "dcpo":
        # The reference's own float64 rounding of 1 - 4 eps / p (a few 1e-16), seen through the square root:
        # large only where that root term vanishes (test_dcpo_bounds_match_mpmath checks that point exactly).
        inner = (1 - 4 * eps_low * torch.exp(-lp.double().clamp(max=0))).clamp(min=0)
        tol += (0.5 * (torch.sqrt(inner + 1e-15) - torch.sqrt(inner))).nan_to_num(0.0)
    close = ((lower.double() - want_lower.double()).abs() <= tol) | (torch.isnan(lower) & torch.isnan(want_lower))
    assert bool(close.all()), (lp[~close], lower[~close], want_lower[~close])
    exact = torch.ones_like(lp, dtype=torch.bool) if dtype == torch.float64 else ~(lp < FLOAT32_NORMAL_LOGP)
    torch.testing.assert_close(upper[exact], want_upper[exact], rtol=rtol, atol=0.0, equal_nan=True)
    finite = ~torch.isnan(lp) & (lp <= 1e-6)
    assert bool(
        ((lower[finite] >= 0) & (lower[finite] <= 1) & (upper[finite] >= 1) & (upper[finite] <= ratio_max)).all()
    )


def test_presets_are_the_papers_rules():
    lp = torch.log(torch.tensor([1e-4, 0.02, 0.3, 0.7, 0.999], dtype=torch.float64))
    assert set(bandpo.PRESETS) == {"clip", "clip-higher", "dcpo", "trgppo", "band-kl", "band-tv", "band-chi2"}
    # TRGPPO: the KL bounds, never narrower than PPO's [1 - eps, 1 + eps]
    lo, up = bandpo.band_bounds(lp, bandpo.BandConfig.preset("trgppo"))
    kl_lo, kl_up = bandpo.band_bounds(lp, bandpo.BandConfig.preset("band-kl"))
    torch.testing.assert_close(lo, torch.clamp(kl_lo, max=0.8), rtol=0, atol=0)
    torch.testing.assert_close(up, torch.clamp(kl_up, min=1.2), rtol=0, atol=0)
    assert bool((up[:2] > 1.2).all()) and bool((up[3:] == 1.2).all())  # the band wider for rare tokens only
    lo, up = bandpo.band_bounds(lp, bandpo.BandConfig.preset("clip-higher"))
    assert bool((lo == 0.8).all()) and bool((up == 1.28).all())
    cfg = bandpo.BandConfig.preset("dcpo", dual_clip=10.0)
    assert (cfg.divergence, cfg.eps_low, cfg.eps_high, cfg.ratio_max, cfg.dual_clip) == ("dcpo", 0.16, 0.2, 10.0, 10.0)
    with pytest.raises(ValueError, match="preset: unknown method 'ppo'"):
        bandpo.BandConfig.preset("ppo")


def test_dcpo_eps_below_the_compute_types_range():
    # found by test_hypothesis_bounds_match_reference: 4 eps_low = 6.5e-70 is 0 in float, yet against
    # p = e^-149 it moves the lower bound by 4e-6; log(4 eps) as head + tail keeps it
    lp = torch.tensor([-149.0], dtype=torch.float32)
    lo, _ = torch.ops.bandpo.band_bounds(lp, divergence="dcpo", eps_low=1.6234804485002697e-70, eps_high=0.0)
    want = _dcpo_exact(-149.0, 1.6234804485002697e-70, "lower")
    assert want < 1 - 3e-6 and abs(float(lo[0]) - want) <= 1.2e-7
