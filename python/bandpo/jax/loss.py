"""band_bounds and band_loss in JAX: the core's CPU (or CUDA) kernels as XLA FFI calls, the gradient through the
core's analytic backward (jax.custom_vjp). The package's docstring says how they behave."""

from __future__ import annotations

import ctypes
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import _capi
from .._tables import METRIC_NAMES
from ..config import BandConfig, resolve_config
from ._ffi import attributes, result, varying


class BandLoss(NamedTuple):
    """Result of :func:`band_loss`: the loss (0-d, logp's dtype), the metrics by name (0-d float32 arrays of
    METRIC_NAMES) and the same metrics as one float32 [8] array."""

    loss: jax.Array
    metrics: dict
    metrics_tensor: jax.Array


def _describe(name: str, x) -> Optional[tuple]:
    """(address, dtype name, shape) as _capi.loss_layout takes an array; None for an absent one."""
    if x is None:
        return None
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be a jax or numpy array, got {type(x).__name__}")
    return (0, str(np.dtype(x.dtype)), tuple(int(d) for d in x.shape))


def band_bounds(old_logp, config: Optional[BandConfig] = None, **overrides):
    """Per-token ratio bounds (lower, upper), shaped and typed like ``old_logp`` (float32, float64, bfloat16 or
    float16): as :func:`bandpo.band_bounds`. No gradient flows through the bounds."""
    cfg = resolve_config(config, overrides)
    old_logp = jnp.asarray(old_logp)
    # the core's dtype rule, on an empty description of the array (no data is read)
    keep: list = []
    empty = _capi.describe(0, str(np.dtype(old_logp.dtype)), (0,), keep)
    _capi.check(_capi.lib.bandpo_band_bounds_array(ctypes.byref(empty), ctypes.byref(_capi.options({})), None, None))
    attrs = attributes(_capi.options(cfg.bound_kwargs()), [r for r in _capi.OPTION_ROWS if r.group == 0])
    (old_logp,), axes = varying([jax.lax.stop_gradient(old_logp)])
    out = result(old_logp.shape, old_logp.dtype, axes)
    call = jax.ffi.ffi_call("bandpo_band_bounds", (out, out), vmap_method="broadcast_all")
    return tuple(call(old_logp, **attrs))


def band_loss(
    logp,
    old_logp,
    advantages,
    mask=None,
    config: Optional[BandConfig] = None,
    *,
    normalizer: Optional[float] = None,
    ref_logp=None,
    lower=None,
    upper=None,
    **overrides,
) -> BandLoss:
    """The BandPO loss and its metrics, as :func:`bandpo.band_loss` gives them: the same arguments, shapes,
    dtypes, options and aggregations (per-row advantages [B] or [B, 1], bool or float masks, mixed precision), the
    same values bit for bit on the CPU. Differentiable w.r.t. ``logp`` (jax.grad, through the core's analytic
    backward); the other inputs carry no gradient. ``normalizer``: None, a number, or a 0-d array computed in the
    program (e.g. a psum of the mask counts over the data-parallel axis). ``lower``, ``upper``: bounds of your own
    instead of the divergence's, as :func:`bandpo.band_loss` takes them."""
    cfg = resolve_config(config, overrides)
    traced = normalizer is not None and not isinstance(normalizer, (int, float, np.number))
    values = {**cfg.loss_kwargs(), "normalizer": None if traced else normalizer}
    opts = _capi.options(values)
    arrays = [logp, old_logp, advantages, mask, ref_logp, lower, upper]
    arrays = [None if a is None else jnp.asarray(a) for a in arrays]
    layout = _capi.loss_layout([_describe(n, a) for n, a in zip(_capi.LOSS_ARRAY_NAMES, arrays)], opts)
    compute = jnp.dtype(_capi.FLOAT_DTYPE_NAMES[layout.compute_dtype])
    converted = [a if a is None or not (layout.convert >> i) & 1 else a.astype(compute) for i, a in enumerate(arrays)]
    attrs = attributes(opts, _capi.OPTION_ROWS)  # normalizer: the number, or NaN where computed / absent
    attrs["normalizer_in_program"] = np.bool_(traced)
    attrs["has_mask"] = np.bool_(mask is not None)
    attrs["has_ref_logp"] = np.bool_(ref_logp is not None)
    attrs["has_bounds"] = np.bool_(lower is not None)
    placeholder = jnp.zeros((0,), compute)
    args = [placeholder if a is None else a for a in converted]
    # the normalizer as a one-value buffer (NaN: none): static or computed, the same call
    norm = jax.lax.stop_gradient(jnp.asarray(normalizer if traced else opts.normalizer, jnp.result_type(float)))
    if norm.size != 1:
        raise ValueError(f"normalizer must be one number, got shape {tuple(norm.shape)}")
    key = tuple(sorted(attrs.items()))
    loss, metrics = _band_loss(*args, norm.reshape(()), key)
    loss = loss.astype(arrays[0].dtype)
    return BandLoss(loss, dict(zip(METRIC_NAMES, metrics)), metrics)


def _forward(*inputs):
    """The loss call on (logp, old_logp, advantages, mask, ref_logp, lower, upper, normalizer) and the key."""
    *buffers, key = inputs
    args, axes = varying(buffers)
    logp = buffers[0]
    out = (result((), logp.dtype, axes), result((len(METRIC_NAMES),), jnp.float32, axes))
    call = jax.ffi.ffi_call("bandpo_band_loss", out, vmap_method="sequential")
    return tuple(call(*args, **dict(key)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _band_loss(logp, old_logp, advantages, mask, ref_logp, lower, upper, normalizer, key):
    return _forward(logp, old_logp, advantages, mask, ref_logp, lower, upper, normalizer, key)


def _band_loss_fwd(logp, old_logp, advantages, mask, ref_logp, lower, upper, normalizer, key):
    inputs = (logp, old_logp, advantages, mask, ref_logp, lower, upper, normalizer)
    return _forward(*inputs, key), inputs


def _band_loss_bwd(key, inputs, cotangents):
    grad_loss, _ = cotangents
    logp = inputs[0]
    args, axes = varying([jnp.asarray(grad_loss, logp.dtype), *inputs])
    call = jax.ffi.ffi_call("bandpo_band_loss_backward", result(logp.shape, logp.dtype, axes), vmap_method="sequential")
    grad = call(*args, **dict(key))
    return (grad,) + (None,) * (len(inputs) - 1)


_band_loss.defvjp(_band_loss_fwd, _band_loss_bwd)

__all__ = ["BandLoss", "band_bounds", "band_loss"]
