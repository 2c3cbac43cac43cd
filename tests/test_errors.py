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


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(delta=0.0), "delta"),
        (dict(delta=-1.0), "delta"),
        (dict(delta=math.inf), "delta"),
        (dict(delta=math.nan), "delta"),
        (dict(divergence="js"), "divergence"),
        (dict(agg="sum"), "agg"),
        (dict(kl_estimator="k4"), "kl_estimator"),
        (dict(dual_clip=1.0), "dual_clip"),
        (dict(dual_clip=0.5), "dual_clip"),
        (dict(ratio_max=0.9), "ratio_max"),
        (dict(eps_low=1.5), "eps_low"),
        (dict(eps_high=-0.1), "eps_high"),
        (dict(normalizer=0.0), "normalizer"),
        (dict(normalizer=math.nan), "normalizer"),
        (dict(kl_coef=0.1), "ref_logp"),
        (dict(kl_coef=math.inf), "kl_coef"),
    ],
)
def test_bad_options(b, kw, match):
    logp, old, adv, mask, _ = b
    with pytest.raises(ValueError, match=match):
        call(logp, old, adv, mask, **kw)


# torch 2.15 and later raise every exception of an ABI-stable kernel as RuntimeError (same message); band_loss
# (through its autograd kernel) and the Python faces restore the type (bandpo._ops.typed_refusal), the other ops
# called through torch.ops directly cannot.
DIRECT_OP_VALUE_ERROR = (
    (ValueError, RuntimeError) if tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 15) else ValueError
)


@pytest.mark.parametrize(
    "kw,match", [(dict(delta=0.0), "delta"), (dict(divergence="x"), "divergence"), (dict(ratio_max=0.5), "ratio_max")]
)
def test_bad_bound_options(b, kw, match):
    with pytest.raises(DIRECT_OP_VALUE_ERROR, match=match):
        torch.ops.bandpo.band_bounds(b[1], **kw)
    with pytest.raises(ValueError, match=match):
        bandpo.band_bounds(b[1], **kw)
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


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("logp", math.nan, r"logp\[3\] is NaN"),
        ("old", math.nan, r"old_logp\[3\] is NaN"),
        ("old", 0.5, r"old_logp\[3\] = 0.5 > 0"),
        ("adv", math.inf, r"advantages\[3\] = inf"),
        ("adv", math.nan, r"advantages\[3\] = nan"),
        ("ref", math.nan, r"ref_logp\[3\] is NaN"),
    ],
)
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
    torch.testing.assert_close(
        call(logp, old2, adv)[0],
        call(logp + torch.where(torch.arange(logp.numel()).reshape(logp.shape) == 0, 0.0, 0.0), old3, adv)[0],
        rtol=1e-6,
        atol=1e-9,
    )


# Each option at the edges of what a float can be: every face refuses the same values with a ValueError
# naming the option (or accepts them alike). Values a face cannot even receive (non-floats) are TypeErrors.
EDGE_VALUES = [0.0, -0.0, 5e-324, 1e-300, 1e-7, 1e300, 1.7e308, math.inf, -math.inf, math.nan, -1e-300]
FLOAT_OPTIONS = ["delta", "eps_low", "eps_high", "ratio_max", "dual_clip", "normalizer", "kl_coef"]


def _faces(b):
    import numpy as np

    import bandpo.np as bnp
    import bandpo.reference as ref_impl

    logp, old, adv, mask, ref = b
    n = [t.numpy() for t in (logp, old, adv, mask, ref)]
    return {
        "op": lambda kw: torch.ops.bandpo.band_loss(logp, old, adv, mask, ref_logp=ref, **kw),
        "python": lambda kw: bandpo.band_loss(logp, old, adv, mask, ref_logp=ref, **kw),
        "numpy": lambda kw: bnp.band_loss(n[0], n[1], n[2], n[3], ref_logp=np.ascontiguousarray(n[4]), **kw),
        "reference": lambda kw: ref_impl.band_loss(logp, old, adv, mask, ref_logp=ref, **kw),
    }


