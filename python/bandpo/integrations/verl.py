"""BandPO as a verl policy loss: ``actor_rollout_ref.actor.policy_loss.loss_mode=bandpo``.

Importing this module registers :func:`compute_policy_loss_bandpo` under the name ``"bandpo"`` with verl's own
``register_policy_loss``; verl's actor then calls it exactly as it calls its ``"vanilla"`` loss, with the
signature ``(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)``
and the return convention ``(scalar loss, dict of float metrics)``. Tested against verl 0.9.1.

What a user writes (Hydra command line of ``python -m verl.trainer.main_ppo``)::

    actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=bandpo
    +actor_rollout_ref.actor.policy_loss.divergence=kl       # kl (default) | tv | chi2 | clip | dcpo
    +actor_rollout_ref.actor.policy_loss.delta=0.05          # trust-region radius (nats for KL)
    +actor_rollout_ref.actor.policy_loss.ratio_max=10.0      # cap on the upper ratio bound
    +actor_rollout_ref.actor.policy_loss.relax_high_p=false  # never tighter than [1-clip_low, 1+clip_high]

or, in a config file of one's own that extends verl's (``--config-name my_bandpo``)::

    hydra:
      searchpath: [pkg://verl.trainer.config]
    defaults: [ppo_trainer, _self_]
    actor_rollout_ref:
      actor:
        policy_loss:
          _target_: bandpo.integrations.verl.BandPolicyLossConfig
          loss_mode: bandpo
          divergence: kl
          delta: 0.05

Both forms are tested against verl's own ppo_trainer.yaml. The fixed
interval and the dual clip come from verl's own actor keys: ``clip_ratio`` / ``clip_ratio_low`` /
``clip_ratio_high`` (used by ``divergence=clip`` and by ``relax_high_p``; DCPO's eps under ``divergence=dcpo``:
DCPO is ``divergence=dcpo clip_ratio_low=0.16 clip_ratio_high=0.2``, TRGPPO ``divergence=kl relax_high_p=true``
with ``clip_ratio=0.2``, as in :data:`bandpo.PRESETS`) and ``clip_ratio_c`` (dual clip,
verl's default 3.0, always on as in ``"vanilla"``). ``loss_agg_mode``, ``loss_scale_factor`` and the global
batch sizes verl passes for data parallelism are honoured exactly as verl's ``agg_loss`` does.
``divergence=clip`` reproduces verl's ``"vanilla"`` loss, gradient and metrics (tested).

Why a config subclass: verl builds ``ActorConfig`` from the Hydra tree with ``hydra.utils.instantiate`` on
each node's ``_target_``, and its dataclasses reject unknown keys (``PolicyLossConfig(delta=...)`` raises
TypeError in the worker). Pointing ``policy_loss._target_`` at :class:`BandPolicyLossConfig`, a subclass with
the Band fields, is the one route the config system accepts without patching verl, and the Band settings
are validated when the config is built, not at the first loss call. ``loss_mode=bandpo`` alone (without the
``_target_`` line) also works and uses the defaults (Band-KL, delta 0.05, ratio_max 10).

How the loss reaches Ray workers: verl looks the loss up by name in the worker process, so this module must
be imported there. Three routes do it, any one suffices:
- installed bandpo declares the entry point ``verl.plugins: bandpo = bandpo.integrations.verl``, which
  ``import verl`` loads in every process (verl's ``VERL_USE_EXTERNAL_PLUGINS``, default ``auto``);
- the ``_target_`` above: instantiating the config imports this module in the worker;
- ``VERL_USE_EXTERNAL_MODULES=bandpo.integrations.verl`` in the workers' environment (e.g. Ray's
  ``runtime_env.env_vars``), verl's documented hook for user modules.

Metrics: verl's names keep verl's meaning (``actor/pg_clipfrac``: the clipped objective is active,
``actor/ppo_kl``: mean old_logp - logp, ``actor/pg_clipfrac_lower``: the dual clip is active), plus
``actor/bandpo/clipfrac_upper`` (A > 0 and r above the Band upper bound), ``actor/bandpo/clipfrac_lower``
(A < 0 and r below the lower bound) and ``actor/bandpo/ratio_mean``. One difference from ``"vanilla"``:
``actor/ppo_kl`` averages the unclamped log ratio (verl clamps it to [-20, 20] for this metric only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from verl.trainer.ppo.core_algos import register_policy_loss
from verl.workers.config import PolicyLossConfig

from ..config import METRIC_NAMES, BandConfig
from ._weights import weighted_band_loss

LOSS_NAME = "bandpo"
_BAND_DEFAULTS = BandConfig()


@dataclasses.dataclass
class BandPolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus the Band settings (see :class:`bandpo.BandConfig`).

    Attributes:
        loss_mode: ``"bandpo"``.
        divergence: ``"kl"`` (default), ``"tv"``, ``"chi2"``, ``"clip"`` (verl's fixed interval) or ``"dcpo"``
            (DCPO's bounds, its eps from ``clip_ratio_low`` / ``clip_ratio_high``).
        delta: trust-region radius, > 0 (nats for KL). Default 0.05.
        ratio_max: cap on the upper ratio bound, >= 1 (``inf`` for none). Default 10.
        relax_high_p: unite the band with verl's ``[1 - clip_ratio_low, 1 + clip_ratio_high]``.
    """

    loss_mode: str = LOSS_NAME
    divergence: str = _BAND_DEFAULTS.divergence
    delta: float = _BAND_DEFAULTS.delta
    ratio_max: float = _BAND_DEFAULTS.ratio_max
    relax_high_p: bool = _BAND_DEFAULTS.relax_high_p

    def __post_init__(self) -> None:
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()
        BandConfig(**_band_settings(self))


