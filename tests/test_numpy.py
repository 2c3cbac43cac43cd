"""bandpo.np (numpy arrays, torch-free core): the same results as torch.ops.bandpo on CPU, the same errors,
and it imports and runs where torch cannot be imported."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bandpo
import bandpo.np as bnp
from conftest import make_batch


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
    out = bnp.band_loss(logp.numpy(), old.numpy(), adv.numpy(), None if mask is None else mask.numpy(),
                        ref_logp=ref.numpy(), **kw)
    assert np.float64(out.loss).astype(out.grad.dtype) == loss.detach().numpy()  # the op rounds to logp's dtype
    assert list(out.metrics.values()) == metrics.tolist() and list(out.metrics) == list(bandpo.METRIC_NAMES)
    np.testing.assert_array_equal(out.grad, x.grad.numpy())


def test_errors_name_the_argument():
    logp, old, adv, mask, _ = (t.numpy() for t in make_batch(B=2, T=5))
    with pytest.raises(ValueError, match="delta"):
        bnp.band_bounds(old, delta=-1.0)
    with pytest.raises(TypeError, match="old_logp has dtype float32 but logp has float64"):
        bnp.band_loss(logp, old.astype(np.float32), adv, mask)
    with pytest.raises(TypeError, match="logp must be float32, float64 or float16"):
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
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.strip()) == want
