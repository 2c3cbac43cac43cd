"""bandpo.jax (XLA FFI handlers over the core, csrc/jax) against the torch op on the same values: the bounds, the
loss, its metrics and its gradient bit for bit on the CPU, under jit, grad and vmap, with the torch op's errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bandpo
from conftest import jax_gpu, loss_cases, make_batch, require_package

MASK_CASES = ["bool", "uint8", "float", "none"]

jax = require_package("jax")  # CI installs it (bandpo[jax]); elsewhere the module skips without it
jax.config.update("jax_enable_x64", True)  # float64 cases (explicit dtypes everywhere else)
import jax.numpy as jnp  # noqa: E402

import bandpo.jax as bj  # noqa: E402

TORCH_TO_JAX = {torch.float32: jnp.float32, torch.float64: jnp.float64, torch.bfloat16: jnp.bfloat16}


def to_jax(t):
    if t is None:
        return None
    if t.dtype == torch.bfloat16:
        return jnp.asarray(t.float().numpy()).astype(jnp.bfloat16)
    return jnp.asarray(t.detach().numpy())


def to_numpy(x):
    x = np.asarray(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x)
    return x


def same(a, b):
    """Bit for bit (NaN where NaN), a jax array against a torch tensor."""
    want = b.detach().float().numpy() if b.dtype == torch.bfloat16 else b.detach().numpy()
    return np.array_equal(to_numpy(a), want, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("divergence", bandpo.DIVERGENCES)
def test_bounds_equal_the_torch_op(dtype, divergence):
    _, old, *_ = make_batch(B=3, T=41, seed=2, dtype=dtype)
    kw = {"divergence": divergence, "delta": 0.07, "relax_high_p": divergence == "kl"}
    lo, hi = bj.band_bounds(to_jax(old), **kw)
    want_lo, want_hi = bandpo.band_bounds(old, **kw)
    assert lo.dtype == TORCH_TO_JAX[dtype] and lo.shape == old.shape
    assert same(lo, want_lo) and same(hi, want_hi)


CASES = [
    ({}, "bool", False),
    ({"agg": "seq-mean-token-mean", "dual_clip": 3.0}, "float", True),
    ({"agg": "seq-mean-token-sum", "kl_coef": 0.05, "kl_estimator": "k1"}, "bool", False),
    ({"agg": "seq-mean-token-sum-norm", "divergence": "tv", "normalizer": 11.0}, None, True),
    ({"divergence": "chi2", "kl_coef": 0.1}, "float", False),
    ({"divergence": "dcpo", "relax_high_p": True, "ratio_max": 3.0}, "bool", True),
    ({"divergence": "clip", "eps_high": 0.28}, "bool", False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("options,mask_kind,per_row", CASES)
def test_loss_metrics_and_gradient_equal_the_torch_op(dtype, options, mask_kind, per_row):
    logp, old, adv, mask, ref = make_batch(B=4, T=37, seed=5, dtype=dtype)
    options = dict(options)
    if per_row:
        adv = adv[:, 0].contiguous()
    if mask_kind == "float":
        mask = mask.to(dtype) * 0.5
    elif mask_kind is None:
        mask = None
    ref = ref if options.get("kl_coef") else None
    x = logp.clone().requires_grad_()
    want = bandpo.band_loss(x, old, adv, mask, ref_logp=ref, **options)
    want.loss.backward()
    args = [to_jax(t) for t in (logp, old, adv, mask, ref)]

    def loss(z):
        out = bj.band_loss(z, *args[1:4], ref_logp=args[4], **options)
        return out.loss, out

    (value, out), grad = jax.value_and_grad(loss, has_aux=True)(args[0])
    assert value.dtype == TORCH_TO_JAX[dtype]
    assert same(value, want.loss.detach()) and same(out.metrics_tensor, want.metrics_tensor)
    assert sorted(out.metrics) == sorted(bandpo.METRIC_NAMES)
    assert same(grad, x.grad)


def test_mixed_precision_as_the_torch_op():
    # a bfloat16 logp beside float32 companions: computed in float32, loss and gradient in bfloat16
    logp, old, adv, mask, _ = make_batch(B=3, T=29, seed=8, dtype=torch.float32)
    x = logp.to(torch.bfloat16).requires_grad_()
    want = bandpo.band_loss(x, old, adv, mask)
    want.loss.backward()
    z = to_jax(logp.to(torch.bfloat16))
    value, grad = jax.value_and_grad(lambda v: bj.band_loss(v, to_jax(old), to_jax(adv), to_jax(mask)).loss)(z)
    assert value.dtype == jnp.bfloat16 and grad.dtype == jnp.bfloat16
    assert same(value, want.loss.detach()) and same(grad, x.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_given_bounds_as_the_torch_op(dtype):
    logp, old, adv, mask, _ = make_batch(B=3, T=29, seed=9, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    lower = torch.rand(old.shape, generator=g, dtype=torch.float64).to(dtype)
    upper = (1 + 2 * torch.rand(old.shape, generator=g, dtype=torch.float64)).to(dtype)
    x = logp.clone().requires_grad_()
    want = bandpo.band_loss(x, old, adv, mask, lower=lower, upper=upper, dual_clip=3.0)
    want.loss.backward()
    args = [to_jax(t) for t in (old, adv, mask)]
    bounds = dict(lower=to_jax(lower), upper=to_jax(upper), dual_clip=3.0)
    value, grad = jax.value_and_grad(lambda v: bj.band_loss(v, *args, **bounds).loss)(to_jax(logp))
    assert same(value, want.loss.detach()) and same(grad, x.grad)
    with pytest.raises(ValueError, match="lower and upper come together"):
        bj.band_loss(to_jax(logp), *args, lower=to_jax(lower))


def test_jit_traces_once_per_shape():
    logp, old, adv, mask, _ = (to_jax(t) for t in make_batch(B=2, T=16, seed=1))
    traces = []

    @jax.jit
    def step(z):
        traces.append(1)
        return jax.grad(lambda v: bj.band_loss(v, old, adv, mask).loss)(z)

    first = step(logp)
    for k in range(3):
        assert np.array_equal(np.asarray(step(logp + 0.0 * k)), np.asarray(first))
    assert len(traces) == 1


def test_vmap_over_a_leading_axis_is_the_loop():
    batches = [make_batch(B=2, T=13, seed=s) for s in range(3)]
    stack = [jnp.stack([to_jax(b[i]) for b in batches]) for i in range(4)]

    def loss(logp, old, adv, mask):
        return bj.band_loss(logp, old, adv, mask, agg="seq-mean-token-mean").loss

    batched = jax.vmap(loss)(*stack)
    grads = jax.vmap(jax.grad(loss))(*stack)
    for i, b in enumerate(batches):
        args = [to_jax(t) for t in b[:4]]
        assert np.array_equal(np.asarray(batched[i]), np.asarray(loss(*args)))
        assert np.array_equal(np.asarray(grads[i]), np.asarray(jax.grad(loss)(*args)))


def test_gradient_checks_in_float64():
    # a smooth case: ratios inside the bands (no clip edges within the finite differences' reach)
    from jax.test_util import check_grads

    g = np.random.default_rng(3)
    old = jnp.asarray(np.log(g.uniform(0.2, 0.8, (3, 7))))
    logp = old + 1e-3 * jnp.asarray(g.standard_normal((3, 7)))
    adv = jnp.asarray(g.standard_normal((3, 7)))
    ref = old + 0.01

    def loss(z):
        return bj.band_loss(z, old, adv, ref_logp=ref, kl_coef=0.1, kl_estimator="k2").loss

    check_grads(loss, (logp,), order=1, modes=("rev",), eps=1e-6)


def test_errors_are_the_torch_ops_at_trace_time():
    logp, old, adv, mask, _ = make_batch(B=2, T=5, seed=1)
    cases = [
        ((logp, old[:, :3], adv, mask), {}, ValueError),
        ((logp, old.to(torch.int64), adv, mask), {}, TypeError),
        ((logp, old, adv, mask), {"delta": -1.0}, ValueError),
        ((logp, old, adv, mask), {"agg": "token-sum"}, ValueError),
        ((logp, old, adv, mask), {"kl_coef": 0.1}, ValueError),  # no ref_logp
    ]
    for args, kw, kind in cases:
        with pytest.raises(kind) as torch_error:
            bandpo.band_loss(*args, **kw)
        jargs = [to_jax(t) if t.dtype != torch.int64 else jnp.asarray(t.numpy()) for t in args]
        with pytest.raises(kind) as jax_error:
            jax.jit(lambda *a, kw=kw: bj.band_loss(*a, **kw).loss)(*jargs)
        assert str(jax_error.value) == str(torch_error.value)
    with pytest.raises(TypeError, match="old_logp must be float32"):
        bj.band_bounds(jnp.zeros(3, jnp.int32))


def test_bad_values_raise_when_the_call_runs():
    logp, old, adv, mask, _ = (to_jax(t) for t in make_batch(B=2, T=5, seed=1))
    bad = logp.at[1, 2].set(jnp.nan)
    with pytest.raises(Exception, match=r"logp\[7\] is NaN"):
        bj.band_loss(bad, old, adv, jnp.ones_like(mask)).loss.block_until_ready()


def test_importing_bandpo_does_not_import_jax():
    code = "import sys, bandpo, bandpo.np; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


SHARD_MAP = r"""
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
jax.config.update("jax_enable_x64", True)
import bandpo.jax as bj
assert len(jax.devices()) == 4
g = np.random.default_rng(0)
B, T = 8, 33
old = jnp.asarray(np.log(g.uniform(0.01, 0.99, (B, T))))
logp = jnp.minimum(old + 0.3 * jnp.asarray(g.standard_normal((B, T))), 0.0)
adv = jnp.asarray(g.standard_normal(B))
mask = jnp.asarray(g.random((B, T)) > 0.2)
mesh = Mesh(np.array(jax.devices()), ("dp",))
shard_map = getattr(jax, "shard_map", None) or __import__("jax.experimental.shard_map", fromlist=["x"]).shard_map
for agg in ("token-mean", "seq-mean-token-mean"):
    def local(z, o, a, m):
        # the global denominator: the valid tokens (token-mean) or the sequences (seq-mean-*) of every shard
        count = m.sum(dtype=z.dtype) if agg == "token-mean" else jnp.asarray(m.shape[0], z.dtype)
        n = jax.lax.psum(count, "dp")
        loss = bj.band_loss(z, o, a, m, agg=agg, normalizer=n).loss
        return jax.lax.psum(loss, "dp")
    def sharded(z):
        f = shard_map(local, mesh=mesh, in_specs=(P("dp"), P("dp"), P("dp"), P("dp")), out_specs=P())
        return f(z, old, adv, mask)
    loss, grad = jax.jit(jax.value_and_grad(sharded))(logp)
    want, want_grad = jax.value_and_grad(lambda z: bj.band_loss(z, old, adv, mask, agg=agg).loss)(logp)
    np.testing.assert_allclose(np.asarray(loss), np.asarray(want), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-13, atol=0)
