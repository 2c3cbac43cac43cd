"""BandPO in OpenRLHF: :class:`BandPolicyLoss`, a drop-in for ``openrlhf.models.PolicyLoss``.

OpenRLHF's PPO actor (``openrlhf/trainer/ray/ppo_actor.py``, tested against openrlhf 0.11.2) builds its policy
loss as ``PolicyLoss(clip_eps_low=..., clip_eps_high=..., dual_clip=..., token_level_loss=..., policy_loss_type=...,
is_correction_*=...)`` and calls it as ``loss_fn(log_probs, old_log_probs, advantages, action_mask=...,
rollout_log_probs=..., dp_size=..., batch_num_tokens=..., global_batch_size=...)``, expecting ``(loss, clip_ratio,
ppo_kl, vllm_kl, is_filter_ratio)``. :class:`BandPolicyLoss` takes the same arguments and returns the same five,
with the token's ratio clipped to its Band bounds instead of [1 - clip_eps_low, 1 + clip_eps_high]; the loss runs
in bandpo's fused op (forward and analytic backward, no host sync). Its conventions are OpenRLHF's own:

- token level (``--actor.loss_agg_mode token-mean``): the masked sum over the token count, or over the global
  ``batch_num_tokens`` times ``dp_size``; sample level: each response's token mean (count + 1e-8), summed over the
  non-empty responses and divided by their number, or by the global ``global_batch_size`` times ``dp_size``;
- the train/rollout importance-sampling correction (``is_correction_level`` token or seq, ``mode`` mask or clip,
  ``gating`` ratio, binary_kl or tv) weights each token's loss as OpenRLHF weights it, with the same
  ``vllm_kl`` and ``is_filter_ratio``;
- ``clip_ratio``: the masked fraction of tokens whose clipped objective is active (A > 0 above the upper bound, or
  A < 0 below the lower one); ``ppo_kl``: the masked mean of old_log_probs - log_probs.

With ``divergence="clip"`` it is OpenRLHF's PPO loss: the same loss and gradient (tests/test_integration_openrlhf.py
holds it to OpenRLHF's own PolicyLoss). ``policy_loss_type="gspo"`` (a sequence-level ratio, which per-token
bounds do not apply to) is refused.

Using it: OpenRLHF has no loss registry; the actor takes the name ``PolicyLoss`` from its own module, in each Ray
worker. :func:`install` replaces that name in the calling process, with the Band settings, and puts them in the
environment so that worker processes started from it find them; ``python -m bandpo.integrations.openrlhf`` does
both for a whole run (the driver and, through Ray's ``worker_process_setup_hook``, every worker)::

    python -m bandpo.integrations.openrlhf --band-divergence kl --band-delta 0.05 -- <openrlhf.cli.train_ppo_ray args>
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import torch

from .. import rules
from ..api import band_bounds, band_loss
from ..config import PRESETS, BandConfig, resolve_config

# The Band settings of the workers: JSON of BandConfig fields, set by install() and read by BandPolicyLoss.
CONFIG_ENV = "BANDPO_OPENRLHF_CONFIG"
IS_LEVELS, IS_MODES, IS_GATINGS = ("off", "token", "seq"), ("mask", "clip"), ("ratio", "binary_kl", "tv")


def _masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor], dim=None) -> torch.Tensor:
    """OpenRLHF's masked mean: the masked sum over the mask's sum (the plain mean without a mask)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim=dim)
    return (x * mask).sum(dim=dim) / mask.sum(dim=dim)


