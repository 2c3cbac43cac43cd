"""bandpo.jax.linear_logprob_entropy (the lm_head's chunk kernels as XLA FFI calls) against the torch op on the
same values, and its float64 path against jax's own gradient checks: outputs, gradients, chunks, options, targets
of every integer width, jit, vmap, and the torch op's errors."""

import numpy as np
import pytest
import torch

import bandpo
from conftest import jax_gpu, require_package

jax = require_package("jax")
jax.config.update("jax_enable_x64", True)  # the float64 path (explicit dtypes everywhere else)
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import bandpo.jax as bj  # noqa: E402

OPTIONS = [{}, {"softcap": 3.0, "temperature": 0.7}, {"logit_scale": 0.5, "ignore_index": 7}]


def head(n=37, hidden=16, vocab=50, seed=0, dtype=np.float32, ignore_index=-100):
    g = np.random.default_rng(seed)
    h = g.standard_normal((n, hidden)).astype(dtype)
    w = g.standard_normal((vocab, hidden)).astype(dtype)
    b = g.standard_normal(vocab).astype(dtype)
    t = g.integers(0, vocab, n)
    t[::5] = ignore_index
    return h, w, b, t


def torch_head(h, w, b, t, options, chunk_size=0):
    """The torch op's outputs and gradients of sum(logp * c1) + sum(entropy * c2)."""
    th, tw = torch.tensor(h, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    logp, ent = bandpo.linear_logprob_entropy(th, tw, torch.tensor(t), tb, chunk_size=chunk_size, **options)
    c1, c2 = weights(len(t))
    (logp @ torch.tensor(c1) + ent @ torch.tensor(c2)).backward()
    return logp.detach().numpy(), ent.detach().numpy(), th.grad.numpy(), tw.grad.numpy(), tb


def weights(n):
    return np.linspace(-1, 1, n).astype(np.float32), np.linspace(0.5, -0.3, n).astype(np.float32)


def jax_objective(t, options, chunk_size=0):
    c1, c2 = weights(len(t))

    def f(h, w, b):
        logp, ent = bj.linear_logprob_entropy(h, w, t, b, chunk_size=chunk_size, **options)
        return jnp.dot(logp, c1.astype(logp.dtype)) + jnp.dot(ent, c2.astype(ent.dtype))

    return f


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("chunk_size", [0, 5, 37])
@pytest.mark.parametrize("with_bias", [False, True])
def test_outputs_and_gradients_equal_the_torch_op(options, chunk_size, with_bias):
    h, w, b, t = head(ignore_index=options.get("ignore_index", -100))
    b = b if with_bias else None
    want_logp, want_ent, want_dh, want_dw, tb = torch_head(h, w, b, t, options, chunk_size)
    logp, ent = jax.jit(lambda h, w, b: bj.linear_logprob_entropy(h, w, t, b, chunk_size=chunk_size, **options))(
        h, w, b
    )
    assert logp.dtype == ent.dtype == jnp.float32
    # the same chunk kernel on logits from two GEMMs (XLA's, torch's): equal to their rounding
    np.testing.assert_allclose(np.asarray(logp), want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-5, atol=1e-5)
    ignored = t == options.get("ignore_index", -100)
    assert np.all(np.asarray(logp)[ignored] == 0) and np.all(np.asarray(ent)[ignored] == 0)
    argnums = (0, 1, 2) if with_bias else (0, 1)
    grads = jax.jit(jax.grad(jax_objective(jnp.asarray(t), options, chunk_size), argnums=argnums))(h, w, b)
    np.testing.assert_allclose(np.asarray(grads[0]), want_dh, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grads[1]), want_dw, rtol=1e-4, atol=1e-5)
    if with_bias:
        np.testing.assert_allclose(np.asarray(grads[2]), tb.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int16, jnp.int32, jnp.int64, jnp.uint8, jnp.uint32])
def test_targets_of_every_integer_width(dtype):
    h, w, _, t = head(vocab=100)
    t = np.where(t < 0, 99, t)
    want = bj.linear_logprob_entropy(h, w, jnp.asarray(t, jnp.int64))
    got = bj.linear_logprob_entropy(h, w, jnp.asarray(t, dtype))
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    # negative ids (ignore_index) survive the widening of a signed target
    if jnp.issubdtype(dtype, jnp.signedinteger):
        t[3] = -100
        assert float(bj.linear_logprob_entropy(h, w, jnp.asarray(t, dtype))[0][3]) == 0.0


def test_float64_path_matches_the_kernels_and_passes_check_grads():
    h, w, b, t = head(n=9, hidden=6, vocab=11, dtype=np.float64)
    t = np.where(t >= 11, 3, t)
    opts = {"softcap": 2.0, "temperature": 1.3}
    logp64, ent64 = bj.linear_logprob_entropy(h, w, t, b, **opts)
    assert logp64.dtype == jnp.float64
    logp32, ent32 = bj.linear_logprob_entropy(*(x.astype(np.float32) for x in (h, w)), t, b.astype(np.float32), **opts)
    np.testing.assert_allclose(np.asarray(logp32), np.asarray(logp64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ent32), np.asarray(ent64), rtol=1e-5, atol=1e-6)
    check_grads(jax_objective(jnp.asarray(t), opts), (h, w, b), order=1, modes=["rev"])


