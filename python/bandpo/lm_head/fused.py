"""fused_linear_band_loss: the lm_head and the BandPO loss in one call, the gradients formed in the forward."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

from .._tables import METRIC_NAMES
from ..config import BandConfig, resolve_config
from .checks import LogitOptions, check_head, check_options, check_targets, check_types, compute_dtype, int64
from .checks import RowGrads, nan_where_bad
from .chunks import GradAccumulator, chunk_logit_grad_, chunk_logp_entropy, logit_chunks
from .op import autocast_off, linear_logprob_entropy, under_autocast

_D = LogitOptions()


@dataclasses.dataclass(frozen=True)
class LossSide:
    """Everything of the call but the head's tensors, checked before the head runs: the loss's inputs (shaped
    like target), its options, the entropy bonus and the head's transform."""

    target: Tensor
    old_logp: Tensor
    advantages: Tensor
    mask: Optional[Tensor]
    config: BandConfig
    normalizer: Optional[float]
    ref_logp: Optional[Tensor]
    entropy_coef: float
    options: LogitOptions
    chunk_size: int

    def loss_weights(self, dtype: torch.dtype) -> Tensor:
        """a [like target] in `dtype`: each token's weight in the loss, loss = sum_n a_n l_n with l_n the token's
        own loss (its mask weight over the aggregation's denominator: sum(mask), B, B T, the row's weight times
        B, or the normalizer). Asked of the core's own backward, so that the aggregation rules stay written
        once (aggregation.h): at logp = old_logp, A = -1 and no KL penalty or dual clip, the token's loss is
        -A r = r, whose slope in logp is exactly 1 (r = 1 lies inside every band), so band_loss_backward
        returns a_n."""
        old = self.old_logp.to(dtype)
        mask = self.mask if self.mask is None or self.mask.dtype == torch.bool else self.mask.to(dtype)
        kwargs = {**self.config.loss_kwargs(), "kl_coef": 0.0, "dual_clip": None}
        one = torch.ones((), dtype=dtype, device=old.device)
        return torch.ops.bandpo.band_loss_backward(
            one, old, old, -torch.ones_like(old), mask, None, normalizer=self.normalizer, **kwargs
        )

    def finish(self, logp: Tensor, entropy: Tensor, weights: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, metrics_tensor, mean entropy), all detached, from the head's logp and entropy [N]; weights: the
        loss weights where the caller has them (else computed when the entropy bonus needs them)."""
        from ..api import band_loss

        shape = self.target.shape
        out = band_loss(
            logp.view(shape).to(self.old_logp.dtype),
            self.old_logp,
            self.advantages,
            self.mask,
            self.config,
            normalizer=self.normalizer,
            ref_logp=self.ref_logp,
        )
        ent = entropy.detach().view(shape)
        w = torch.ones_like(ent, dtype=torch.float32) if self.mask is None else self.mask.to(torch.float32)
        mean_entropy = (ent.float() * w).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)
        loss = out.loss.detach()
        if self.entropy_coef != 0.0:
            if weights is None:
                weights = self.loss_weights(ent.dtype)
            loss = loss - (self.entropy_coef * (weights.view(shape) * ent).sum()).to(loss.dtype)
        return loss, out.metrics_tensor, mean_entropy

    def forward_with_grads(self, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], needs) -> tuple:
        """(loss, metrics_tensor, mean entropy, (d hidden, d weight, d bias)): the head chunk by chunk, each chunk's
        logits made once, reduced to logp and entropy, turned into d loss / d logits right away (the loss's
        per-token gradient needs only the token and its weight a_n: the core's backward on the chunk with a_n as
        its mask and the denominator 1) and folded into the three gradients by two GEMMs."""
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        flat_target = self.target.reshape(-1)
        check_head(flat_hidden, weight, flat_target, bias)
        check_options(self.options, self.chunk_size)
        n, vocab = flat_hidden.shape[0], weight.shape[0]
        bad = check_targets(flat_target, vocab, self.options.ignore_index)  # raises on the CPU; NaN rows elsewhere
        cdt = compute_dtype(flat_hidden.dtype)
        old = self.old_logp.reshape(-1).to(cdt)
        weights = self.loss_weights(cdt).reshape(-1)
        adv = self._flat_advantages(cdt)
        ref = None if self.ref_logp is None else self.ref_logp.reshape(-1).to(cdt)
        chunk_kwargs = {**self.config.loss_kwargs(), "agg": "token-mean"}
        one = torch.ones((), dtype=cdt, device=flat_hidden.device)
        logp = torch.empty(n, dtype=cdt, device=flat_hidden.device)
        entropy = torch.empty(n, dtype=cdt, device=flat_hidden.device)
        grads = GradAccumulator(flat_hidden, weight, bias, needs)
        for s, e, raw in logit_chunks(flat_hidden, weight, bias, self.chunk_size):
            t = flat_target[s:e]
            lp, ent = nan_where_bad(
                chunk_logp_entropy(raw, t, self.options, keep_raw=True), None if bad is None else bad[s:e]
            )
            logp[s:e] = lp
            entropy[s:e] = ent
            g_logp = torch.ops.bandpo.band_loss_backward(
                one,
                lp,
                old[s:e],
                adv[s:e],
                weights[s:e],
                None if ref is None else ref[s:e],
                normalizer=1.0,
                **chunk_kwargs,
            )
            g_entropy = weights[s:e] * -self.entropy_coef if self.entropy_coef != 0.0 else None
            grads.add(chunk_logit_grad_(raw, t, RowGrads(g_logp, g_entropy, lp, ent), self.options), s, e)
        loss, metrics, mean_entropy = self.finish(logp, entropy, weights)
        gh, gw, gb = grads.result()
        gh = gh.reshape(hidden.shape) if gh is not None else None
        return loss, metrics, mean_entropy, (gh, gw, gb if bias is not None and needs[2] else None)

    def _flat_advantages(self, dtype: torch.dtype) -> Tensor:
        """advantages [N] in `dtype`, one per token ([B] or [B, 1] advantages repeated along each row)."""
        a, shape = self.advantages, self.target.shape
        if a.dim() < len(shape):
            a = a.reshape(shape[0], *([1] * (len(shape) - 1)))
        return a.expand(shape).reshape(-1).to(dtype)


class _FusedLinearBandLoss(torch.autograd.Function):
    """The head and the loss, the gradients formed in the forward (LossSide.forward_with_grads): three GEMMs in
    all, where the op's own backward would recompute the logits (four). The backward scales them by d out /
    d loss, in place, once."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, side: LossSide):
        loss, metrics, mean_entropy, grads = side.forward_with_grads(hidden, weight, bias, ctx.needs_input_grad[:3])
        ctx.mark_non_differentiable(metrics, mean_entropy)
        ctx.save_for_backward(*grads)
        ctx.used = False
        return loss, metrics, mean_entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_metrics, _grad_entropy):
        if ctx.used:
            raise RuntimeError(
                "fused_linear_band_loss: its gradients were scaled in place by a first backward; a "
                "second backward through the same graph (retain_graph=True) is not supported"
            )
        ctx.used = True
        # In place: the saved gradients are ours, and the same size as what is returned.
        return tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in ctx.saved_tensors) + (None,)


