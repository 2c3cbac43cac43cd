"""BandConfig: the options of band_bounds / band_loss in one dataclass."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Optional

from . import _capi
from ._tables import AGGREGATIONS, DEFAULTS, DIVERGENCES, KL_ESTIMATORS, METRIC_NAMES  # noqa: F401  (re-exported)
from ._tables import ALL_OPTIONS, BOUND_OPTIONS

_PYTHON_TYPES = {"float": float, "float?": Optional[float], "bool": bool, "str": str}


class _BandConfigMethods:
    def __post_init__(self) -> None:
        _capi.options(
            self.loss_kwargs()
        )  # the core's checks, through the C ABI: TypeError / ValueError naming the field

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "BandConfig":
        """The settings of a method the paper compares (a key of :data:`PRESETS`), with ``changes`` applied:
        ``BandConfig.preset("trgppo", delta=0.03)``."""
        if name not in PRESETS:
            raise ValueError(f"preset: unknown method {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})

    @classmethod
    def clip(cls, eps_low: Optional[float] = None, eps_high: Optional[float] = None, **kwargs: Any) -> "BandConfig":
        """PPO's fixed clip, by default PRESETS["clip"]'s interval [0.8, 1.2] (eps_high = 0.28 gives Clip-Higher)."""
        ppo = PRESETS["clip"]
        return cls(
            divergence="clip",
            eps_low=ppo["eps_low"] if eps_low is None else eps_low,
            eps_high=ppo["eps_high"] if eps_high is None else eps_high,
            **kwargs,
        )

    def bound_kwargs(self) -> dict:
        """Keyword arguments of ``torch.ops.bandpo.band_bounds``."""
        return {o.name: getattr(self, o.name) for o in BOUND_OPTIONS if o.scope == "config"}

    def loss_kwargs(self) -> dict:
        """Keyword arguments of ``torch.ops.bandpo.band_loss`` (without normalizer and ref_logp)."""
        return {o.name: getattr(self, o.name) for o in ALL_OPTIONS if o.scope == "config"}

    def replace(self, **changes: Any) -> "BandConfig":
        return dataclasses.replace(self, **changes)


# The clipping rules the BandPO paper compares, as settings of the one op (BandConfig.preset(name)). Only the
# rule and its own parameters: dual clip, aggregation and KL penalty are the trainer's choice for all of them.
PRESETS: dict = {
    # PPO's / GRPO's fixed interval [0.8, 1.2]
    "clip": dict(divergence="clip", eps_low=0.2, eps_high=0.2),
    # DAPO's Clip-Higher (Yu et al. 2025): [0.8, 1.28]
    "clip-higher": dict(divergence="clip", eps_low=0.2, eps_high=0.28),
    # DCPO's dynamic-adaptive clipping (Yang et al. 2025) with its suggested eps 0.16 / 0.2 and cap 10
    "dcpo": dict(divergence="dcpo", eps_low=0.16, eps_high=0.2, ratio_max=10.0),
    # TRGPPO (Wang et al. 2019): the KL(pi_old || pi_new) <= delta bounds of each token, never narrower than
    # PPO's [1 - eps, 1 + eps] (its clipping range is min(l_delta, 1 - eps) .. max(u_delta, 1 + eps)); delta
    # 0.05 as in the BandPO authors' comparison
    "trgppo": dict(divergence="kl", delta=0.05, eps_low=0.2, eps_high=0.2, relax_high_p=True),
    # BandPO (Li et al. 2026): the paper's default, KL at delta 0.05; TV and chi^2 at the same radius
    "band-kl": dict(divergence="kl", delta=0.05),
    "band-tv": dict(divergence="tv", delta=0.05),
    "band-chi2": dict(divergence="chi2", delta=0.05),
}

# The fields are the rows of tables.h with scope "config", in order, with their defaults: an option added
# there is a BandConfig field without a change here.
BandConfig = dataclasses.make_dataclass(
    "BandConfig",
    [
        (o.name, _PYTHON_TYPES[o.schema_type], dataclasses.field(default=o.default))
        for o in ALL_OPTIONS
        if o.scope == "config"
    ],
    bases=(_BandConfigMethods,),
    frozen=True,
)
BandConfig.__module__ = __name__  # (make_dataclass takes module= only from Python 3.12)
BandConfig.__doc__ = """Options shared by :func:`bandpo.band_bounds` and :func:`bandpo.band_loss` (a frozen dataclass).

    The fields, their defaults and their order are the rows of ``bandpo/tables.h``; the checks are the C++
    core's own (``ValueError``/``TypeError`` naming the field).

    Attributes:
        divergence: ``"kl"`` (KL(pi_old || pi_new), the paper's default), ``"tv"``, ``"chi2"``, ``"clip"``
            (the fixed PPO interval ``[1 - eps_low, 1 + eps_high]``; PPO with 0.2/0.2, Clip-Higher with 0.2/0.28)
            or ``"dcpo"`` (DCPO's bounds ``1/2 + 1/2 sqrt(1 -/+ 4 eps / p)`` from the old probability p).
            :data:`PRESETS` names the settings of each method the paper compares.
        delta: trust-region radius of the divergence (nats for KL), > 0. Default 0.05.
        eps_low, eps_high: the fixed interval, used by ``"clip"`` and by ``relax_high_p``; DCPO's eps under
            ``"dcpo"``. Default 0.2, 0.28.
        relax_high_p: unite the band with the fixed interval (never tighter than PPO). Default False.
        ratio_max: cap on the upper ratio bound, >= 1; ``math.inf`` for none. Default 10.
        dual_clip: dual-clip constant c > 1 for negative advantages (loss at most -A c); None = off (default).
        agg: loss aggregation, one of ``AGGREGATIONS`` (see :func:`bandpo.band_loss`). Default "token-mean".
        kl_coef: coefficient of the per-token KL penalty to ``ref_logp`` (0 = off, the default).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (verl's low_var_kl; the default).
    """


_FIELDS = tuple(f.name for f in dataclasses.fields(BandConfig))


def check_option_names(names, where: str = "") -> None:
    """TypeError for a name that is no option (a misspelling, say), listing the options and the closest one."""
    for name in names:
        if name not in _FIELDS:
            close = difflib.get_close_matches(name, _FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{where}unknown option {name!r}{hint}; the options are {', '.join(_FIELDS)}")


_dataclass_init = BandConfig.__init__


def _init(self, *args: Any, **kwargs: Any) -> None:
    check_option_names(kwargs, "BandConfig: ")
    _dataclass_init(self, *args, **kwargs)


_init.__doc__ = _dataclass_init.__doc__
_init.__signature__ = inspect.signature(_dataclass_init)
BandConfig.__init__ = _init

_DEFAULT_CONFIG = BandConfig()


def resolve_config(config: Optional[BandConfig], overrides: dict) -> BandConfig:
    """The options a call runs with: ``config`` (default ``BandConfig()``) with keyword ``overrides`` replacing
    single fields, the one rule of every face (torch, numpy, the fused head). TypeError naming ``config`` when it
    is not a BandConfig (a dict of options, say) and naming a field that does not exist."""
    if config is None:
        config = _DEFAULT_CONFIG
    elif not isinstance(config, BandConfig):
        raise TypeError(
            f"config must be a bandpo.BandConfig or None, got {type(config).__name__} "
            "(options as keywords go to the call itself, e.g. band_loss(..., delta=0.1))"
        )
    if not overrides:
        return config
    check_option_names(overrides)
    return config.replace(**overrides)
