"""Bad input gets a clear error naming the argument."""

import math

import pytest
import torch

import bandpo
from conftest import make_batch


@pytest.fixture
def b():
    return make_batch(B=2, T=5)


def call(logp, old, adv, mask=None, **kw):
    return torch.ops.bandpo.band_loss(logp, old, adv, mask, **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(delta=0.0), "delta"), (dict(delta=-1.0), "delta"), (dict(delta=math.inf), "delta"),
    (dict(delta=math.nan), "delta"), (dict(divergence="js"), "divergence"), (dict(agg="sum"), "agg"),
    (dict(kl_estimator="k4"), "kl_estimator"), (dict(dual_clip=1.0), "dual_clip"), (dict(dual_clip=0.5), "dual_clip"),
    (dict(ratio_max=0.9), "ratio_max"), (dict(eps_low=1.5), "eps_low"), (dict(eps_high=-0.1), "eps_high"),
    (dict(normalizer=0.0), "normalizer"), (dict(normalizer=math.nan), "normalizer"), (dict(kl_coef=0.1), "ref_logp"),
    (dict(kl_coef=math.inf), "kl_coef"),
])
def test_bad_options(b, kw, match):
    logp, old, adv, mask, _ = b
    with pytest.raises(ValueError, match=match):
        call(logp, old, adv, mask, **kw)


@pytest.mark.parametrize("kw,match", [(dict(delta=0.0), "delta"), (dict(divergence="x"), "divergence"),
                                      (dict(ratio_max=0.5), "ratio_max")])
def test_bad_bound_options(b, kw, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.bandpo.band_bounds(b[1], **kw)
    with pytest.raises(ValueError, match=match):
        bandpo.BandConfig(**kw)


def test_shape_errors(b):
    logp, old, adv, mask, ref = b
    with pytest.raises(ValueError, match="old_logp must have the shape"):
        call(logp, old[:, :3], adv)
    with pytest.raises(ValueError, match="advantages"):
        call(logp, old, adv[:, :3])
    with pytest.raises(ValueError, match="mask must have the shape"):
        call(logp, old, adv, mask[:1])
    with pytest.raises(ValueError, match="ref_logp must have the shape"):
        call(logp, old, adv, ref_logp=ref[:1])
    with pytest.raises(ValueError, match="needs 2-D"):
        call(logp.reshape(-1), old.reshape(-1), adv.reshape(-1), agg="seq-mean-token-mean")


def test_dtype_and_device_errors(b):
    logp, old, adv, mask, _ = b
    with pytest.raises(TypeError, match="old_logp has dtype"):
        call(logp, old.float(), adv)
    with pytest.raises(TypeError, match="logp must be"):
        call(logp.long(), old.long(), adv.long())
    with pytest.raises(TypeError, match="mask must be bool, uint8 or floating point"):
        call(logp, old, adv, mask.int())
    with pytest.raises(TypeError, match="old_logp must be"):
        torch.ops.bandpo.band_bounds(torch.zeros(3, dtype=torch.int64))
    meta = torch.empty(2, 5, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="is on meta"):
        call(logp, meta, adv)


@pytest.mark.parametrize("name,value,match", [
    ("logp", math.nan, r"logp\[3\] is NaN"), ("old", math.nan, r"old_logp\[3\] is NaN"),
    ("old", 0.5, r"old_logp\[3\] = 0.5 > 0"), ("adv", math.inf, r"advantages\[3\] = inf"),
    ("adv", math.nan, r"advantages\[3\] = nan"), ("ref", math.nan, r"ref_logp\[3\] is NaN"),
])
def test_bad_values_at_valid_positions(b, name, value, match):
    logp, old, adv, mask, ref = (t.clone() for t in b)
    mask[:] = True
    t = dict(logp=logp, old=old, adv=adv, ref=ref)[name]
    t.view(-1)[3] = value
    with pytest.raises(ValueError, match=match):
        call(logp, old, adv, mask, ref_logp=ref)


def test_old_logp_slightly_positive_counts_as_zero(b):
    logp, old, adv, mask, _ = b
    old2 = old.clone()
    old2[0, 0] = 5e-7
    old3 = old.clone()
    old3[0, 0] = 0.0
    torch.testing.assert_close(call(logp, old2, adv)[0], call(logp + torch.where(
        torch.arange(logp.numel()).reshape(logp.shape) == 0, 0.0, 0.0), old3, adv)[0], rtol=1e-6, atol=1e-9)
