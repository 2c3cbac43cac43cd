"""torch.library.opcheck, torch.compile, determinism across thread counts."""

import pytest
import torch

import bandpo  # noqa: F401
from conftest import loss_options, make_batch


def loss_samples():
    logp, old, adv, mask, ref = make_batch(B=3, T=17, seed=1)
    float_mask = mask.double()
    yield (logp.requires_grad_(), old, adv, mask), dict()
    yield (
        (logp.detach().requires_grad_(), old, adv[:, 0], float_mask),
        dict(divergence="tv", agg="seq-mean-token-mean", dual_clip=3.0, ref_logp=ref, kl_coef=0.1, normalizer=5.0),
    )
    yield (
        (logp.detach().float().requires_grad_(), old.float(), adv.float(), None),
        dict(divergence="chi2", relax_high_p=True),
    )


@pytest.mark.parametrize("i", range(3))
def test_opcheck_band_loss(i):
    args, kwargs = list(loss_samples())[i]
    torch.library.opcheck(torch.ops.bandpo.band_loss.default, args, kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_opcheck_band_bounds(dtype):
    _, old, *_ = make_batch(B=2, T=9, dtype=dtype)
    torch.library.opcheck(torch.ops.bandpo.band_bounds.default, (old,), dict(divergence="kl", delta=0.1))


def test_opcheck_band_loss_backward():
    logp, old, adv, mask, ref = make_batch(B=2, T=9)
    kw = loss_options(kl_coef=0.1, kl_estimator="k2")
    torch.library.opcheck(
        torch.ops.bandpo.band_loss_backward.default,
        (torch.tensor(1.0, dtype=torch.float64), logp, old, adv, mask, ref),
        kw,
    )


def test_compile_fullgraph_dynamic_matches_eager():
    torch._dynamo.reset()

    def step(logp, old, adv, mask, ref):
        loss, metrics = torch.ops.bandpo.band_loss(
            logp, old, adv, mask, agg="seq-mean-token-mean", dual_clip=3.0, ref_logp=ref, kl_coef=0.05
        )
        return loss * 2.0, metrics

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for seed, T in [(0, 33), (1, 50)]:  # two shapes: the dynamic graph is reused
        logp, old, adv, mask, ref = make_batch(B=4, T=T, seed=seed, dtype=torch.float32)
        x1 = logp.clone().requires_grad_()
        x2 = logp.clone().requires_grad_()
        l1, m1 = step(x1, old, adv, mask, ref)
        l1.backward()
        l2, m2 = compiled(x2, old, adv, mask, ref)
        l2.backward()
        torch.testing.assert_close(l2, l1)
        torch.testing.assert_close(m2, m1)
        torch.testing.assert_close(x2.grad, x1.grad)

    compiled_bounds = torch.compile(lambda lp: torch.ops.bandpo.band_bounds(lp, divergence="kl"), fullgraph=True)
    lp = make_batch(B=2, T=7)[1]
    torch.testing.assert_close(compiled_bounds(lp), torch.ops.bandpo.band_bounds(lp, divergence="kl"))


def test_results_bitwise_identical_for_any_thread_count():
    logp, old, adv, mask, ref = make_batch(B=7, T=20000, seed=9, dtype=torch.float32)
    logp2, old2, adv2, mask2, _ = make_batch(B=3000, T=37, seed=9, dtype=torch.float32)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs = []
            for args, agg in [
                ((logp, old, adv, mask), "seq-mean-token-mean"),
                ((logp2, old2, adv2, mask2), "token-mean"),
            ]:
                x = args[0].clone().requires_grad_()
                loss, metrics = torch.ops.bandpo.band_loss(x, *args[1:], agg=agg, ref_logp=None)
                loss.backward()
                outs += [loss.detach(), metrics, x.grad]
            outs += list(torch.ops.bandpo.band_bounds(old))
            results.append(outs)
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_ops_work_in_a_forked_child():
    """A DataLoader-style fork after the thread pool started must not hang the child."""
    import os
    import signal
    import time

    import numpy as np

    old = make_batch(B=4, T=50000, dtype=torch.float32)[1]
    expected = [t.numpy() for t in torch.ops.bandpo.band_bounds(old)]  # starts the pool in the parent
    pid = os.fork()
    if pid == 0:  # child: compare with numpy, since torch's own OpenMP regions are not fork-safe
        ok = False
        try:
            ok = all(np.array_equal(a.numpy(), b) for a, b in zip(torch.ops.bandpo.band_bounds(old), expected))
        finally:
            os._exit(0 if ok else 1)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WEXITSTATUS(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("band_bounds hung in a forked child")
