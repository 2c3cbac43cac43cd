"""The Python face of the ops: BandConfig in, named metrics out."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ._ops import call_op
from .config import METRIC_NAMES, BandConfig, resolve_config


def _check_tensors(**tensors) -> None:
    """TypeError naming an argument that is not a tensor (a numpy array, say: torch's own error prints it whole)."""
    for name, t in tensors.items():
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor; got {type(t).__module__}.{type(t).__name__} (numpy "
                "arrays: bandpo.np has the same functions, or convert with torch.from_numpy)"
            )


class BandLoss(NamedTuple):
    """Result of :func:`band_loss`.

    loss: 0-d tensor in logp's dtype (differentiable w.r.t. logp).
    metrics: dict from METRIC_NAMES to 0-d float32 tensors (no host sync is made to build it):
        pg_clipfrac (verl's), clipfrac_upper (A > 0, r above the upper bound), clipfrac_lower (A < 0, r below
        the lower bound), dual_clipfrac, ppo_kl (mean old_logp - logp), ratio_mean, ref_kl (mean KL estimate
        to ref_logp), pg_loss (the policy-gradient part of the loss).
    metrics_tensor: the same values as one float32 tensor of shape [8], in METRIC_NAMES order.
    """

    loss: Tensor
    metrics: dict
    metrics_tensor: Tensor


def band_bounds(old_logp: Tensor, config: Optional[BandConfig] = None, **overrides) -> tuple[Tensor, Tensor]:
    """Per-token ratio bounds (lower, upper), shaped and typed like ``old_logp``.

    Args:
        old_logp: log-probabilities of the sampled tokens under the old policy (<= 0), any shape, float32,
            float64, bfloat16 or float16. Values up to 1e-6 above 0 count as 0; NaN or larger values give NaN.
        config: the options (default ``BandConfig()``: Band-KL, delta 0.05, ratio_max 10); keyword overrides
            replace single fields, e.g. ``band_bounds(lp, delta=0.1)``.

    Returns lower in [0, 1] and upper in [1, ratio_max].
    """
    _check_tensors(old_logp=old_logp)
    cfg = resolve_config(config, overrides)
    return call_op(torch.ops.bandpo.band_bounds, old_logp, **cfg.bound_kwargs())


def band_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Optional[Tensor] = None,
    config: Optional[BandConfig] = None,
    *,
    normalizer: Optional[float] = None,
    ref_logp: Optional[Tensor] = None,
    lower: Optional[Tensor] = None,
    upper: Optional[Tensor] = None,
    **overrides,
) -> BandLoss:
    """The BandPO (clipped-surrogate) loss with per-token Band bounds, fused forward and backward.

    Args:
        logp: new-policy log-probabilities of the sampled tokens, [B, T] (or any shape for token-mean).
        old_logp: old-policy log-probabilities, same shape; the bounds come from these (no gradient).
        advantages: same shape as logp, or one per sequence ([B] or [B, 1]) for 2-D logp.
        mask: bool, or float weights (read in the dtype the math runs in), same shape; 0 = padding (may hold
            NaN/inf elsewhere). old_logp, advantages and ref_logp: logp's dtype, or float32 beside a bfloat16 /
            float16 logp (mixed precision: computed in float32, loss and gradient in logp's dtype).
        config: the options (default ``BandConfig()``); keyword overrides replace single fields.
        normalizer: replaces the aggregation's denominator (sum(mask), B or B*T): a global token or
            sequence count for data-parallel or gradient-accumulation use, in [1e-6, 1e18] (default None).
        ref_logp: reference-policy log-probabilities for the KL penalty (``kl_coef``), same shape.
        lower, upper: per-token ratio bounds of your own, both or neither, shaped and typed as old_logp, used
            instead of the divergence's (``divergence``, ``delta``, ``eps_*`` then play no part): lower in
            [0, 1] and upper in [1, ratio_max] at valid positions. relax_high_p, ratio_max and dual_clip apply to
            them as to the divergence's, so the bounds ``band_bounds`` returns give the same loss and gradient as
            passing none. Data, like old_logp: no gradient flows to them (default None).

    Raises ValueError for NaN at valid positions, a log-probability (logp, old_logp, ref_logp) above 1e-6,
    an infinite advantage or a bound outside its interval there (CPU; CUDA gives a NaN loss unless input checks
    are on), bad shapes or options; TypeError for dtypes. The exact formulas and the option ranges: docs/design.md.
    """
    _check_tensors(
        logp=logp, old_logp=old_logp, advantages=advantages, mask=mask, ref_logp=ref_logp, lower=lower, upper=upper
    )
    cfg = resolve_config(config, overrides)
    loss, metrics = call_op(
        torch.ops.bandpo.band_loss,
        logp,
        old_logp,
        advantages,
        mask,
        normalizer=normalizer,
        ref_logp=ref_logp,
        lower=lower,
        upper=upper,
        **cfg.loss_kwargs(),
    )
    return BandLoss(loss, dict(zip(METRIC_NAMES, metrics.unbind())), metrics)
