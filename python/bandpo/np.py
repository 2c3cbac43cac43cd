"""bandpo on numpy arrays, without torch (JAX and numpy pipelines): the same CPU kernels as the torch op.

    import numpy as np, bandpo.np as bnp
    lower, upper = bnp.band_bounds(old_logp)                      # Band-KL, delta 0.05
    out = bnp.band_loss(logp, old_logp, advantages, mask)         # loss, metrics, grad (d loss / d logp)
    logp, entropy = bnp.logit_stats(logits_chunk, target)         # an lm_head chunk (your GEMM's logits)

Arrays: float32, float64 or float16 (all value arrays one dtype); mask bool/uint8 or float weights.
Shapes, options, aggregations and errors are those of ``torch.ops.bandpo.band_loss`` (README.md);
``ValueError`` for bad values/shapes/options, ``TypeError`` for dtypes. Results equal the torch op's on CPU.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import _np
from .config import METRIC_NAMES, BandConfig, resolve_config


class NumpyBandLoss(NamedTuple):
    loss: float  # the aggregated loss, in double precision (the torch op rounds it to logp's dtype)
    metrics: dict  # METRIC_NAMES -> float
    grad: Optional[np.ndarray]  # d loss / d logp, logp's shape and dtype (None with with_grad=False)


def band_bounds(old_logp: np.ndarray, config: Optional[BandConfig] = None, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """Per-token ratio bounds (lower, upper), shaped and typed like ``old_logp`` (see bandpo.band_bounds)."""
    return _np.band_bounds(np.asarray(old_logp), **resolve_config(config, overrides).bound_kwargs())


def band_loss(logp: np.ndarray, old_logp: np.ndarray, advantages: np.ndarray, mask: Optional[np.ndarray] = None,
              config: Optional[BandConfig] = None, *, normalizer: Optional[float] = None,
              ref_logp: Optional[np.ndarray] = None, with_grad: bool = True, **overrides) -> NumpyBandLoss:
    """The BandPO loss, its metrics and its gradient w.r.t. logp (see bandpo.band_loss for the arguments)."""
    loss, metrics, grad = _np.band_loss(
        np.asarray(logp), np.asarray(old_logp), np.asarray(advantages), None if mask is None else np.asarray(mask),
        None if ref_logp is None else np.asarray(ref_logp), with_grad, normalizer=normalizer,
        **resolve_config(config, overrides).loss_kwargs())
    return NumpyBandLoss(loss, dict(zip(METRIC_NAMES, metrics.tolist())), grad)


def logit_stats(raw: np.ndarray, target: np.ndarray, *, ignore_index: int = -100, logit_scale: float = 1.0,
                softcap: float = 0.0, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Log-prob of each row's target and the row's entropy (nats, float32 [rows] each) from a chunk of raw logits
    ``raw`` (float32 [rows, vocab], rows may be strided, e.g. a slice of a wider buffer), as
    ``torch.ops.bandpo.logit_chunk_stats`` gives them: z = (logit_scale * raw, then softcap * tanh(. / softcap)
    when softcap > 0) / temperature; target [rows] int64 in [0, vocab) or ``ignore_index`` (that row gives 0).
    For an lm_head whose GEMM the caller runs chunk by chunk (see README, the C ABI's bandpo_logit_stats)."""
    return _np.logit_stats(raw, target, int(ignore_index), float(logit_scale), float(softcap), float(temperature))


def logit_grad_(raw: np.ndarray, target: np.ndarray, grad_logp: Optional[np.ndarray] = None,
                grad_entropy: Optional[np.ndarray] = None, *, logp: Optional[np.ndarray] = None,
                entropy: Optional[np.ndarray] = None, ignore_index: int = -100, logit_scale: float = 1.0,
                softcap: float = 0.0, temperature: float = 1.0) -> np.ndarray:
    """The backward of :func:`logit_stats`, in place: overwrites ``raw`` with d loss / d raw given grad_logp and
    grad_entropy (float32 [rows] each, None for 0). logp and entropy: logit_stats's outputs for these rows (then
    each row is one pass over its logits), or both None. Returns ``raw``."""
    _np.logit_grad_(raw, target, grad_logp, grad_entropy, logp, entropy, int(ignore_index), float(logit_scale),
                    float(softcap), float(temperature))
    return raw
