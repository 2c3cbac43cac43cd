"""What bandpo.jax's modules share: the handler library (csrc/jax, libbandpo_jax.so) registered as XLA FFI targets
for the CPU and, where the wheel has the CUDA kernels, for CUDA; options as the handlers' attributes; and the types
of results inside shard_map."""

from __future__ import annotations

import ctypes
import functools
import os

import jax
import numpy as np

from .. import _capi

_TARGETS = (
    "bandpo_band_bounds",
    "bandpo_band_loss",
    "bandpo_band_loss_backward",
    "bandpo_logit_stats",
    "bandpo_logit_grad",
)


def library_path() -> str:
    """Path of the handler library (beside libbandpo in the installed package)."""
    return os.path.join(os.path.dirname(_capi.library_path()), "libbandpo_jax.so")


@functools.cache
def register() -> ctypes.CDLL:
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


register()


def attributes(struct, rows) -> dict:
    """Options as the handlers' attributes, by tables.h's rows, from the C struct that _capi filled and checked
    (TypeError / ValueError naming the option, as every face): float64 numbers, bool flags, int64 integers and
    int32 choice codes, the C++ fields' types (ffi_common.h options_from)."""
    attrs = {}
    for row in rows:
        name, kind = _capi._text(row.name), _capi._text(row.type)
        value = getattr(struct, name)
        if kind.startswith("float"):
            attrs[name] = np.float64(value)
        elif kind == "bool":
            attrs[name] = np.bool_(value)
        else:
            attrs[name] = np.int64(value) if kind == "int" else np.int32(value)
    return attrs


def varying(args: list) -> tuple:
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


def result(shape, dtype, like):
    """The result type: shape and dtype, and inside shard_map the manual axes of `like` (an argument's type)."""
    if like is None:
        return jax.ShapeDtypeStruct(shape, dtype)
    sharding = jax.sharding.NamedSharding(like.sharding.mesh, jax.sharding.PartitionSpec(*([None] * len(shape))))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding, manual_axis_type=like.manual_axis_type)
