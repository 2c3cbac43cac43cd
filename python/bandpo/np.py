"""bandpo on numpy arrays, without torch (JAX and numpy pipelines): the same CPU kernels as the torch op.

    import numpy as np, bandpo.np as bnp
    lower, upper = bnp.band_bounds(old_logp)                      # Band-KL, delta 0.05
    out = bnp.band_loss(logp, old_logp, advantages, mask)         # loss, metrics, grad (d loss / d logp)
    logp, entropy = bnp.logit_stats(logits_chunk, target)         # an lm_head chunk (your GEMM's logits)

Arrays: float32, float64, float16 (or ml_dtypes' bfloat16); old_logp, advantages, ref_logp, lower and upper of
logp's dtype, or float32 beside a half-precision logp; mask bool/uint8 or float weights. Shapes, options, aggregations and
errors are those of ``torch.ops.bandpo.band_loss`` (README.md), checked by the same code (the core library,
through its C ABI and ctypes: no compiled Python module): ``ValueError`` for bad values/shapes/options,
``TypeError`` for dtypes and option types. Results equal the torch op's on CPU, bit for bit.
"""

from __future__ import annotations

from ctypes import byref, c_double, c_float
from typing import NamedTuple, Optional

import numpy as np

from . import _capi
from .config import METRIC_NAMES, BandConfig, resolve_config


class NumpyBandLoss(NamedTuple):
    loss: float  # the aggregated loss, in double precision (the torch op rounds it to logp's dtype)
    metrics: dict  # METRIC_NAMES -> float
    grad: Optional[np.ndarray]  # d loss / d logp, logp's shape and dtype (None with with_grad=False)


def _numpy_dtype(code: int) -> np.dtype:
    return np.dtype(_capi.FLOAT_DTYPE_NAMES[code])  # (bfloat16 needs ml_dtypes, which registers it)


def _array(a, name: str) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except Exception as e:  # a torch tensor on a GPU, say
        raise TypeError(f"{name} must be a numpy array (or convertible to one); got {type(a).__name__}: {e}") from None


def _described(a: Optional[np.ndarray]):
    return None if a is None else (0, str(a.dtype), a.shape)