print("ok")
"""


def test_shard_map_with_a_psum_normalizer_is_the_one_device_call():
    # data parallel over 4 host devices: each shard's loss divided by the psum of the counts, summed by psum, gives
    # the one-device loss and gradient (to the order of the sums)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", SHARD_MAP], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_a_normalizer_out_of_range_computed_in_the_program_is_refused_when_it_runs():
    logp, old, adv, mask, _ = (to_jax(t) for t in make_batch(B=2, T=5, seed=1))
    f = jax.jit(lambda z, n: bj.band_loss(z, old, adv, mask, normalizer=n).loss)
    assert np.isfinite(float(f(logp, jnp.float32(7.0))))
    with pytest.raises(Exception, match="normalizer must be"):
        f(logp, jnp.float32(0.0)).block_until_ready()


def test_a_ppo_loop_in_jax_learns_through_the_op():
    # examples/jax_ppo.py: GRPO-style PPO on a contextual bandit whose right actions start rare; the loss is
    # bandpo.jax.band_loss under jit and grad, 4 optimiser steps per batch
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    try:
        import jax_ppo
    finally:
        sys.path.pop(0)
    rewards = jax_ppo.train(steps=40, divergence="kl", log=lambda line: None)
    assert sum(rewards[:10]) / 10 < 0.05 and sum(rewards[-10:]) / 10 > 0.3, rewards


try:
    from hypothesis import given
except ImportError:  # a test dependency (ci/setup.sh installs it)
    given = None

if given is not None:

    @given(case=loss_cases([torch.float64, torch.float32, torch.bfloat16, "mixed-bf16"], MASK_CASES, max_tokens=150))
    def test_hypothesis_jax_face_equals_the_op(case):
        """bandpo.jax gives the op's loss, metrics and gradient bit for bit on random batches: every dtype, mixed
        precision, every mask kind, per-row advantages, a ref_logp, a normalizer, dual clip."""
        logp, old, adv, mask, ref, kw = case
        x = logp.clone().requires_grad_()
        want = bandpo.band_loss(x, old, adv, mask, ref_logp=ref, **kw)
        want.loss.backward()
        args = [to_jax(t) for t in (old, adv)]
        jmask, jref = to_jax(mask), to_jax(ref)

        def loss(z):
            out = bj.band_loss(z, *args, jmask, ref_logp=jref, **kw)
            return out.loss, out.metrics_tensor

        (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(to_jax(logp))
        assert same(value, want.loss.detach()) and same(metrics, want.metrics_tensor) and same(grad, x.grad)


@pytest.mark.skipif(jax_gpu() is None, reason="needs jax with a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("options", [{}, {"agg": "seq-mean-token-mean", "dual_clip": 3.0, "normalizer": 9.0}])
def test_cuda_handlers_match_the_cpu(dtype, options):
    # the CUDA handlers (csrc/jax/ffi_cuda.cpp) against the CPU ones on the same values: bounds, loss, gradient
    logp, old, adv, mask, _ = make_batch(B=4, T=300, seed=4, dtype=dtype)
    args = [to_jax(t) for t in (logp, old, adv, mask)]
    gpu = jax_gpu()
    results = []
    for device in (jax.devices("cpu")[0], gpu):
        on = [jax.device_put(a, device) for a in args]
        f = jax.jit(jax.value_and_grad(lambda z, *rest: bj.band_loss(z, *rest, **options).loss))
        value, grad = f(*on)
        lo, hi = bj.band_bounds(on[1])
        results.append([np.asarray(to_numpy(x)) for x in (value, grad, lo, hi)])
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype != torch.bfloat16 else {"rtol": 2e-2, "atol": 1e-3}
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, **tol)