def fused_linear_band_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Optional[Tensor] = None,
    config=None,
    *,
    bias: Optional[Tensor] = None,
    temperature: float = _D.temperature,
    softcap: float = _D.softcap,
    logit_scale: float = _D.logit_scale,
    ignore_index: int = _D.ignore_index,
    chunk_size: int = 0,
    normalizer: Optional[float] = None,
    ref_logp: Optional[Tensor] = None,
    entropy_coef: float = 0.0,
    **overrides,
):
    """The lm_head and the BandPO loss in one call: the new policy's log-probs as :func:`linear_logprob_entropy`
    gives them, the loss over them as :func:`bandpo.band_loss` gives it, minus ``entropy_coef`` times the entropy
    aggregated as the loss is (verl's entropy bonus).

    Where a gradient is wanted, it is formed in the forward, chunk by chunk, from each chunk's logits made once:
    three GEMMs of [N, H] x [H, V] in all (the plain path's count; the op's backward would recompute the logits,
    a fourth), and the memory beyond inputs and gradients stays a few chunks. The gradients are kept until
    backward, which scales them by the loss's upstream gradient in place (one backward per graph).

    Args:
        hidden: [B, T, H] (or [N, H]) final hidden states; weight [V, H]; target [B, T] (or [N]) sampled ids.
        old_logp, advantages, mask, config, normalizer, ref_logp, overrides: as for :func:`bandpo.band_loss`,
            shaped like target. Positions with target == ignore_index must be masked out (their logp is 0).
        bias, temperature, softcap, logit_scale, ignore_index, chunk_size: as for :func:`linear_logprob_entropy`.
        entropy_coef: weight of the entropy bonus (default 0: none); the loss is band_loss - entropy_coef *
            (entropy aggregated with the loss's weights).

    Returns a :class:`bandpo.BandLoss` whose metrics also hold ``entropy``: the mask-weighted mean entropy
    (nats, detached; 0-d float32). The loss is computed from log-probs in old_logp's dtype, as band_loss's;
    the gradient in float32 (float64 for float64).
    """
    from ..api import BandLoss, band_loss

    cfg = resolve_config(config, overrides)
    check_types(hidden, weight, target, bias)
    if not math.isfinite(entropy_coef):
        raise ValueError(f"entropy_coef must be a finite number, got {entropy_coef}")
    if not isinstance(old_logp, Tensor):
        raise TypeError(f"old_logp must be a torch.Tensor, got {type(old_logp).__name__}")
    if old_logp.shape != target.shape:
        raise ValueError(f"old_logp must have target's shape {tuple(target.shape)}, got {tuple(old_logp.shape)}")
    # The loss's own checks (shapes, dtypes, values, options; the op's messages) on its inputs before the head's
    # GEMMs, not after them: band_loss with log-probs of 0 standing in for the head's (old_logp's shape and dtype).
    band_loss(torch.zeros_like(old_logp), old_logp, advantages, mask, cfg, normalizer=normalizer, ref_logp=ref_logp)
    side = LossSide(
        target, old_logp, advantages, mask, cfg, normalizer, ref_logp, entropy_coef,
        LogitOptions.of(ignore_index, logit_scale, softcap, temperature), int64("chunk_size", chunk_size),
    )  # fmt: skip
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if not wants_grad:
        o = side.options
        logp, entropy = linear_logprob_entropy(
            hidden.reshape(-1, hidden.shape[-1]), weight, target.reshape(-1), bias,
            temperature=o.temperature, softcap=o.softcap, logit_scale=o.logit_scale, ignore_index=o.ignore_index,
            chunk_size=side.chunk_size,
        )  # fmt: skip
        loss, metrics, mean_entropy = side.finish(logp, entropy, None)
    else:
        hidden, weight, bias = under_autocast(hidden, weight, bias)
        with autocast_off(hidden.device.type):
            loss, metrics, mean_entropy = _FusedLinearBandLoss.apply(hidden, weight, bias, side)
    return BandLoss(loss, {**dict(zip(METRIC_NAMES, metrics.unbind())), "entropy": mean_entropy}, metrics)