def band_bounds(
    old_logp: np.ndarray, config: Optional[BandConfig] = None, **overrides
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token ratio bounds (lower, upper), shaped and typed like ``old_logp`` (see bandpo.band_bounds)."""
    opts = _capi.options(resolve_config(config, overrides).bound_kwargs())
    old = np.ascontiguousarray(_array(old_logp, "old_logp"))
    lower, upper = np.empty_like(old), np.empty_like(old)
    keep: list = []
    desc = _capi.describe(old.ctypes.data, str(old.dtype), old.shape, keep)
    _capi.check(
        _capi.lib.bandpo_band_bounds_array(
            byref(desc), byref(opts), lower.ctypes.data_as(_capi.c_void_p), upper.ctypes.data_as(_capi.c_void_p)
        )
    )
    return lower, upper


def band_loss(
    logp: np.ndarray,
    old_logp: np.ndarray,
    advantages: np.ndarray,
    mask: Optional[np.ndarray] = None,
    config: Optional[BandConfig] = None,
    *,
    normalizer: Optional[float] = None,
    ref_logp: Optional[np.ndarray] = None,
    lower: Optional[np.ndarray] = None,
    upper: Optional[np.ndarray] = None,
    with_grad: bool = True,
    **overrides,
) -> NumpyBandLoss:
    """The BandPO loss, its metrics and its gradient w.r.t. logp (see bandpo.band_loss for the arguments, lower
    and upper included).

    Mixed precision as the torch op takes it: a float16 (or ml_dtypes bfloat16) logp beside float32 old_logp,
    advantages and ref_logp computes in float32; the gradient comes back in logp's dtype."""
    opts = _capi.options({**resolve_config(config, overrides).loss_kwargs(), "normalizer": normalizer})
    arrays = (logp, old_logp, advantages, mask, ref_logp, lower, upper)
    given = [None if a is None else _array(a, n) for a, n in zip(arrays, _capi.LOSS_ARRAY_NAMES)]
    layout = _capi.loss_layout([_described(a) for a in given], opts)
    compute = _numpy_dtype(layout.compute_dtype)
    # Contiguous, and in the compute dtype where the layout asks (bool masks as uint8 0/1 bytes: same layout).
    ready = [
        None if a is None else np.ascontiguousarray(a, dtype=compute if (layout.convert >> i) & 1 else None)
        for i, a in enumerate(given)
    ]
    ptr = [None if a is None else a.ctypes.data for a in ready]
    inputs = _capi.loss_inputs(layout, ptr)
    grad = np.empty(ready[0].shape, dtype=compute) if with_grad else None
    loss = c_double()
    metrics = (c_float * len(METRIC_NAMES))()
    _capi.check(
        _capi.lib.bandpo_band_loss(
            byref(inputs),
            byref(opts),
            byref(loss),
            metrics,
            None if grad is None else grad.ctypes.data_as(_capi.c_void_p),
        )
    )
    if grad is not None and grad.dtype != given[0].dtype:
        grad = grad.astype(given[0].dtype)
    return NumpyBandLoss(loss.value, dict(zip(METRIC_NAMES, (float(m) for m in metrics))), grad)


def _chunk(op: str, raw, target, writeable: bool):
    """raw and target checked by the core's rules (bandpo_logit_chunk_layout): (raw, target, chunk), target made
    contiguous and the chunk (bandpo_logit_chunk) pointing at it."""
    raw = _array(raw, "raw")
    if not writeable and raw.ndim == 2 and raw.shape[0] > 1 and raw.shape[1] > 1 and raw.strides[1] != raw.itemsize:
        raw = np.ascontiguousarray(raw)  # as the torch op: the statistics read a copy; the gradient writes in place
    target = np.ascontiguousarray(_array(target, "target"))
    keep: list = []
    raw_d = _capi.describe(raw.ctypes.data, str(raw.dtype), raw.shape, keep)
    target_d = _capi.describe(target.ctypes.data, str(target.dtype), target.shape, keep)
    item = raw.itemsize
    strides = [s // item if s % item == 0 else -1 for s in raw.strides] + [0, 0]  # -1: not a whole element apart
    chunk = _capi.LogitChunk()
    _capi.check(
        _capi.lib.bandpo_logit_chunk_layout(
            op.encode(), byref(raw_d), strides[0], strides[1], byref(target_d), byref(chunk)
        )
    )
    if writeable and not raw.flags.writeable:
        raise ValueError(f"{op}: raw must be writeable (its gradient is written in place)")
    return raw, target, chunk


_D = _capi.logit_options({})  # the defaults (tables.h)


def logit_stats(
    raw: np.ndarray,
    target: np.ndarray,
    *,
    ignore_index: int = _D.ignore_index,
    logit_scale: float = _D.logit_scale,
    softcap: float = _D.softcap,
    temperature: float = _D.temperature,
) -> tuple[np.ndarray, np.ndarray]:
    """Log-prob of each row's target and the row's entropy (nats, float32 [rows] each) from a chunk of raw logits
    ``raw`` (float32 [rows, vocab], rows may be strided, e.g. a slice of a wider buffer), as
    ``torch.ops.bandpo.logit_chunk_stats`` gives them: z = (logit_scale * raw, then softcap * tanh(. / softcap)
    when softcap > 0) / temperature; target [rows] int64 in [0, vocab) or ``ignore_index`` (that row gives 0).
    For an lm_head whose GEMM the caller runs chunk by chunk (docs/design.md; the C ABI's bandpo_logit_stats)."""
    opts = _capi.logit_options(
        {"ignore_index": ignore_index, "logit_scale": logit_scale, "softcap": softcap, "temperature": temperature}
    )
    raw, target, chunk = _chunk("logit_stats", raw, target, False)
    logp, entropy = np.empty(chunk.rows, np.float32), np.empty(chunk.rows, np.float32)
    _capi.check(
        _capi.lib.bandpo_logit_stats(raw.ctypes.data, byref(chunk), byref(opts), logp.ctypes.data, entropy.ctypes.data)
    )
    return logp, entropy


def logit_grad_(
    raw: np.ndarray,
    target: np.ndarray,
    grad_logp: Optional[np.ndarray] = None,
    grad_entropy: Optional[np.ndarray] = None,
    *,
    logp: Optional[np.ndarray] = None,
    entropy: Optional[np.ndarray] = None,
    ignore_index: int = _D.ignore_index,
    logit_scale: float = _D.logit_scale,
    softcap: float = _D.softcap,
    temperature: float = _D.temperature,
) -> np.ndarray:
    """The backward of :func:`logit_stats`, in place: overwrites ``raw`` with d loss / d raw given grad_logp and
    grad_entropy (float32 [rows] each, None for 0). logp and entropy: logit_stats's outputs for these rows (then
    each row is one pass over its logits), or both None. Returns ``raw``."""
    opts = _capi.logit_options(
        {"ignore_index": ignore_index, "logit_scale": logit_scale, "softcap": softcap, "temperature": temperature}
    )
    raw, target, chunk = _chunk("logit_grad_", raw, target, True)
    given = []
    for name, values in (
        ("grad_logp", grad_logp),
        ("grad_entropy", grad_entropy),
        ("logp", logp),
        ("entropy", entropy),
    ):
        if values is None:
            given.append(None)
            continue
        values = _array(values, name)
        keep: list = []
        desc = _capi.describe(0, str(values.dtype), values.shape, keep)
        _capi.check(_capi.lib.bandpo_check_row_values(b"logit_grad_", name.encode(), byref(desc), chunk.rows))
        given.append(np.ascontiguousarray(values))
    grads = _capi.LogitRowGrads(*(None if v is None else v.ctypes.data for v in given))
    _capi.check(_capi.lib.bandpo_logit_grad(raw.ctypes.data, byref(chunk), byref(opts), byref(grads)))
    return raw
