"""bandpo.rules, the Python statement of the op's ratio, clip decision and aggregation, against the op itself."""

import pytest
import torch

import bandpo
from bandpo import rules
from conftest import make_batch


@pytest.mark.parametrize("agg", bandpo.AGGREGATIONS)
@pytest.mark.parametrize("normalizer", [None, 7.5])
@pytest.mark.parametrize("weights", ["bool", "values"])
def test_aggregate_is_the_ops_aggregation(agg, normalizer, weights):
    # r = 1 and A = -1: every valid token's loss is exactly 1, so the op's loss is the aggregation of ones
    g = torch.Generator().manual_seed(1)
    logp = torch.log(torch.rand(5, 7, generator=g, dtype=torch.float64))
    mask = torch.rand(5, 7, generator=g) > 0.3
    mask[2] = False  # a row without tokens
    weight = mask if weights == "bool" else mask * torch.rand(5, 7, generator=g, dtype=torch.float64)
    loss, _ = torch.ops.bandpo.band_loss(
        logp, logp, -torch.ones(5, dtype=torch.float64), weight, agg=agg, normalizer=normalizer
    )
    want = rules.aggregate(torch.ones_like(logp), weight, agg, normalizer)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    if normalizer is None and agg != "seq-mean-token-mean":
        torch.testing.assert_close(
            rules.aggregate(torch.ones_like(logp), weight, agg) * rules.aggregation_denominator(weight, agg),
            (torch.ones_like(logp) * weight).sum(),
            rtol=1e-12,
            atol=0,
        )


@pytest.mark.parametrize("divergence", bandpo.DIVERGENCES)
def test_ratio_and_clip_decision_are_the_ops(divergence):
    logp, old, adv, mask, _ = make_batch(seed=4)
    logp = logp.detach()
    cfg = bandpo.BandConfig(divergence=divergence)
    _, metrics = torch.ops.bandpo.band_loss(logp, old, adv, mask, **cfg.loss_kwargs())
    lower, upper = bandpo.band_bounds(old, cfg)
    at_upper, at_lower = rules.clipped(
        rules.ratio(logp, old), adv.reshape(-1, 1) if adv.dim() == 1 else adv, lower, upper
    )
    n = mask.sum()
    names = list(bandpo.METRIC_NAMES)
    assert float((at_upper & mask).sum() / n) == pytest.approx(float(metrics[names.index("clipfrac_upper")]), abs=1e-6)
    assert float((at_lower & mask).sum() / n) == pytest.approx(float(metrics[names.index("clipfrac_lower")]), abs=1e-6)
    assert float((rules.ratio(logp, old) * mask).sum() / n) == pytest.approx(
        float(metrics[names.index("ratio_mean")]), rel=1e-5
    )


def test_constants_come_from_the_header():
    assert (rules.LOG_RATIO_CLAMP, rules.LOG_PROB_TOLERANCE, rules.KL_ESTIMATE_CLAMP) == (20.0, 1e-6, 10.0)
    assert bandpo.reference.LOG_RATIO_CLAMP is rules.LOG_RATIO_CLAMP
    with pytest.raises(ValueError, match="agg must be one of"):
        rules.aggregation_denominator(torch.ones(2, 2), "mean")
    with pytest.raises(ValueError, match="needs 2-D"):
        rules.aggregation_denominator(torch.ones(3), "seq-mean-token-sum")