class BandPolicyLoss(torch.nn.Module):
    """OpenRLHF's PolicyLoss with per-token Band bounds (module docstring). ``config`` (or keyword ``overrides``):
    the Band settings, default the environment's (:func:`install`) or ``BandConfig()``; the fixed interval
    (``clip_eps_low`` / ``clip_eps_high``: used by ``divergence="clip"``, ``"dcpo"`` and ``relax_high_p``) and the
    dual clip are OpenRLHF's arguments."""

    def __init__(
        self,
        clip_eps_low: float = PRESETS["clip"]["eps_low"],  # OpenRLHF's defaults: PPO's [0.8, 1.2]
        clip_eps_high: float = PRESETS["clip"]["eps_high"],
        dual_clip: Optional[float] = None,
        token_level_loss: bool = True,
        policy_loss_type: str = "ppo",
        is_correction_level: str = "off",
        is_correction_mode: str = "mask",
        is_correction_gating: str = "ratio",
        is_correction_threshold=(0.5, 5.0),
        config: Optional[BandConfig] = None,
        **overrides,
    ) -> None:
        super().__init__()
        if policy_loss_type != "ppo":
            raise ValueError(
                f"BandPolicyLoss: policy_loss_type must be 'ppo' (Band bounds are per token); got {policy_loss_type!r}"
            )
        for name, value, allowed in (
            ("is_correction_level", is_correction_level, IS_LEVELS),
            ("is_correction_mode", is_correction_mode, IS_MODES),
            ("is_correction_gating", is_correction_gating, IS_GATINGS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if is_correction_mode == "clip" and (is_correction_level == "seq" or is_correction_gating != "ratio"):
            raise ValueError("is_correction_mode=clip needs is_correction_level=token and is_correction_gating=ratio")
        if config is None and not overrides and os.environ.get(CONFIG_ENV):
            config = BandConfig(**json.loads(os.environ[CONFIG_ENV]))
        fixed = {"eps_low": float(clip_eps_low), "eps_high": float(clip_eps_high), "dual_clip": dual_clip}
        self.config = resolve_config(config, {**fixed, **overrides})  # checked now, naming a bad setting
        self.token_level_loss = token_level_loss
        self.is_correction = (is_correction_level, is_correction_mode, is_correction_gating)
        self.is_correction_threshold = tuple(float(t) for t in is_correction_threshold)

    def forward(
        self,
        log_probs: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        action_mask: Optional[torch.Tensor] = None,
        rollout_log_probs: Optional[torch.Tensor] = None,
        dp_size: int = 1,
        batch_num_tokens: Optional[float] = None,
        global_batch_size: Optional[float] = None,
    ):
        mask = torch.ones_like(log_probs, dtype=torch.bool) if action_mask is None else action_mask.bool()
        m = mask.to(log_probs.dtype)
        coef, vllm_kl, filtered = self._is_correction(old_log_probs, rollout_log_probs, action_mask)
        weights = m if coef is None else m * coef.detach().to(log_probs.dtype)
        if self.token_level_loss:
            denominator = m.sum() if batch_num_tokens is None else batch_num_tokens / dp_size
        else:
            # each response's token mean, as OpenRLHF divides it: by its count + 1e-8 in the mask's own dtype
            counts = (m if action_mask is None else action_mask).sum(-1, keepdim=True)
            weights = weights / (counts + 1e-8)
            denominator = (counts > 0).to(m.dtype).sum() if global_batch_size is None else global_batch_size / dp_size
        # the weighted sum from the op (token-mean over a normalizer of 1), then the denominator: a tensor where
        # it is a count of this batch, so that no step waits on the host
        out = band_loss(log_probs, old_log_probs, advantages, weights, self.config, normalizer=1.0, agg="token-mean")
        loss = out.loss / denominator
        with torch.no_grad():
            lower, upper = band_bounds(old_log_probs, self.config)
            at_upper, at_lower = rules.clipped(rules.ratio(log_probs, old_log_probs), advantages, lower, upper)
            clip_ratio = _masked_mean((at_upper | at_lower).float(), action_mask)
            ppo_kl = _masked_mean(old_log_probs - log_probs, action_mask)
        return loss, clip_ratio, ppo_kl, vllm_kl, filtered

    def _is_correction(self, old_log_probs, rollout_log_probs, mask):
        """(coef, vllm_kl, is_filter_ratio) of the train/rollout correction, or (None, None, None) when off."""
        level, mode, gating = self.is_correction
        if level == "off":
            return None, None, None
        if rollout_log_probs is None:
            raise ValueError(f"is_correction_level={level!r} needs rollout_log_probs")
        low, high = self.is_correction_threshold
        log_is = (old_log_probs - rollout_log_probs).detach()  # log(pi_train / pi_rollout)
        seq = level == "seq"
        if gating == "ratio":
            stat = (_masked_mean(log_is, mask, dim=-1).unsqueeze(-1) if seq else log_is).exp()
        else:
            p = rollout_log_probs.detach().exp().clamp(1e-6, 1 - 1e-6)
            q = old_log_probs.detach().exp().clamp(1e-6, 1 - 1e-6)
            stat = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log() if gating == "binary_kl" else (p - q).abs()
            stat = _masked_mean(stat, mask, dim=-1).unsqueeze(-1) if seq else stat
        if mode == "clip":
            coef, filtered = stat.clamp(min=low, max=high), (stat < low) | (stat > high)
        else:
            keep = (stat >= low) & (stat <= high)
            coef, filtered = torch.where(keep, log_is.exp(), 0.0), ~keep
        ratio = filtered.float().mean() if seq else _masked_mean(filtered.float(), mask)
        return coef, _masked_mean(rollout_log_probs - old_log_probs, mask), ratio


def install(config: Optional[BandConfig] = None, **overrides) -> BandConfig:
    """Makes OpenRLHF's PPO actor build :class:`BandPolicyLoss`: replaces ``PolicyLoss`` in
    ``openrlhf.trainer.ray.ppo_actor`` (and ``openrlhf.models``) of this process, and sets the Band settings in
    this process's environment (``BANDPO_OPENRLHF_CONFIG``), which processes started from it inherit. Without
    arguments the settings come from that environment (as in a Ray worker's setup hook), else ``BandConfig()``.
    Returns the settings."""
    if config is None and not overrides and os.environ.get(CONFIG_ENV):
        config = BandConfig(**json.loads(os.environ[CONFIG_ENV]))
    cfg = resolve_config(config, overrides)
    os.environ[CONFIG_ENV] = json.dumps({k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    import importlib

    for name in ("openrlhf.models", "openrlhf.trainer.ray.ppo_actor"):
        module = sys.modules.get(name) or importlib.import_module(name)
        module.PolicyLoss = BandPolicyLoss
    return cfg


def main(argv: Optional[list] = None) -> None:
    """``python -m bandpo.integrations.openrlhf [--band-KEY VALUE ...] -- <train_ppo_ray arguments>``: installs
    the loss in this process and in every Ray worker (``worker_process_setup_hook``), then runs OpenRLHF's
    ``openrlhf.cli.train_ppo_ray`` with the arguments after ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    band, rest = argv[:split], argv[split + 1 :]
    if len(band) % 2:
        raise SystemExit("bandpo.integrations.openrlhf: Band settings come in pairs: --band-KEY VALUE")
    install(**parse_band_settings(band))
    import runpy

    import ray

    # every worker runs install() first (the settings reach it through the environment); OpenRLHF's train() then
    # finds Ray initialised and keeps this runtime environment
    ray.init(
        runtime_env={
            "worker_process_setup_hook": "bandpo.integrations.openrlhf.install",
            "env_vars": {CONFIG_ENV: os.environ[CONFIG_ENV]},
        }
    )
    sys.argv = ["openrlhf.cli.train_ppo_ray", *rest]
    runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)


def parse_band_settings(pairs: list) -> dict:
    """``--band-KEY VALUE`` pairs as BandConfig fields: a number or true/false as JSON reads it, else the text
    (``--band-divergence kl --band-delta 0.05 --band-relax-high-p true``). The fields are checked by BandConfig."""
    settings = {}
    for key, value in zip(pairs[::2], pairs[1::2]):
        if not key.startswith("--band-"):
            raise SystemExit(f"bandpo.integrations.openrlhf: expected --band-KEY, got {key!r}")
        try:
            settings[key[len("--band-") :].replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            settings[key[len("--band-") :].replace("-", "_")] = value
    return settings


if __name__ == "__main__":
    main()