def _band_settings(policy_loss: Any) -> dict:
    """The Band fields of a policy_loss config (BandPolicyLossConfig, verl's PolicyLossConfig or a mapping);
    the BandConfig defaults for those it lacks."""

    def setting(key: str, kind: type):
        value = policy_loss.get(key, None)
        return getattr(_BAND_DEFAULTS, key) if value is None else kind(value)

    return dict(
        divergence=setting("divergence", str),
        delta=setting("delta", float),
        ratio_max=setting("ratio_max", float),
        relax_high_p=setting("relax_high_p", bool),
    )


def band_config_from_actor(config: Any) -> BandConfig:
    """The BandConfig that verl's actor ``config`` (ActorConfig or DictConfig) asks for.

    The aggregation is left at its default; :func:`compute_policy_loss_bandpo` sets it from ``loss_agg_mode``.
    """
    if config is None:
        raise ValueError("config: the bandpo policy loss needs verl's actor config (got None)")
    clip_ratio = config.get("clip_ratio", 0.2)
    clip_low = config.get("clip_ratio_low", None)
    clip_high = config.get("clip_ratio_high", None)
    dual_clip = config.get("clip_ratio_c", 3.0)
    if not dual_clip > 1:
        raise ValueError(f"clip_ratio_c (dual clip) must be > 1, as verl requires; got {dual_clip}")
    return BandConfig(
        **_band_settings(config.get("policy_loss", None) or {}),
        eps_low=float(clip_ratio if clip_low is None else clip_low),
        eps_high=float(clip_ratio if clip_high is None else clip_high),
        dual_clip=float(dual_clip),
    )


def _global_count(value: Any, local_count, name: str, dp_size: int) -> float:
    if value is None:
        if dp_size > 1:
            raise ValueError(f"global_batch_info: {name} is required when dp_size > 1 (as in verl's agg_loss)")
        return float(local_count())
    return float(value)


