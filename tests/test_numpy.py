"""bandpo.np (numpy arrays, torch-free core): the same results as torch.ops.bandpo on CPU, the same errors,
and it imports and runs where torch cannot be imported."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given

import bandpo
import bandpo.np as bnp
from conftest import loss_cases, make_batch

MASK_CASES = ["bool", "uint8", "float", "float-huge", "none"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("divergence", bandpo.DIVERGENCES)
def test_bounds_equal_the_op(dtype, divergence):
    _, old, *_ = make_batch(B=3, T=101, dtype=dtype)
    lo, hi = torch.ops.bandpo.band_bounds(old, divergence=divergence, delta=0.07, relax_high_p=True)
    nlo, nhi = bnp.band_bounds(old.numpy(), divergence=divergence, delta=0.07, relax_high_p=True)
    assert nlo.dtype == old.numpy().dtype and nlo.shape == tuple(old.shape)
    np.testing.assert_array_equal(nlo, lo.numpy())
    np.testing.assert_array_equal(nhi, hi.numpy())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("case", ["bool-mask", "float-mask", "per-row", "no-mask"])
def test_loss_and_gradient_equal_the_op(dtype, agg, case):
    logp, old, adv, mask, ref = make_batch(B=5, T=77, seed=2, dtype=dtype)
    if case == "float-mask":
        mask = mask.to(dtype) * 0.5
    if case == "per-row":
        adv = adv[:, 0].contiguous()
    if case == "no-mask":
        mask = None
    kw = dict(divergence="kl", agg=agg, dual_clip=3.0, kl_coef=0.1)
    x = logp.clone().requires_grad_()
    loss, metrics = torch.ops.bandpo.band_loss(x, old, adv, mask, ref_logp=ref, **kw)
    loss.backward()
    out = bnp.band_loss(
        logp.numpy(), old.numpy(), adv.numpy(), None if mask is None else mask.numpy(), ref_logp=ref.numpy(), **kw
    )
    assert np.float64(out.loss).astype(out.grad.dtype) == loss.detach().numpy()  # the op rounds to logp's dtype
    assert list(out.metrics.values()) == metrics.tolist() and list(out.metrics) == list(bandpo.METRIC_NAMES)
    np.testing.assert_array_equal(out.grad, x.grad.numpy())


@given(case=loss_cases([torch.float64, torch.float32, torch.float16, "mixed-f16"], MASK_CASES, max_tokens=200))
def test_hypothesis_numpy_face_equals_the_op(case):
    """bandpo.np over the C ABI (ctypes) gives the op's loss, metrics and gradient bit for bit on random
    batches: every dtype, mixed precision (float16 logp beside float32 companions), every mask kind, per-row
    advantages, a ref_logp, float64 weights up to 1e300."""
    logp, old, adv, mask, ref, kw = case
    x = logp.clone().requires_grad_()
    loss, metrics = torch.ops.bandpo.band_loss(x, old, adv, mask, ref_logp=ref, **kw)
    loss.backward()
    *arrays, ref_np = (None if t is None else t.numpy() for t in (logp, old, adv, mask, ref))
    out = bnp.band_loss(*arrays, ref_logp=ref_np, **kw)
    assert np.asarray(out.loss).astype(np.float64).astype(out.grad.dtype) == loss.detach().numpy()
    assert list(out.metrics.values()) == metrics.tolist()
    np.testing.assert_array_equal(out.grad, x.grad.numpy())


def test_errors_name_the_argument():
    logp, old, adv, mask, _ = (t.numpy() for t in make_batch(B=2, T=5))
    with pytest.raises(ValueError, match="delta"):
        bnp.band_bounds(old, delta=-1.0)
    with pytest.raises(TypeError, match="old_logp has dtype float32 but logp has float64"):
        bnp.band_loss(logp, old.astype(np.float32), adv, mask)
    with pytest.raises(TypeError, match="logp must be float32, float64, bfloat16 or float16; got int64"):
        bnp.band_loss(logp.astype(np.int64), old, adv, mask)
    with pytest.raises(ValueError, match="mask must have the shape of logp"):
        bnp.band_loss(logp, old, adv, mask[:, :3])
    with pytest.raises(ValueError, match="advantages must have the shape"):
        bnp.band_loss(logp, old, adv[:, :2], mask)
    bad = logp.copy()
    bad[1, 2] = math.nan
    mask[1, 2] = True
    with pytest.raises(ValueError, match=r"logp\[7\] is NaN"):
        bnp.band_loss(bad, old, adv, mask)
    with pytest.raises(ValueError, match="needs 2-D"):
        bnp.band_loss(logp.ravel(), old.ravel(), adv.ravel(), agg="seq-mean-token-mean")


def test_works_without_torch(tmp_path):
    """A process where `import torch` fails still imports bandpo.np and computes the same loss."""
    logp, old, adv, mask, _ = (t.numpy() for t in make_batch(B=2, T=9, seed=4))
    np.savez(tmp_path / "batch.npz", logp=logp, old=old, adv=adv, mask=mask)
    want = bnp.band_loss(logp, old, adv, mask).loss
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, bandpo, bandpo.np as bnp\n"
        "assert not hasattr(bandpo, 'band_loss')\n"
        f"b = np.load({str(tmp_path / 'batch.npz')!r})\n"
        "print(repr(bnp.band_loss(b['logp'], b['old'], b['adv'], b['mask']).loss))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.strip()) == want


@pytest.mark.parametrize("transform", [{}, {"logit_scale": 0.7, "softcap": 30.0, "temperature": 0.6}])
def test_logit_chunk_steps_equal_the_ops(transform):
    """bnp.logit_stats / logit_grad_ give the bits of torch.ops.bandpo.logit_chunk_stats / logit_chunk_grad_, on
    strided rows (a slice of a wider buffer) with an ignored row; the gradient from the outputs (one pass) and from
    the logits (three passes) agree."""
    rng = np.random.default_rng(3)
    wide = (rng.standard_normal((5, 67)) * 4).astype(np.float32)
    raw = wide[:, :61]
    target = np.array([0, 60, -100, 7, 33], dtype=np.int64)
    lp_ref, ent_ref = torch.ops.bandpo.logit_chunk_stats(torch.from_numpy(raw), torch.from_numpy(target), **transform)
    lp, ent = bnp.logit_stats(raw, target, **transform)
    assert lp.dtype == np.float32 and np.array_equal(lp, lp_ref.numpy()) and np.array_equal(ent, ent_ref.numpy())
    assert lp[2] == 0 and ent[2] == 0 and (lp <= 0).all()
    gl, ge = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    expected = torch.from_numpy(raw.copy())
    torch.ops.bandpo.logit_chunk_grad_(
        expected,
        torch.from_numpy(target),
        torch.from_numpy(gl),
        torch.from_numpy(ge),
        logp=lp_ref,
        entropy=ent_ref,
        **transform,
    )
    got = wide.copy()
    assert bnp.logit_grad_(got[:, :61], target, gl, ge, logp=lp, entropy=ent, **transform).base is got
    assert np.array_equal(got[:, :61], expected.numpy()) and np.array_equal(got[:, 61:], wide[:, 61:])
    three = raw.copy()
    bnp.logit_grad_(three, target, gl, ge, **transform)
    np.testing.assert_allclose(three, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_logit_chunk_step_errors_name_the_argument():
    raw, target = np.zeros((2, 8), dtype=np.float32), np.array([1, 2], dtype=np.int64)
    with pytest.raises(ValueError, match=r"target\[1\] = 8 is outside \[0, 8\)"):
        bnp.logit_stats(raw, np.array([1, 8]))
    with pytest.raises(TypeError, match="raw must be float32"):
        bnp.logit_stats(raw.astype(np.float64), target)
    with pytest.raises(TypeError, match="logit_stats: target must be int64, got int32"):
        bnp.logit_stats(raw, target.astype(np.int32))
    with pytest.raises(ValueError, match=r"target must be \[rows\] = \[2\], got shape \[1\]"):
        bnp.logit_stats(raw, np.array([1]))
    with pytest.raises(ValueError, match=r"raw must be 2-D \[rows, vocab\], got shape \[8\]"):
        bnp.logit_stats(raw[0], target[:1])
    # As the torch op: the statistics read a copy of a raw whose columns are apart; the in-place gradient refuses it.
    np.testing.assert_array_equal(bnp.logit_stats(np.asfortranarray(raw), target)[0], bnp.logit_stats(raw, target)[0])
    with pytest.raises(ValueError, match=r"raw's columns must be contiguous \(stride 1\)"):
        bnp.logit_grad_(np.asfortranarray(raw), target)
    with pytest.raises(ValueError, match="temperature"):
        bnp.logit_stats(raw, target, temperature=0.0)
    with pytest.raises(ValueError, match="logp and entropy come together"):
        bnp.logit_grad_(raw, target, logp=np.zeros(2, dtype=np.float32))
    with pytest.raises(TypeError, match="logit_grad_: grad_logp must be float32, got float64"):
        bnp.logit_grad_(raw, target, np.zeros(2))
    read_only = raw.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="raw must be writeable"):
        bnp.logit_grad_(read_only, target)


def test_module_docstring_example_runs():
    import re

    code = "\n".join(line[4:] for line in re.search(r"\n\n((?:    .*\n)+)", bnp.__doc__).group(1).splitlines())
    rng = np.random.default_rng(0)
    logp = -rng.random((2, 5)).astype(np.float32)
    scope = {
        "logp": logp,
        "old_logp": logp - 0.1,
        "advantages": np.array([1.0, -1.0], dtype=np.float32),
        "mask": np.ones((2, 5), dtype=bool),
        "logits_chunk": rng.standard_normal((3, 11)).astype(np.float32),
        "target": np.array([0, 5, 10]),
    }
    exec(compile(code, "bandpo/np.py", "exec"), scope)
    assert scope["upper"].shape == (2, 5) and scope["out"].grad.shape == (2, 5) and scope["entropy"].shape == (3,)
