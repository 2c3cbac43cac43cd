"""The op's per-token rules and its aggregation, in plain torch: one Python home for what code beside the op
needs to re-state (``bandpo.reference``, the PPO demo's clip statistics, the TRL trainer's metrics and KL term).

The constants come from ``bandpo/tables.h`` (the C++ kernels use the same rows); the rules are those of
``token_loss.h`` and ``aggregation.h``. Shapes: per-token tensors [B, T] (or any shape for ``token-mean``),
advantages broadcastable to them, ``weight`` a mask (bool) or per-token weights (0 = ignored).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._tables import AGGREGATIONS, CONSTANTS

LOG_PROB_TOLERANCE = CONSTANTS["LOG_PROB_TOLERANCE"]  # log-probs may exceed 0 by rounding only, up to this
LOG_RATIO_CLAMP = CONSTANTS["LOG_RATIO_CLAMP"]  # the ratio is exp of the log-ratio clamped to +-this
KL_LOG_RATIO_CLAMP = CONSTANTS["KL_LOG_RATIO_CLAMP"]  # k3: its log-ratio clamped to +-this ...
KL_ESTIMATE_CLAMP = CONSTANTS["KL_ESTIMATE_CLAMP"]  # ... and the estimate to +-this


def ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    """r = exp(clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)), as the op computes it."""
    return torch.exp(torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def clipped(r: Tensor, advantages: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """(at_upper, at_lower) bool: A > 0 and r above the upper bound, A < 0 and r below the lower bound (the
    op's clipfrac_upper / clipfrac_lower; such tokens get no policy gradient)."""
    return (advantages > 0) & (r > upper), (advantages < 0) & (r < lower)


def aggregation_denominator(weight: Tensor, agg: str) -> Tensor:
    """The op's denominator for `agg` without a normalizer (a 0-d float64 tensor): the total weight for
    token-mean, the number of rows for seq-mean-token-sum and seq-mean-token-mean, rows x columns for
    seq-mean-token-sum-norm."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {', '.join(map(repr, AGGREGATIONS))}; got {agg!r}")
    if agg == "token-mean":
        return weight.double().sum()
    if weight.dim() != 2:
        raise ValueError(f"agg={agg!r} needs 2-D [batch, tokens] inputs; got a weight of shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    n = rows * cols if agg == "seq-mean-token-sum-norm" else rows
    return torch.tensor(float(n), dtype=torch.float64, device=weight.device)


def aggregate(per_token: Tensor, weight: Tensor, agg: str, normalizer: Optional[float] = None) -> Tensor:
    """The op's aggregation of a per-token term: the weighted sum (for seq-mean-token-mean the sum over rows of
    each row's weighted mean) over `normalizer`, or over :func:`aggregation_denominator` when it is None;
    0 where that denominator is 0. Masked positions must already hold finite values (0 * NaN is NaN)."""
    w = weight.to(per_token.dtype)
    s = per_token * w
    if agg == "seq-mean-token-mean":
        row_weight = w.sum(-1)
        num = torch.where(row_weight != 0, s.sum(-1) / torch.where(row_weight != 0, row_weight, 1.0), 0.0).sum()
    else:
        num = s.sum()
    den = (
        aggregation_denominator(weight, agg) if normalizer is None else torch.as_tensor(normalizer, dtype=torch.float64)
    )
    den = den.to(device=num.device, dtype=num.dtype)
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), torch.zeros_like(num))
