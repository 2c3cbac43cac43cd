"""One rule, one message: the same bad call sent to every face (the torch op, bandpo.band_loss, bandpo.np and
the C ABI) raises the same exception type with the same text, because every face asks the core
(bandpo/arrays.h: bandpo_loss_layout_of in the C ABI). Also mixed precision and the Python faces' option
errors (misspelt names, wrong types)."""

import ctypes
import math

import numpy as np
import pytest
import torch

import bandpo
import bandpo.np as bnp
from bandpo import _capi
from conftest import make_batch

# The C ABI's statuses as Python's exceptions (bandpo.h: BANDPO_INVALID_ARGUMENT, BANDPO_WRONG_DTYPE).
C_STATUS = {ValueError: 1, TypeError: 4}


def c_abi_call(arrays, kwargs):
    """The C ABI itself: bandpo_loss_layout_of, then bandpo_band_loss; (status, message) of the first failure."""
    opts = _capi.Options()
    _capi.lib.bandpo_default_options(ctypes.byref(opts))
    for name, value in kwargs.items():  # as a C caller sets them: choices by bandpo_parse_choice, numbers as they are
        if isinstance(value, str):
            code = ctypes.c_int()
            status = _capi.lib.bandpo_parse_choice(name.encode(), value.encode(), ctypes.byref(code))
            if status != 0:
                return status, _capi.lib.bandpo_last_error().decode()
            value = code.value
        setattr(opts, name, value)
    keep = []
    arrays = list(arrays) + [None] * (len(_capi.LOSS_ARRAY_NAMES) - len(arrays))  # lower, upper: absent
    described = [
        _capi.ABSENT if a is None else _capi.describe(a.ctypes.data, str(a.dtype), a.shape, keep) for a in arrays
    ]
    layout = _capi.LossLayout()
    status = _capi.lib.bandpo_loss_layout_of(
        ctypes.byref(_capi.LossArrays(*described)), ctypes.byref(opts), ctypes.byref(layout)
    )
    if status == 0:
        ready = [None if a is None else np.ascontiguousarray(a) for a in arrays]
        ptr = [None if a is None else a.ctypes.data for a in ready]
        inputs = _capi.loss_inputs(layout, ptr)
        loss, metrics = ctypes.c_double(), (ctypes.c_float * 8)()
        status = _capi.lib.bandpo_band_loss(ctypes.byref(inputs), ctypes.byref(opts), ctypes.byref(loss), metrics, None)
    return status, _capi.lib.bandpo_last_error().decode()


def bad_calls():
    logp, old, adv, mask, ref = make_batch(B=2, T=5, dtype=torch.float64)
    nan = logp.clone()
    nan[1, 2] = math.nan
    mask_valid = mask.clone()
    mask_valid[1, 2] = True
    return {
        "old_logp dtype": ((logp, old.float(), adv, mask, None), {}, TypeError),
        "logp dtype": ((logp.long(), old, adv, mask, None), {}, TypeError),
        "mask dtype": ((logp, old, adv, mask.int(), None), {}, TypeError),
        "old_logp shape": ((logp, old[:, :3], adv, mask, None), {}, ValueError),
        "advantages shape": ((logp, old, adv[:, :3], mask, None), {}, ValueError),
        "mask shape": ((logp, old, adv, mask[:1], None), {}, ValueError),
        "ref_logp shape": ((logp, old, adv, mask, ref[:1]), {}, ValueError),
        "ref_logp dtype": ((logp, old, adv, mask, ref.float()), {}, TypeError),
        "agg needs 2-D": (
            (logp.reshape(-1), old.reshape(-1), adv.reshape(-1), None, None),
            {"agg": "seq-mean-token-mean"},
            ValueError,
        ),
        "kl_coef without ref": ((logp, old, adv, mask, None), {"kl_coef": 0.1}, ValueError),
        "delta": ((logp, old, adv, mask, None), {"delta": -1.0}, ValueError),
        "divergence": ((logp, old, adv, mask, None), {"divergence": "js"}, ValueError),
        "NaN at a valid position": ((nan, old, adv, mask_valid, None), {}, ValueError),
    }


@pytest.mark.parametrize("case", list(bad_calls()))
def test_every_face_gives_the_same_error(case):
    (logp, old, adv, mask, ref), kwargs, exc = bad_calls()[case]
    messages = {}
    with pytest.raises(exc) as e:
        torch.ops.bandpo.band_loss(logp, old, adv, mask, ref_logp=ref, **kwargs)
    messages["torch op"] = str(e.value)
    with pytest.raises(exc) as e:
        bandpo.band_loss(logp, old, adv, mask, ref_logp=ref, **kwargs)
    messages["bandpo.band_loss"] = str(e.value)
    arrays = [None if t is None else t.numpy() for t in (logp, old, adv, mask, ref)]
    with pytest.raises(exc) as e:
        bnp.band_loss(*arrays[:4], ref_logp=arrays[4], **kwargs)
    messages["bandpo.np"] = str(e.value)
    status, messages["C ABI"] = c_abi_call(arrays, kwargs)
    assert status == C_STATUS[exc], messages
    assert len(set(messages.values())) == 1, messages


