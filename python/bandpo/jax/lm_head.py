"""linear_logprob_entropy in JAX: per-token log-probs and entropy from hidden states, over chunks of tokens, without
the [tokens, vocab] logits (bandpo.lm_head's op, as XLA computes it).

Each chunk's raw logits are one XLA GEMM (float32 accumulation and output), reduced to the per-token statistics by
the core's chunk kernel (the handler bandpo_logit_stats, csrc/jax) and dropped; the backward (jax.custom_vjp) makes
them again and turns them into their gradient in the same buffer (bandpo_logit_grad, aliased to its input), then
into d hidden, d weight and d bias by three GEMMs. The chunks run in a lax.map / lax.scan, so the memory beyond
inputs, outputs and gradients is a few chunk-sized float32 buffers. float64 inputs take jax.numpy's own log-softmax
in float64 (differentiated by jax: for jax.test_util.check_grads), as the torch op's float64 path takes torch's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import _capi
from ..lm_head.checks import DEFAULT_CHUNK_BYTES, LogitOptions, check_head_shapes, check_options, int64
from ._ffi import attributes, result, varying

_D = LogitOptions()
_FLOATS = tuple(np.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64))


def linear_logprob_entropy(
    hidden,
    weight,
    target,
    bias=None,
    *,
    temperature: float = _D.temperature,
    softcap: float = _D.softcap,
    logit_scale: float = _D.logit_scale,
    ignore_index: int = _D.ignore_index,
    chunk_size: int = 0,
):
    """Log-prob of each target token and the entropy of each position's distribution, from hidden states: as
    :func:`bandpo.linear_logprob_entropy` (the same arguments, options, defaults and messages).

    Args:
        hidden: [N, H] float32, bfloat16 or float16 (float64 with x64 enabled: computed by jax.numpy in float64).
        weight: [V, H] the lm_head weight, hidden's dtype.
        target: [N] integer token ids in [0, V), or ``ignore_index`` (int32 is fine: jax's default without x64).
        bias: optional [V], hidden's dtype.
        temperature, softcap, logit_scale: the transform z = (logit_scale raw, then softcap tanh(. / softcap) when
            softcap > 0) / temperature; defaults 1, 0 (none), 1.
        ignore_index: targets equal to it give logp = entropy = 0 and no gradient (default -100).
        chunk_size: tokens per chunk; 0 (default) picks about 64 MiB of float32 logits per chunk.

    Returns:
        (logp, entropy): float32 [N] each (float64 for float64 inputs), in nats. Differentiable w.r.t. hidden,
        weight and bias (jax.grad, through the core's analytic chunk gradient). A target outside [0, V) that is
        not ignore_index is an error when the call runs on the CPU, NaN on CUDA and in float64.

    >>> import jax, jax.numpy as jnp, bandpo.jax as bj
    >>> h, w = jax.random.normal(jax.random.key(0), (6, 16)), jax.random.normal(jax.random.key(1), (50, 16))
    >>> logp, ent = bj.linear_logprob_entropy(h, w, jnp.array([1, 2, 3, 4, 5, -100]))
    >>> ref = jax.nn.log_softmax(h @ w.T)[jnp.arange(5), jnp.array([1, 2, 3, 4, 5])]
    >>> bool(jnp.allclose(logp[:5], ref, atol=1e-5)), float(logp[5]), float(ent[5])
    (True, 0.0, 0.0)
    """
    hidden, weight, target = (_array(n, x) for n, x in (("hidden", hidden), ("weight", weight), ("target", target)))
    bias = None if bias is None else _array("bias", bias)
    check_head_shapes(hidden, weight, target, bias, _FLOATS)
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise ValueError(f"target must be an integer array, got {target.dtype}")
    o = LogitOptions.of(ignore_index, logit_scale, softcap, temperature)
    check_options(o, int64("chunk_size", chunk_size))
    if hidden.dtype == jnp.float64:
        return _plain(hidden, weight, bias, target, o)
    n, vocab = hidden.shape[0], weight.shape[0]
    rows = chunk_size or DEFAULT_CHUNK_BYTES["cpu"] // (4 * vocab)
    rows = max(1, min(rows, n))
    key = (rows, tuple(sorted(attributes(_capi.logit_options(o._asdict()), _capi.LOGIT_OPTION_ROWS).items())))
    return _head(hidden, weight, bias, _target_words(target, o.ignore_index, rows), key)


def _array(name: str, x):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be a jax or numpy array, got {type(x).__name__}")
    return jnp.asarray(x)


def _target_words(target, ignore_index: int, rows: int):
    """The targets as their int64 bits in uint32 pairs [C, rows, 2] (little-endian: the handlers read int64 [rows];
    without x64 jax has no int64 arrays), padded with ignore_index to C whole chunks."""
    if target.dtype.itemsize == 8:
        words = jax.lax.bitcast_convert_type(target, jnp.uint32)  # [N, 2]
    else:
        low = target.astype(jnp.int32 if jnp.issubdtype(target.dtype, jnp.signedinteger) else jnp.uint32)
        high = jnp.where(low < 0, jnp.uint32(0xFFFFFFFF), jnp.uint32(0))  # the sign, extended
        words = jnp.stack([jax.lax.bitcast_convert_type(low, jnp.uint32), high], axis=-1)
    pad = -target.shape[0] % rows
    fill = jnp.asarray(np.array([ignore_index], np.int64).view(np.uint32))
    words = jnp.concatenate([words, jnp.broadcast_to(fill, (pad, 2))]) if pad else words
    return words.reshape(-1, rows, 2)


def _chunked(x, rows: int):
    """[N, ...] as [C, rows, ...], padded with zeros to C whole chunks."""
    pad = -x.shape[0] % rows
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x
    return x.reshape(-1, rows, *x.shape[1:])


def _raw(h, weight, bias):
    """A chunk's raw logits [rows, V] in float32: h @ weight.T (+ bias)."""
    raw = jax.lax.dot_general(h, weight, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return raw if bias is None else raw + bias.astype(jnp.float32)


def _stats(raw, words, key):
    (raw, words), axes = varying([raw, words])
    out = result((raw.shape[0],), jnp.float32, axes)
    call = jax.ffi.ffi_call("bandpo_logit_stats", (out, out), vmap_method="sequential")
    return call(raw, words, **dict(key[1]))


def _forward(hidden, weight, bias, words, key):
    n, rows = hidden.shape[0], key[0]
    logp, entropy = jax.lax.map(lambda a: _stats(_raw(a[0], weight, bias), a[1], key), (_chunked(hidden, rows), words))
    return logp.reshape(-1)[:n], entropy.reshape(-1)[:n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _head(hidden, weight, bias, words, key):
    return _forward(hidden, weight, bias, words, key)


def _head_fwd(hidden, weight, bias, words, key):
    logp, entropy = _forward(hidden, weight, bias, words, key)
    return (logp, entropy), (hidden, weight, bias, words, logp, entropy)


def _head_bwd(key, residuals, cotangents):
    hidden, weight, bias, words, logp, entropy = residuals
    rows = key[0]
    per_row = [_chunked(jnp.asarray(x, jnp.float32), rows) for x in (*cotangents, logp, entropy)]

    def chunk(sums, a):
        h, w, *values = a
        raw = _raw(h, weight, bias)
        args, axes = varying([raw, w, *values])
        call = jax.ffi.ffi_call(
            "bandpo_logit_grad",
            result(raw.shape, jnp.float32, axes),
            vmap_method="sequential",
            input_output_aliases={0: 0},
        )
        d_raw = call(*args, **dict(key[1]))
        d = d_raw.astype(weight.dtype)  # the GEMMs in the head's dtype, accumulated in float32
        d_hidden = jax.lax.dot_general(d, weight, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        d_weight = jax.lax.dot_general(d, h, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return (sums[0] + d_weight, sums[1] + d_raw.sum(0)), d_hidden.astype(hidden.dtype)

    zeros = (jnp.zeros(weight.shape, jnp.float32), jnp.zeros(weight.shape[0], jnp.float32))
    (d_weight, d_bias), d_hidden = jax.lax.scan(chunk, zeros, (_chunked(hidden, rows), words, *per_row))
    d_bias = None if bias is None else d_bias.astype(bias.dtype)
    return d_hidden.reshape(-1, hidden.shape[1])[: hidden.shape[0]], d_weight.astype(weight.dtype), d_bias, None


_head.defvjp(_head_fwd, _head_bwd)


def _plain(hidden, weight, bias, target, o: LogitOptions):
    """The float64 path: the same transform and statistics as jax.numpy operations (jax differentiates them)."""
    raw = hidden @ weight.T + (0.0 if bias is None else bias)
    y = o.logit_scale * raw
    z = (o.softcap * jnp.tanh(y / o.softcap) if o.softcap > 0 else y) / o.temperature
    log_p = jax.nn.log_softmax(z, axis=1)
    ignored = target == o.ignore_index
    index = jnp.where(ignored, 0, target).astype(jnp.int32)[:, None]
    picked = jnp.take_along_axis(log_p, index, axis=1, mode="fill", fill_value=jnp.nan)[:, 0]
    p = jnp.exp(log_p)
    entropy = -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=1)
    return jnp.where(ignored, 0.0, jnp.minimum(picked, 0.0)), jnp.where(ignored, 0.0, entropy)
