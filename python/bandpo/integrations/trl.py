"""BandPO in TRL: ``BandGRPOTrainer`` and ``BandGRPOConfig``, drop-in for ``GRPOTrainer`` / ``GRPOConfig``.

    from bandpo.integrations.trl import BandGRPOConfig, BandGRPOTrainer

    args = BandGRPOConfig(output_dir="out", loss_type="dapo", band_divergence="kl", band_delta=0.05)
    trainer = BandGRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset)
    trainer.train()

The per-token policy loss is the fused ``torch.ops.bandpo.band_loss`` with per-token Band bounds in place of
TRL's ``clamp(ratio, 1 - epsilon, 1 + epsilon_high)``; everything else is TRL's (generation, rewards,
advantages, old log-probs, the reference model, logging). ``band_divergence="clip"`` uses TRL's own interval
and gives TRL's loss and gradient (tested). Tested against TRL 1.16.

Honoured GRPOConfig settings:
- ``loss_type``: ``grpo`` (mean over sequences of each sequence's token mean), ``bnpo`` (mean over the batch's
  tokens), ``dr_grpo`` (sum / (batch * max_completion_length)), ``dapo`` (sum / the generation batch's token
  count per process), each scaled for gradient accumulation exactly as TRL scales it.
- ``epsilon`` / ``epsilon_high``: the fixed interval of ``band_divergence="clip"`` and of ``band_relax_high_p``,
  and DCPO's eps_low / eps_high under ``band_divergence="dcpo"``. The paper's baselines (:data:`bandpo.PRESETS`):
  DCPO is ``band_divergence="dcpo", epsilon=0.16, epsilon_high=0.2``; TRGPPO is ``band_divergence="kl",
  band_relax_high_p=True, epsilon=0.2, epsilon_high=0.2``.
- ``delta`` (TRL's two-sided clip of the ratio for negative advantages): the dual clip, loss at most
  ``-A * delta``; it must exceed ``1 + epsilon_high`` (TRL recommends that; below it TRL's formula stops
  being a dual clip).
- ``beta`` and ``use_bias_correction_kl``: TRL's KL penalty to the reference model, its estimator
  exp(ref - logp) - (ref - logp) - 1 times the ratio when bias-corrected, aggregated as the policy loss. It is
  computed with plain torch ops beside the op, not fused: the op's KL term is verl's clamped k3 without the
  ratio factor, and TRL's must be reproduced exactly.
- the MoE router auxiliary loss (``router_aux_loss_coef``), as TRL adds it.
- the factors TRL multiplies the per-token loss by, with TRL's own functions: ``off_policy_mask_threshold``
  (the off-policy sequence mask), ``top_entropy_quantile`` (the high-entropy token mask) and vLLM's
  ``vllm_importance_sampling_correction`` ratios. They weight the tokens' losses while the denominators stay
  token counts (in the op: mask weights with explicit normalizers).
Refused at construction with a ValueError naming the setting (they are not a clipped surrogate with
per-token bounds, or not reproduced here): other loss types (cispo, sapo, vespo, luspo),
``importance_sampling_level="sequence"``, and the entropy bonus (``entropy_coef`` / ``use_adaptive_entropy``).

``band_lm_head=True`` computes the policy's per-token log-probs and entropies with
:func:`bandpo.linear_logprob_entropy` instead of TRL's chunked kernel (``trl.kernels.ChunkedLogProbFunction``,
which TRL 1.16's fused LM head calls): the same values and gradients (tested), one token-chunked op for CPU and
CUDA. It is swapped in only around the trainer's own log-prob calls.

Logged metrics keep TRL's names and meanings with the Band bounds in place of the interval:
``clip_ratio/low_mean`` (A < 0 and ratio below the lower bound), ``clip_ratio/high_mean`` (A > 0 and ratio
above the upper bound), ``clip_ratio/region_mean``, ``clip_ratio/low_min``, ``clip_ratio/high_max``, plus
``entropy``, ``kl`` (beta != 0), ``aux_loss`` and ``band/upper_bound_mean`` (mean upper ratio bound of the
completion tokens: how far the band lets them grow).

Why a subclass overriding ``compute_loss``: TRL 1.16 computes the per-token loss inline in
``GRPOTrainer._compute_loss`` with no hook for the clipping, and ``compute_loss`` is the documented
``transformers.Trainer`` override point. The override reuses TRL's ``_get_per_token_logps_and_entropies`` and
the inputs TRL prepares; the settings it cannot reproduce are refused rather than silently ignored. The Band
fields are ``band_*`` because ``GRPOConfig`` already has a ``delta`` (the two-sided clip above).
"""