def test_the_messages_say_what_is_expected():
    logp, old, adv, mask, _ = make_batch(B=2, T=5, dtype=torch.float64)
    with pytest.raises(
        TypeError,
        match=r"^old_logp has dtype float32 but logp has float64: old_logp, advantages, "
        r"ref_logp, lower and upper must have logp's dtype, or float32 beside a bfloat16 or "
        r"float16 logp$",
    ):
        torch.ops.bandpo.band_loss(logp, old.float(), adv, mask)
    with pytest.raises(ValueError, match=r"^old_logp must have the shape of logp \[2, 5\]; got \[2, 3\]$"):
        bnp.band_loss(logp.numpy(), old[:, :3].numpy(), adv.numpy())
    with pytest.raises(
        ValueError, match=r"^kl_coef = 0.1 needs ref_logp \(the reference policy's log-probabilities\)$"
    ):
        bandpo.reference.band_loss(logp, old, adv, kl_coef=0.1)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_mixed_precision_computes_in_float32(half):
    """A half-precision logp beside float32 old_logp, advantages, ref_logp and mask weights (as trainers hold
    them): the float32 computation on logp's values, loss and gradient rounded to logp's dtype."""
    logp, old, adv, mask, ref = make_batch(B=3, T=33, seed=5, dtype=torch.float32)
    logp = logp.to(half)
    weights = mask.float() * 0.5
    kw = dict(agg="seq-mean-token-mean", kl_coef=0.05, dual_clip=3.0)
    x = logp.clone().requires_grad_()
    loss, metrics = torch.ops.bandpo.band_loss(x, old, adv, weights, ref_logp=ref, **kw)
    loss.backward()
    x32 = logp.float().requires_grad_()
    loss32, metrics32 = torch.ops.bandpo.band_loss(x32, old, adv, weights, ref_logp=ref, **kw)
    loss32.backward()
    assert loss.dtype == half and x.grad.dtype == half
    assert torch.equal(loss, loss32.to(half)) and torch.equal(metrics, metrics32)
    assert torch.equal(x.grad, x32.grad.to(half))
    if half == torch.float16:  # numpy has float16 (bfloat16 only through ml_dtypes)
        out = bnp.band_loss(logp.numpy(), old.numpy(), adv.numpy(), weights.numpy(), ref_logp=ref.numpy(), **kw)
        assert out.grad.dtype == np.float16
        np.testing.assert_array_equal(out.grad, x.grad.numpy())
        assert np.float32(out.loss) == loss32.item()
    # Half values beside float64 are not mixed precision: refused, naming both dtypes.
    with pytest.raises(TypeError, match=f"old_logp has dtype float64 but logp has {str(half)[6:]}"):
        torch.ops.bandpo.band_loss(logp, old.double(), adv, weights)


def test_a_float_mask_of_another_dtype_is_read_in_the_compute_dtype():
    logp, old, adv, mask, _ = make_batch(B=2, T=9, seed=1, dtype=torch.float32)
    w = mask.double() * 0.25
    a = torch.ops.bandpo.band_loss(logp, old, adv, w)
    b = torch.ops.bandpo.band_loss(logp, old, adv, w.float())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_option_errors_of_the_python_faces_name_the_option():
    logp, old, adv, mask, _ = make_batch(B=2, T=5)
    for face in (
        lambda **kw: bandpo.band_loss(logp, old, adv, mask, **kw),
        lambda **kw: bnp.band_loss(logp.numpy(), old.numpy(), adv.numpy(), mask.numpy(), **kw),
    ):
        with pytest.raises(
            TypeError,
            match=r"unknown option 'detla' \(did you mean 'delta'\?\); the options are "
            r"divergence, delta, eps_low",
        ):
            face(detla=0.1)
        with pytest.raises(TypeError, match=r"delta must be a number \(int or float\); got str '0.05'"):
            face(delta="0.05")
        with pytest.raises(TypeError, match=r"dual_clip must be a number \(int or float\) or None; got str"):
            face(dual_clip="3")
        with pytest.raises(TypeError, match="relax_high_p must be True or False; got int 1"):
            face(relax_high_p=1)
        with pytest.raises(TypeError, match="divergence must be a str; got int 0"):
            face(divergence=0)
    with pytest.raises(TypeError, match=r"BandConfig: unknown option 'detla' \(did you mean 'delta'\?\)"):
        bandpo.BandConfig(detla=0.1)
    with pytest.raises(TypeError, match=r"^logp must be a torch.Tensor; got numpy.ndarray \(numpy arrays: bandpo.np"):
        bandpo.band_loss(logp.numpy(), old, adv, mask)


def test_the_demo_names_a_bad_option_value():
    from bandpo.ppo.methods import parse_method

    with pytest.raises(ValueError, match=r"^delta in method 'band-kl:delta=oops' must be a number; got 'oops'$"):
        parse_method("band-kl:delta=oops")
    with pytest.raises(ValueError, match=r"dual_clip in method 'clip:dual_clip=x' must be a number \(or none\)"):
        parse_method("clip:dual_clip=x")
    assert parse_method("clip:dual_clip=none,ratio_max=inf")[1].ratio_max == math.inf
