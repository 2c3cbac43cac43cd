"""bandpo in JAX: the Band bounds and the fused BandPO loss as XLA FFI calls, under jax.jit, jax.grad and jax.vmap.

    import jax, jax.numpy as jnp
    import bandpo.jax as bj
    loss, metrics = bj.band_loss(logp, old_logp, advantages, mask)                 # Band-KL, delta 0.05
    grad = jax.grad(lambda x: bj.band_loss(x, old_logp, advantages, mask)[0])(logp)

The kernels are the core library's CPU kernels (the torch op's on the CPU, bit for bit), called by XLA through
the handlers of csrc/jax (libbandpo_jax.so, built against the FFI headers of the jaxlib present when the wheel
was built; the FFI's binary interface is stable across jaxlib releases). The gradient is the core's analytic
backward (band_loss_backward), through jax.custom_vjp; nothing N-sized is kept between forward and backward
beyond the inputs. Arguments, shapes, dtypes and options follow the torch op's rules and are checked when the
call is traced, by the same C ABI, with the same messages (TypeError / ValueError naming the argument). A bad
value at a valid position (NaN, a log-probability above 1e-6, an infinite advantage) is found when the call runs:
jax raises its runtime error with the core's message. Options are static (part of the traced call), except
``normalizer``, which may also be an array computed in the program: the global count of a data-parallel step,
a ``jax.lax.psum`` of the local counts inside ``shard_map`` (its range is then checked when the call runs).

Importing bandpo never imports jax; importing bandpo.jax needs jax and registers the handlers for the CPU and,
where the wheel has the CUDA kernels, for CUDA (csrc/jax/ffi_cuda.cpp: on XLA's stream, no host sync; a
``normalizer`` computed in the program is CPU-only). The CUDA handlers are compiled in CI but have not yet run on
a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _capi
from ._tables import METRIC_NAMES
from .config import BandConfig, resolve_config

_TARGETS = ("bandpo_band_bounds", "bandpo_band_loss", "bandpo_band_loss_backward")


def library_path() -> str:
    """Path of the handler library (beside libbandpo in the installed package)."""
    return os.path.join(os.path.dirname(_capi.library_path()), "libbandpo_jax.so")


@functools.cache
def _register() -> ctypes.CDLL:
    path = library_path()
    if not os.path.exists(path):
        raise ImportError(
            f"bandpo.jax: {path} is missing: this bandpo was built without jaxlib present, so it has no XLA FFI "
            "handlers (the published wheel has them; a source build needs jaxlib installed when it runs)"
        )
    lib = ctypes.CDLL(path)
    for name in _TARGETS:  # the handlers' symbols: bandpo_xla_* (the C ABI has functions named bandpo_*)
        symbol = name.replace("bandpo_", "bandpo_xla_", 1)
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
        if hasattr(lib, symbol + "_cuda"):  # a wheel built with the CUDA kernels: the same targets on CUDA
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol + "_cuda")), platform="CUDA")
    return lib


_register()


class BandLoss(NamedTuple):
    """Result of :func:`band_loss`: the loss (0-d, logp's dtype), the metrics by name (0-d float32 arrays of
    METRIC_NAMES) and the same metrics as one float32 [8] array."""

    loss: jax.Array
    metrics: dict
    metrics_tensor: jax.Array


def _attributes(values: dict, rows) -> dict:
    """Options as the handlers' attributes, by tables.h's rows: checked by the C ABI (TypeError / ValueError naming
    the option, as every face), then float64 numbers, bool flags and int32 choice codes."""
    struct = _capi.options(values)
    attrs = {}
    for row in rows:
        name, kind = _capi._text(row.name), _capi._text(row.type)
        value = getattr(struct, name)
        attrs[name] = (
            np.float64(value) if kind.startswith("float") else np.bool_(value) if kind == "bool" else np.int32(value)
        )
    return attrs


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
    attrs = _attributes(cfg.bound_kwargs(), [r for r in _capi.OPTION_ROWS if r.group == 0])
    (old_logp,), axes = _varying([jax.lax.stop_gradient(old_logp)])
    out = _result(old_logp.shape, old_logp.dtype, axes)
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
    attrs = _attributes(values, _capi.OPTION_ROWS)  # normalizer: the number, or NaN where computed / absent
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


def _varying(args: list) -> tuple:
    """Inside shard_map: the arguments made to vary over the same manual axes (those any of them varies over), and
    the type of one of them, whose mesh and axes the results take (they vary with the arguments); outside, the
    arguments and None."""

    def axes_of(x):
        return set(getattr(getattr(jax.typeof(x), "manual_axis_type", None), "varying", None) or ())

    axes = set().union(*(axes_of(x) for x in args))
    if not axes:
        return args, None
    args = [x if axes <= axes_of(x) else jax.lax.pcast(x, tuple(sorted(axes - axes_of(x))), to="varying") for x in args]
    return args, jax.typeof(args[0])


def _result(shape, dtype, like):
    """The result type: shape and dtype, and inside shard_map the manual axes of `like` (an argument's type)."""
    if like is None:
        return jax.ShapeDtypeStruct(shape, dtype)
    sharding = jax.sharding.NamedSharding(like.sharding.mesh, jax.sharding.PartitionSpec(*([None] * len(shape))))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding, manual_axis_type=like.manual_axis_type)


def _forward(*inputs):
    """The loss call on (logp, old_logp, advantages, mask, ref_logp, lower, upper, normalizer) and the key."""
    *buffers, key = inputs
    args, axes = _varying(buffers)
    logp = buffers[0]
    out = (_result((), logp.dtype, axes), _result((len(METRIC_NAMES),), jnp.float32, axes))
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
    args, axes = _varying([jnp.asarray(grad_loss, logp.dtype), *inputs])
    call = jax.ffi.ffi_call(
        "bandpo_band_loss_backward", _result(logp.shape, logp.dtype, axes), vmap_method="sequential"
    )
    grad = call(*args, **dict(key))
    return (grad,) + (None,) * (len(inputs) - 1)


_band_loss.defvjp(_band_loss_fwd, _band_loss_bwd)

__all__ = ["BandLoss", "band_bounds", "band_loss", "library_path"]