def aggregation_for(loss_agg_mode: str, mask: torch.Tensor, batch_info: dict) -> tuple[str, Optional[float]]:
    """(agg, normalizer) of ``band_loss`` that reproduce verl's ``agg_loss(loss_agg_mode, **batch_info)``.

    ``batch_info`` is verl's ``config.global_batch_info`` (dp_size, batch_num_tokens, global_batch_size,
    loss_scale_factor; any may be absent). verl multiplies by dp_size because FSDP averages gradients over
    ranks; here that is a division of the normalizer. Counting the local non-empty rows (when verl does) reads
    one number from the device.
    """
    dp_size = int(batch_info.get("dp_size") or 1)
    if loss_agg_mode == "token-mean":
        tokens = batch_info.get("batch_num_tokens")
        if tokens is None and dp_size == 1:
            return "token-mean", None  # the op's own denominator, sum(mask), as verl's
        return "token-mean", _global_count(tokens, lambda: mask.sum(), "batch_num_tokens", dp_size) / dp_size
    if loss_agg_mode == "token-sum":
        return "token-mean", 1.0 / dp_size
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        if mask.dim() != 2:
            raise ValueError(
                f"response_mask: loss_agg_mode={loss_agg_mode!r} needs [batch, tokens]; got shape {tuple(mask.shape)}"
            )
        rows = _global_count(
            batch_info.get("global_batch_size"), lambda: (mask.sum(-1) > 0).sum(), "global_batch_size", dp_size
        )
        normalizer = rows / dp_size
        if loss_agg_mode == "seq-mean-token-sum-norm":
            scale = batch_info.get("loss_scale_factor")
            normalizer *= float(mask.shape[-1] if scale is None else scale)
        return loss_agg_mode, normalizer
    raise ValueError(
        f"loss_agg_mode must be one of token-mean, token-sum, seq-mean-token-sum, "
        f"seq-mean-token-mean, seq-mean-token-sum-norm; got {loss_agg_mode!r}"
    )


def _op_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask.to(dtype)


@register_policy_loss(LOSS_NAME)
def compute_policy_loss_bandpo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Optional[Any] = None,
    rollout_is_weights: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The BandPO clipped surrogate as a verl policy loss (the fused ``torch.ops.bandpo.band_loss``).

    Args:
        old_log_prob: [batch, response_length] log-probabilities under the rollout-time policy (the bounds).
        log_prob: [batch, response_length] log-probabilities under the current policy (differentiable).
        advantages: [batch, response_length] advantages.
        response_mask: [batch, response_length] bool or 0/1 mask of response tokens.
        loss_agg_mode: verl's aggregation ("token-mean", "token-sum", "seq-mean-token-sum",
            "seq-mean-token-mean", "seq-mean-token-sum-norm").
        config: verl's actor config (ActorConfig or DictConfig): Band settings under ``policy_loss``, the
            clip ratios, ``clip_ratio_c`` and ``global_batch_info``.
        rollout_is_weights: optional [batch, response_length] rollout-correction weights multiplying the
            per-token losses (not the denominators), as in verl's losses.

    Returns (loss, metrics): the 0-d loss in log_prob's dtype and a dict of Python floats (see the module
    docstring). Reading the metrics synchronises with the device once, as verl's own losses do.
    """
    band = band_config_from_actor(config)
    batch_info = dict(config.get("global_batch_info", None) or {})
    agg, normalizer = aggregation_for(loss_agg_mode, response_mask, batch_info)
    mask = _op_mask(response_mask, log_prob.dtype)
    if rollout_is_weights is not None and normalizer is None:
        normalizer = float(mask.sum())
    band = band.replace(agg=agg)
    tensors = (log_prob, old_log_prob, advantages)
    loss, metrics = weighted_band_loss(band, tensors, mask, rollout_is_weights, normalizer, "rollout_is_weights")
    if rollout_is_weights is not None:
        # verl's clip fractions and KL are plain means over the response tokens, not weighted ones.
        with torch.no_grad():
            _, metrics = torch.ops.bandpo.band_loss(
                log_prob.detach(), old_log_prob, advantages, mask, normalizer=normalizer, **band.loss_kwargs()
            )
    values = dict(zip(METRIC_NAMES, metrics.tolist()))
    return loss, {
        "actor/pg_clipfrac": values["pg_clipfrac"],
        "actor/ppo_kl": values["ppo_kl"],
        "actor/pg_clipfrac_lower": values["dual_clipfrac"],
        "actor/bandpo/clipfrac_upper": values["clipfrac_upper"],
        "actor/bandpo/clipfrac_lower": values["clipfrac_lower"],
        "actor/bandpo/ratio_mean": values["ratio_mean"],
    }


__all__ = [
    "BandPolicyLossConfig",
    "LOSS_NAME",
    "aggregation_for",
    "band_config_from_actor",
    "compute_policy_loss_bandpo",
]