@pytest.mark.parametrize("option", FLOAT_OPTIONS)
def test_every_face_refuses_the_same_option_values(b, option):
    verdicts = {}
    for value in EDGE_VALUES:
        for face, f in _faces(b).items():
            try:
                loss = f({option: value})[0]
                verdicts.setdefault(value, {})[face] = "ok"
                assert torch.isfinite(torch.as_tensor(loss)).all(), (face, option, value, loss)
            except ValueError as e:
                assert option in str(e), (face, option, value, str(e))
                verdicts.setdefault(value, {})[face] = "ValueError"
        assert len(set(verdicts[value].values())) == 1, (option, value, verdicts[value])
    # the ranges that keep the loss representable (options.h)
    if option == "normalizer":
        assert verdicts[1e-300]["op"] == verdicts[1e300]["op"] == verdicts[1e-7]["op"] == "ValueError"
    if option == "kl_coef":
        assert verdicts[1e300]["op"] == "ValueError" and verdicts[-0.0]["op"] == "ok"


@pytest.mark.parametrize("name", ["logp", "ref"])
@pytest.mark.parametrize("value", [0.5, 1e-5, math.inf])
def test_log_probabilities_above_zero_are_refused(b, name, value):
    logp, old, adv, mask, ref = (t.clone() for t in b)
    mask[:] = True
    dict(logp=logp, ref=ref)[name].view(-1)[3] = value
    arg = dict(logp="logp", ref="ref_logp")[name]
    with pytest.raises(ValueError, match=rf"{arg}\[3\] = {value:g} > 0 is not a log-probability"):
        call(logp, old, adv, mask, ref_logp=ref)
    import bandpo.np as bnp

    with pytest.raises(ValueError, match=rf"{arg}\[3\] = {value:g} > 0"):
        bnp.band_loss(logp.numpy(), old.numpy(), adv.numpy(), mask.numpy(), ref_logp=ref.numpy())
    # the reference, like the CUDA kernels (which cannot raise without a synchronisation), returns NaN
    import bandpo.reference as ref_impl

    assert torch.isnan(ref_impl.band_loss(logp, old, adv, mask, ref_logp=ref)[0])
    # a masked position may hold anything
    mask.view(-1)[3] = False
    assert torch.isfinite(call(logp, old, adv, mask, ref_logp=ref)[0])


def test_log_probabilities_within_rounding_of_zero_are_accepted(b):
    logp, old, adv, mask, ref = (t.clone() for t in b)
    logp.view(-1)[3] = 9e-7
    ref.view(-1)[4] = 9e-7
    assert torch.isfinite(call(logp, old, adv, mask, ref_logp=ref)[0])


def test_a_config_that_is_not_a_band_config_is_named(b):
    # Options passed as a dict where a BandConfig goes: a TypeError naming config, from every face (one rule,
    # bandpo.config.resolve_config), not an AttributeError from deep inside.
    import bandpo.np as bnp

    logp, old, adv, mask, _ = b
    h, w = torch.randn(logp.numel(), 4), torch.randn(7, 4)
    target = torch.zeros(logp.shape, dtype=torch.int64)
    calls = [
        lambda c: bandpo.band_loss(logp, old, adv, mask, c),
        lambda c: bandpo.band_bounds(old, c),
        lambda c: bnp.band_loss(logp.numpy(), old.numpy(), adv.numpy(), mask.numpy(), c),
        lambda c: bnp.band_bounds(old.numpy(), c),
        lambda c: bandpo.fused_linear_band_loss(h, w, target, old, adv, mask, c),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="config must be a bandpo.BandConfig"):
            call({"delta": 0.1})
    assert bandpo.band_bounds(old, None, delta=0.1)[0].shape == old.shape  # None: the defaults, overridden
