"""BandConfig: the options of band_bounds / band_loss in one dataclass."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

DIVERGENCES = ("kl", "tv", "chi2", "clip")
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
# The metrics of band_loss, in the order of its metrics tensor.
METRIC_NAMES = ("pg_clipfrac", "clipfrac_upper", "clipfrac_lower", "dual_clipfrac", "ppo_kl", "ratio_mean", "ref_kl",
                "pg_loss")


@dataclasses.dataclass(frozen=True)
class BandConfig:
    """Options shared by :func:`bandpo.band_bounds` and :func:`bandpo.band_loss`.

    Attributes:
        divergence: ``"kl"`` (KL(pi_old || pi_new), the paper's default), ``"tv"``, ``"chi2"``, or ``"clip"``
            (the fixed PPO interval ``[1 - eps_low, 1 + eps_high]``; PPO with 0.2/0.2, Clip-Higher with 0.2/0.28).
        delta: trust-region radius of the divergence (nats for KL), > 0. Default 0.05.
        eps_low, eps_high: the fixed interval, used by ``"clip"`` and by ``relax_high_p``.
        relax_high_p: unite the band with the fixed interval (never tighter than PPO).
        ratio_max: cap on the upper ratio bound, >= 1; ``math.inf`` for none. Default 10.
        dual_clip: dual-clip constant c > 1 for negative advantages (loss at most -A c); None = off.
        agg: loss aggregation, one of ``AGGREGATIONS`` (see :func:`bandpo.band_loss`).
        kl_coef: coefficient of the per-token KL penalty to ``ref_logp`` (0 = off).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (verl's low_var_kl).
    """

    divergence: str = "kl"
    delta: float = 0.05
    eps_low: float = 0.2
    eps_high: float = 0.28
    relax_high_p: bool = False
    ratio_max: float = 10.0
    dual_clip: Optional[float] = None
    agg: str = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}; got {self.divergence!r}")
        if not (math.isfinite(self.delta) and self.delta > 0):
            raise ValueError(f"delta must be a finite number > 0; got {self.delta}")
        if not (0.0 <= self.eps_low <= 1.0):
            raise ValueError(f"eps_low must be in [0, 1]; got {self.eps_low}")
        if not (math.isfinite(self.eps_high) and self.eps_high >= 0):
            raise ValueError(f"eps_high must be a finite number >= 0; got {self.eps_high}")
        if not self.ratio_max >= 1:
            raise ValueError(f"ratio_max must be >= 1 (inf allowed); got {self.ratio_max}")
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ValueError(f"dual_clip must be > 1 (or None to turn it off); got {self.dual_clip}")
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"agg must be one of {AGGREGATIONS}; got {self.agg!r}")
        if not math.isfinite(self.kl_coef):
            raise ValueError(f"kl_coef must be finite; got {self.kl_coef}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}; got {self.kl_estimator!r}")

    @classmethod
    def clip(cls, eps_low: float = 0.2, eps_high: float = 0.2, **kwargs: Any) -> "BandConfig":
        """PPO's fixed clip (eps_high = 0.28 gives Clip-Higher)."""
        return cls(divergence="clip", eps_low=eps_low, eps_high=eps_high, **kwargs)

    def bound_kwargs(self) -> dict:
        """Keyword arguments of ``torch.ops.bandpo.band_bounds``."""
        return dict(divergence=self.divergence, delta=self.delta, eps_low=self.eps_low, eps_high=self.eps_high,
                    relax_high_p=self.relax_high_p, ratio_max=self.ratio_max)

    def loss_kwargs(self) -> dict:
        """Keyword arguments of ``torch.ops.bandpo.band_loss`` (without normalizer and ref_logp)."""
        return dict(self.bound_kwargs(), dual_clip=self.dual_clip, agg=self.agg, kl_coef=self.kl_coef,
                    kl_estimator=self.kl_estimator)

    def replace(self, **changes: Any) -> "BandConfig":
        return dataclasses.replace(self, **changes)
