"""Steady state: many forward+backward calls leave the process's resident memory flat (no per-call leak in
the op, its autograd kernel, the thread pool or the numpy face)."""

import os

import numpy as np
import pytest
import torch

import bandpo
import bandpo.np as bnp
from conftest import make_batch

CALLS = 10_000
# Measured growth after the warm-up is 0; a leak of 100 bytes per call would be ~1 MiB. (torch 2.13's
# to<std::string> leaked ~48 bytes per string option: ~340 bytes per forward+backward, 3.3 MiB here.)
BOUND_BYTES = 1 << 20


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")


def _grows(step) -> int:
    for _ in range(CALLS // 10):  # warm up: caches, pools and arenas reach their size
        step()
    before = resident_bytes()
    for _ in range(CALLS):
        step()
    return resident_bytes() - before


def test_torch_forward_backward_is_flat():
    logp, old, adv, mask, ref = make_batch(B=8, T=64, dtype=torch.float32)
    x = logp.clone().requires_grad_()
    config = bandpo.BandConfig(dual_clip=3.0, kl_coef=0.01)

    def step():
        out = bandpo.band_loss(x, old, adv, mask, config, ref_logp=ref)
        out.loss.backward()
        x.grad = None

    growth = _grows(step)
    assert growth < BOUND_BYTES, f"resident memory grew by {growth / 2**20:.1f} MiB over {CALLS} calls"


def test_numpy_forward_backward_is_flat():
    logp, old, adv, mask, _ = (t.numpy() for t in make_batch(B=8, T=64, dtype=torch.float32))

    def step():
        bnp.band_loss(logp, old, adv, mask, with_grad=True, divergence="kl")

    growth = _grows(step)
    assert growth < BOUND_BYTES, f"resident memory grew by {growth / 2**20:.1f} MiB over {CALLS} calls"


def test_refused_calls_do_not_leak():
    logp, old, adv, mask, _ = make_batch(B=8, T=64, dtype=torch.float32)
    bad = logp.clone()
    bad[0, 0] = 0.5  # refused (a probability above 1): the error path must free what it took

    def step():
        with pytest.raises(ValueError):
            torch.ops.bandpo.band_loss(bad, old, adv, mask)
        with pytest.raises(ValueError):
            bnp.band_loss(bad.numpy(), old.numpy(), adv.numpy(), np.asarray(mask), delta=-1.0)

    growth = _grows(step)
    assert growth < BOUND_BYTES, f"resident memory grew by {growth / 2**20:.1f} MiB over {CALLS} calls"