def test_bfloat16_inputs_compute_in_float32():
    h, w, b, t = head()
    bf = [jnp.asarray(x).astype(jnp.bfloat16) for x in (h, w, b)]
    logp, ent = bj.linear_logprob_entropy(bf[0], bf[1], t, bf[2])
    want = bj.linear_logprob_entropy(
        *(np.asarray(x.astype(jnp.float32)) for x in bf[:2]), t, np.asarray(bf[2], np.float32)
    )
    assert logp.dtype == jnp.float32  # the products of bfloat16 values are exact in float32: only the sums' order
    assert all(np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip((logp, ent), want))
    grads = jax.grad(jax_objective(jnp.asarray(t), {}), argnums=(0, 1, 2))(*bf)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3


def test_vmap_equals_a_loop_and_jit_traces_once():
    h, w, _, t = head()
    hs = np.stack([h, 2 * h, -h])
    traces = []

    def f(h):
        traces.append(1)
        return bj.linear_logprob_entropy(h, w, t, chunk_size=8)

    batched = jax.jit(jax.vmap(f))(hs)
    for i in range(3):
        one = bj.linear_logprob_entropy(hs[i], w, t, chunk_size=8)
        assert all(np.allclose(a[i], b, rtol=1e-6, atol=1e-6) for a, b in zip(batched, one))
    g = jax.jit(f)
    traces.clear()
    for k in range(3):
        g(h + k)
    assert len(traces) == 1


def test_empty_batch():
    _, w, _, _ = head()
    logp, ent = bj.linear_logprob_entropy(np.zeros((0, 16), np.float32), w, np.zeros(0, np.int32))
    assert logp.shape == ent.shape == (0,)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: {**a, "hidden": a["hidden"][0]}, ValueError, r"hidden must be 2-D \[tokens, hidden_size\]"),
        (lambda a: {**a, "weight": a["weight"][:, :3]}, ValueError, r"weight must be \[vocab, hidden_size\]"),
        (lambda a: {**a, "target": a["target"][:3]}, ValueError, r"target must be 1-D \[tokens\] = \[37\]"),
        (lambda a: {**a, "target": a["target"].astype(np.float32)}, ValueError, "target must be an integer array"),
        (lambda a: {**a, "hidden": a["hidden"].astype(np.int32)}, ValueError, "hidden must be float32"),
        (lambda a: {**a, "bias": a["bias"][:3]}, ValueError, r"bias must be \[vocab\] = \[50\]"),
        (lambda a: {**a, "hidden": [[1.0]]}, TypeError, "hidden must be a jax or numpy array, got list"),
        (lambda a: {**a, "temperature": 0.0}, ValueError, "temperature"),
        (lambda a: {**a, "softcap": -1.0}, ValueError, "softcap"),
        (lambda a: {**a, "chunk_size": -1}, ValueError, "chunk_size must be >= 0"),
    ],
)
def test_errors_name_the_argument(change, error, match):
    h, w, b, t = head()
    args = change({"hidden": h, "weight": w, "target": t, "bias": b})
    with pytest.raises(error, match=match):
        bj.linear_logprob_entropy(**args)


def test_errors_say_what_the_torch_op_says():
    h, w, b, t = head()
    for bad in ({"temperature": -2.0}, {"logit_scale": 0.0}):
        with pytest.raises(ValueError) as want:
            bandpo.linear_logprob_entropy(torch.tensor(h), torch.tensor(w), torch.tensor(t), **bad)
        with pytest.raises(ValueError) as got:
            bj.linear_logprob_entropy(h, w, t, **bad)
        assert str(got.value) == str(want.value)


def test_a_target_outside_the_vocabulary_fails_when_the_call_runs():
    h, w, _, t = head()
    t[4] = 50
    with pytest.raises(Exception, match=r"target\[4\] = 50 is outside \[0, 50\)"):
        jax.block_until_ready(bj.linear_logprob_entropy(h, w, t))


def test_docstring_example_runs():
    import doctest

    import bandpo.jax.lm_head as module

    results = doctest.testmod(module, verbose=False)
    assert results.attempted >= 4 and results.failed == 0


@pytest.mark.skipif(jax_gpu() is None, reason="needs jax with a CUDA GPU")
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cuda_handlers_match_the_cpu(options, dtype):
    # the CUDA handlers (ffi_cuda.cpp: bandpo_logit_stats, bandpo_logit_grad) against the CPU ones on the same
    # values, a chunk boundary inside the batch and bias included: outputs and the three gradients
    h, w, b, t = head(n=300, hidden=64, vocab=1000, ignore_index=options.get("ignore_index", -100))
    inputs = [jnp.asarray(x).astype(dtype) for x in (h, w, b)]
    objective = jax.jit(jax.value_and_grad(jax_objective(jnp.asarray(t), options, chunk_size=128), argnums=(0, 1, 2)))
    results = []
    for device in (jax.devices("cpu")[0], jax_gpu()):
        on = [jax.device_put(x, device) for x in inputs]
        logp, ent = bj.linear_logprob_entropy(on[0], on[1], jax.device_put(t, device), on[2], chunk_size=128, **options)
        value, grads = objective(*on)
        results.append([np.asarray(x.astype(jnp.float32)) for x in (logp, ent, value, *grads)])
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == jnp.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, **tol)
