"""Weighted sums that cannot overflow where their means fit (float64, huge mask weights).

The loss and its metrics are weighted sums over tokens divided by the total weight (or by rows, a normalizer).
With float64 mask weights near 1e300 the products w * x overflowed although every mean fits: ppo_kl came out
inf (found by the fuzzer, tests/fuzz/corpus/finding-ppo-kl-weight). The CPU forward now scales such weights by
a power of two first; these tests hold it to the plain sums bit for bit, on every face of the CPU kernels.
"""

import numpy as np
import pytest
import torch

import bandpo
import bandpo.np as bnp


def batch(seed=3, rows=4, cols=97):
    rng = np.random.default_rng(seed)
    old = np.log(rng.random((rows, cols)) * 0.999 + 1e-4)
    logp = np.minimum(old + 0.3 * rng.standard_normal((rows, cols)), 0.0)
    adv = rng.standard_normal((rows, cols))
    ref = np.minimum(old + 0.1 * rng.standard_normal((rows, cols)), 0.0)
    w = rng.random((rows, cols))
    w[w < 0.2] = 0.0
    return logp, old, adv, ref, w


OPTIONS = [dict(), dict(normalizer=7.0), dict(kl_coef=0.1, with_ref=True), dict(dual_clip=3.0)]


@pytest.mark.parametrize("agg", bandpo.AGGREGATIONS)
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("exponent", [2, 990])
def test_weights_times_a_power_of_two_give_the_same_means(agg, opts, exponent):
    """Weights w and w * 2^e: the same metrics bit for bit, the loss the same (token-mean over the weights) or
    2^e times it (other denominators), however large 2^e, as long as the result fits."""
    logp, old, adv, ref, w = batch()
    kw = {k: v for k, v in opts.items() if k != "with_ref"}
    if opts.get("with_ref"):
        kw["ref_logp"] = ref
    base = bnp.band_loss(logp, old, adv, w, agg=agg, **kw)
    big = bnp.band_loss(logp, old, adv, w * 2.0**exponent, agg=agg, **kw)
    assert list(big.metrics.values())[:-1] == list(base.metrics.values())[:-1]  # all but pg_loss
    by_weight = agg == "token-mean" and "normalizer" not in kw
    factor = 1.0 if by_weight or agg == "seq-mean-token-mean" else 2.0**exponent
    assert big.loss == base.loss * factor
    pg = float(base.metrics["pg_loss"]) * factor
    if abs(pg) < float(np.finfo(np.float32).max):  # pg_loss is a float32 metric
        assert big.metrics["pg_loss"] == np.float32(pg)


def test_fuzzer_finding_huge_weight_and_log_ratio():
    """One token of weight 1e300 and log-ratio -1e30: the loss was finite, ppo_kl +inf; now 1e30 (float32)."""
    args = [np.array([[v]]) for v in (-1e30, -20.0, -0.482353)]
    r = bnp.band_loss(*args, np.array([[1e300]]))
    assert np.isfinite(r.loss) and all(np.isfinite(list(r.metrics.values())))
    assert r.metrics["ppo_kl"] == np.float32(1e30 - 20.0)
    t = bandpo.band_loss(*[torch.from_numpy(a) for a in args], torch.tensor([[1e300]], dtype=torch.float64))
    assert torch.isfinite(t.metrics_tensor).all() and float(t.loss) == r.loss