from __future__ import annotations

import dataclasses

import torch
from trl import GRPOConfig, GRPOTrainer

from ..config import BandConfig
from ..lm_head import LogitOptions
from .. import rules
from ._weights import weighted_band_loss

_BAND_DEFAULTS = BandConfig()
_LOGIT_DEFAULTS = LogitOptions()  # the lm_head options' defaults (tables.h)
SUPPORTED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
# Model inputs TRL passes through to the forward for vision-language models.
_MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


@dataclasses.dataclass
class BandGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the Band settings (see :class:`bandpo.BandConfig`); also parsed by ``TrlParser``
    (``--band_divergence kl --band_delta 0.05``)."""

    band_divergence: str = dataclasses.field(
        default=_BAND_DEFAULTS.divergence,
        metadata={
            "help": "Band divergence: 'kl' (KL(pi_old||pi_new), default), 'tv', 'chi2', 'clip' "
            "(TRL's interval [1 - epsilon, 1 + epsilon_high]) or 'dcpo' (DCPO's bounds with "
            "eps_low = epsilon, eps_high = epsilon_high)."
        },
    )
    band_delta: float = dataclasses.field(
        default=_BAND_DEFAULTS.delta, metadata={"help": "Trust-region radius of the divergence (> 0; nats for KL)."}
    )
    band_ratio_max: float = dataclasses.field(
        default=_BAND_DEFAULTS.ratio_max, metadata={"help": "Cap on the upper ratio bound (>= 1; inf for none)."}
    )
    band_relax_high_p: bool = dataclasses.field(
        default=_BAND_DEFAULTS.relax_high_p,
        metadata={"help": "Never tighter than [1 - epsilon, 1 + epsilon_high]: unite the band with it."},
    )
    band_lm_head: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Per-token log-probs and entropies from bandpo.linear_logprob_entropy in place of TRL's "
            "chunked log-prob kernel (same outputs)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        band_config_from_args(self)


def band_config_from_args(args) -> BandConfig:
    """The BandConfig a (Band)GRPOConfig asks for; a plain GRPOConfig gets the Band defaults."""
    eps_low = float(args.epsilon)
    eps_high = eps_low if args.epsilon_high is None else float(args.epsilon_high)
    dual_clip = getattr(args, "delta", None)
    if dual_clip is not None and not dual_clip > 1 + eps_high:
        raise ValueError(
            f"delta (TRL's two-sided clip, here the dual clip) must be > 1 + epsilon_high = "
            f"{1 + eps_high}; got {dual_clip}"
        )
    return BandConfig(
        divergence=getattr(args, "band_divergence", _BAND_DEFAULTS.divergence),
        delta=float(getattr(args, "band_delta", _BAND_DEFAULTS.delta)),
        ratio_max=float(getattr(args, "band_ratio_max", _BAND_DEFAULTS.ratio_max)),
        relax_high_p=bool(getattr(args, "band_relax_high_p", _BAND_DEFAULTS.relax_high_p)),
        eps_low=eps_low,
        eps_high=eps_high,
        dual_clip=None if dual_clip is None else float(dual_clip),
    )


def _refuse_unsupported(args) -> None:
    def refuse(setting: str, why: str) -> None:
        raise ValueError(f"BandGRPOTrainer: {setting} is not supported ({why}); use GRPOTrainer for it")

    if args.loss_type not in SUPPORTED_LOSS_TYPES:
        refuse(f"loss_type={args.loss_type!r}", f"supported: {', '.join(SUPPORTED_LOSS_TYPES)}")
    if args.importance_sampling_level != "token":
        refuse(f"importance_sampling_level={args.importance_sampling_level!r}", "Band bounds are per token")
    if args.entropy_coef != 0.0 or args.use_adaptive_entropy:
        refuse("the entropy bonus (entropy_coef / use_adaptive_entropy)", "not reproduced here")


class _BandpoChunkedLogProb:
    """Stands in for ``trl.kernels.ChunkedLogProbFunction`` where TRL 1.16's fused LM head calls it
    (``trl.trainer.utils.add_fused_lm_head``): ``apply(hidden, weight, bias, targets, temperature, chunk_size,
    softcap, logit_scale, outputs)`` -> (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1), here from
    :func:`bandpo.linear_logprob_entropy` (TRL's transform order: scale, softcap, temperature). TRL's vocabulary
    chunk does not apply (bandpo chunks tokens); outputs beyond log-probs and entropy are refused."""

    @staticmethod
    def apply(
        hidden,
        weight,
        bias,
        targets,
        temperature=_LOGIT_DEFAULTS.temperature,
        chunk_size=None,
        softcap=None,
        logit_scale=_LOGIT_DEFAULTS.logit_scale,
        outputs=("log_probs",),
    ):
        from ..lm_head import linear_logprob_entropy

        extra = [o for o in outputs if o not in ("log_probs", "entropy")]
        if extra:
            raise ValueError(f"band_lm_head: bandpo.linear_logprob_entropy gives log_probs and entropy, not {extra}")
        logp, entropy = linear_logprob_entropy(
            hidden,
            weight,
            targets,
            bias,
            temperature=float(temperature),
            softcap=float(softcap or 0.0),
            logit_scale=float(logit_scale),
        )
        return logp, entropy if "entropy" in outputs else None, None, None, None


class _SwappedChunkedLogProb:
    """Within it, TRL's fused LM head calls :class:`_BandpoChunkedLogProb` (it reads the module attribute at each
    call); the attribute is restored on exit."""

    def __enter__(self):
        from trl.trainer import utils as trl_utils

        self._module, self._saved = trl_utils, trl_utils._ChunkedLogProbFunction
        trl_utils._ChunkedLogProbFunction = _BandpoChunkedLogProb

    def __exit__(self, *exc):
        self._module._ChunkedLogProbFunction = self._saved
        return False


class BandGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose clipped surrogate uses per-token Band bounds (the fused BandPO op).

    Takes the same arguments as ``GRPOTrainer``; pass a :class:`BandGRPOConfig` as ``args`` to choose the
    divergence and radius (a plain ``GRPOConfig`` gets Band-KL with delta 0.05).
    """

    def __init__(self, *args, **kwargs) -> None:
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if config is not None:  # refuse before GRPOTrainer loads models or starts vLLM
            _refuse_unsupported(config)
            band_config_from_args(config)
        super().__init__(*args, **kwargs)
        _refuse_unsupported(self.args)
        self.band_config = band_config_from_args(self.args)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if not getattr(self.args, "band_lm_head", False):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)
        with _SwappedChunkedLogProb():
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _aggregation(self, mask: torch.Tensor, inputs: dict, mode: str):
        """(agg, normalizer, divisor): loss = band_loss(agg, normalizer) / divisor equals TRL's aggregation
        of the [B, T] per-token loss over the bool ``mask``."""
        batch_size = mask.size(0)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        if self.loss_type == "grpo":
            return "seq-mean-token-mean", float(batch_size * accumulation), 1.0
        if self.loss_type == "bnpo":  # a device-side token count: no host sync
            return "seq-mean-token-sum", 1.0, mask.sum().clamp(min=1) * accumulation
        if self.loss_type == "dr_grpo":
            return "seq-mean-token-sum", float(batch_size * self.max_completion_length * accumulation), 1.0
        # dapo: TRL's normalizer is a device tensor; dividing by it keeps the step free of host syncs.
        divisor = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            divisor = divisor * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return "seq-mean-token-sum", 1.0, divisor

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("BandGRPOTrainer does not support returning outputs (as GRPOTrainer)")
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        mask = mask != 0
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in _MULTIMODAL_KEYS},
        )
        advantages = inputs["advantages"]
        old_logps = inputs.get("old_per_token_logps")
        if old_logps is None:  # TRL skips it when the policy has not moved since generation
            old_logps = logps.detach()

        mode = "train" if self.model.training else "eval"
        agg, normalizer, divisor = self._aggregation(mask, inputs, mode)
        weights = self._loss_weights(inputs, logps, old_logps, advantages, mask, entropies)
        band = self.band_config.replace(agg=agg)
        loss, _ = weighted_band_loss(
            band, (logps, old_logps, advantages), mask, weights, normalizer, "per-token loss weights"
        )
        per_token_kl = None
        if self.beta != 0.0:
            per_token_kl = self._per_token_kl(logps, old_logps, inputs["ref_per_token_logps"])
            loss = loss + self.beta * aggregate_tokens(per_token_kl, mask, agg, normalizer)
        loss = loss / divisor
        if self.aux_loss_enabled:
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        self._log_metrics(mode, logps.detach(), old_logps, advantages, mask, entropies, per_token_kl)
        return loss

    def _loss_weights(self, inputs, logps, old_logps, advantages, mask, entropies):
        """The factors TRL multiplies the per-token policy loss by (not the KL term, not the denominators):
        the off-policy sequence mask, the high-entropy token mask and vLLM's importance-sampling ratios, with
        TRL's own functions for the masks. None when no such setting is on."""
        factors = []
        if self.off_policy_mask_threshold is not None:
            factors.append(
                self.get_off_policy_mask(
                    advantages=advantages if advantages.dim() == 2 else advantages.unsqueeze(1),
                    per_token_logps=logps,
                    sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_logps),
                    mask=mask.to(logps.dtype),
                    off_policy_threshold=self.off_policy_mask_threshold,
                )
            )
        if self.top_entropy_quantile < 1.0:
            factors.append(self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile))
        if self.use_vllm and self.vllm_importance_sampling_correction:
            factors.append(inputs["importance_sampling_ratio"])
        if not factors:
            return None
        weights = factors[0].to(logps.dtype)
        for factor in factors[1:]:
            weights = weights * factor
        return weights

    def _per_token_kl(self, logps, old_logps, ref_logps):
        """TRL's per-token KL estimate to the reference policy (times the ratio with use_bias_correction_kl)."""
        log_ref_ratio = ref_logps - logps
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        if self.args.use_bias_correction_kl:
            kl = kl * torch.exp(logps - old_logps)
        return kl

    @torch.no_grad()
    def _log_metrics(self, mode, logps, old_logps, advantages, mask, entropies, per_token_kl) -> None:
        """TRL's metrics: global means over completion tokens (summed over processes), per-sequence extremes."""
        tokens = mask.sum()

        def global_mean(per_token: torch.Tensor) -> float:
            local_sum = torch.where(mask, per_token, 0).sum()
            totals = self.accelerator.reduce(torch.stack([local_sum.float(), tokens.float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        def row_means(per_token: torch.Tensor) -> torch.Tensor:  # NaN for rows without tokens
            return self.accelerator.gather(torch.where(mask, per_token, 0).sum(-1) / mask.sum(-1))

        lower, upper = torch.ops.bandpo.band_bounds(old_logps, **self.band_config.bound_kwargs())
        ratio = rules.ratio(logps, old_logps)  # as the op
        adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)
        at_upper, at_lower = rules.clipped(ratio, adv, lower, upper)
        is_low, is_high = at_lower.float(), at_upper.float()
        log = self._metrics[mode]
        log["entropy"].append(global_mean(entropies))
        if per_token_kl is not None:
            log["kl"].append(global_mean(per_token_kl))
        log["clip_ratio/low_mean"].append(global_mean(is_low))
        log["clip_ratio/high_mean"].append(global_mean(is_high))
        log["clip_ratio/region_mean"].append(global_mean(is_low + is_high))
        log["clip_ratio/low_min"].append(_nan_extreme(row_means(is_low), torch.min))
        log["clip_ratio/high_max"].append(_nan_extreme(row_means(is_high), torch.max))
        log["band/upper_bound_mean"].append(global_mean(upper))


def aggregate_tokens(per_token: torch.Tensor, mask: torch.Tensor, agg: str, normalizer: float) -> torch.Tensor:
    """Aggregate a [B, T] per-token term over the bool ``mask`` as ``band_loss(agg=agg, normalizer=normalizer)``
    aggregates its loss (bandpo.rules.aggregate; rows without tokens contribute 0)."""
    return rules.aggregate(torch.where(mask, per_token, 0), mask, agg, normalizer)


def _nan_extreme(values: torch.Tensor, reduce) -> float:
    """min/max over the non-NaN entries (rows without completion tokens are NaN); NaN when there are none."""
    finite = values[~torch.isnan(values)]
    return reduce(finite).item() if finite.numel() else float("nan")


__all__ = ["BandGRPOConfig", "BandGRPOTrainer", "SUPPORTED_LOSS_TYPES", "band_config_from_args"]
