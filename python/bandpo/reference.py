"""Plain-PyTorch implementation of BandPO: the test oracle of the compiled ops and the readable statement of
their math.

Everything here is ordinary differentiable torch code that runs on any device and dtype; it computes in
float64 and returns the input dtype. It is slower than ``torch.ops.bandpo`` (many kernels, N-sized
temporaries). It is not a fallback for a missing extension: it ships in the same package and checks its
options and arguments with the package's core library (its C ABI), exactly as the ops do.

The math is the same as csrc/include/bandpo/bounds.h, kl.h and token_loss.h (see there for the derivation); the
KL solve uses torch's own expm1/log1p and one more Halley step than the compiled float64 path.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._tables import ALL_OPTIONS, BOUND_OPTIONS
from ._tables import DEFAULTS as _D
from .config import AGGREGATIONS, DIVERGENCES, METRIC_NAMES  # noqa: F401  (METRIC_NAMES: re-exported)

from . import _capi, rules
from .rules import KL_ESTIMATE_CLAMP, KL_LOG_RATIO_CLAMP, LOG_PROB_TOLERANCE, LOG_RATIO_CLAMP  # noqa: F401

# The solve of kl.h (csrc/include/bandpo/kl.h): its start, its step rule and its clamps, with one Halley step more than
# the compiled float64 path takes (3): the reference converges past doubt on every input, so a disagreement shows
# an error of the compiled path, not of its step count (both are held to the 50-digit table in tests/data).
_HALLEY_STEPS = 4
_EXP_MIN = -750.0  # math.h FloatTraits<double>::kExpMin: e^w is 0 to its left


def _kl_shrink_log_ratio(a: Tensor, b: Tensor, delta: float) -> Tensor:
    """Root w < 0 of F(w) = -a w - b log1p(-(a/b) expm1(w)) = delta (a + b = 1), elementwise, float64."""
    with torch.no_grad():
        a_over_b = a / b
        w = torch.minimum(-torch.sqrt(2 * delta / a_over_b), -delta / a).clamp(min=_EXP_MIN)
        b_term_live = (b > 0) & (a_over_b < math.inf)  # b log1p(z) -> 0 where z is no longer finite
        for _ in range(_HALLEY_STEPS):
            em = torch.expm1(w)
            z = a_over_b * -em
            g = -a * w - torch.where(b_term_live, b * torch.log1p(z), torch.zeros_like(z)) - delta
            a_em2 = a * em * em
            g_b_e = g * b * (1 + em)
            # Halley over one division; Newton where Halley would more than double the Newton step
            den = torch.where(a_em2 < g_b_e, 2 * a_em2, 2 * a_em2 - g_b_e)
            w = torch.clamp(w - 2 * g * (b - a * em) * em / den, min=_EXP_MIN, max=0.0)
        return w


def dcpo_bounds(lp: Tensor, eps_low: float, eps_high: float):
    """DCPO's dynamic-adaptive clipping bounds (arXiv 2509.02333) for old log-probabilities lp (float64):
    lower = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / p, 0)), upper = 1/2 + 1/2 sqrt(1 + 4 eps_high / p);
    eps = 0 gives 1. The upper root as hypot(1, sqrt(4 eps_high / p)), finite wherever the bound is."""
    ones = torch.ones_like(lp)
    lower = 0.5 + 0.5 * torch.sqrt((1 - 4 * eps_low * torch.exp(-lp)).clamp(min=0)) if eps_low > 0 else ones
    upper = 0.5 + 0.5 * torch.hypot(ones, math.sqrt(4 * eps_high) * torch.exp(-0.5 * lp)) if eps_high > 0 else ones
    return lower, upper


def divergence_bounds(lp: Tensor, p: Tensor, q: Tensor, divergence: str, delta: float, eps_low: float, eps_high: float):
    """Bounds of the ratio before relax and caps, for lp = log p, p and q = 1 - p (float64 tensors)."""
    if divergence == "dcpo":
        return dcpo_bounds(lp, eps_low, eps_high)
    if divergence == "kl":
        w_lower = _kl_shrink_log_ratio(p, q, delta)
        w_upper = _kl_shrink_log_ratio(q, p, delta)
        lower = torch.where(p > 0, torch.exp(w_lower), torch.zeros_like(p))
        upper = torch.where(q > 0, 1 - (q / p) * torch.expm1(w_upper), torch.ones_like(p))
        upper = torch.where(p > 0, upper, torch.full_like(p, float("inf")))
        return lower, upper
    if divergence == "clip":
        return torch.full_like(p, 1 - eps_low), torch.full_like(p, 1 + eps_high)
    if divergence == "tv":
        half_width = torch.full_like(p, delta) / p  # not delta / p: torch takes 1 / p first, inf for subnormal p
    elif divergence == "chi2":
        half_width = torch.sqrt(delta * q) / torch.sqrt(p)  # as bounds.h: q / p overflows for subnormal p
    else:
        raise ValueError(f"divergence must be one of {', '.join(map(repr, DIVERGENCES))}; got {divergence!r}")
    return (1 - half_width).clamp(min=0), torch.minimum(1 + half_width, 1 / p)


def finish_bounds(lower: Tensor, upper: Tensor, relax_high_p: bool, eps_low: float, eps_high: float, ratio_max: float):
    """Divergence (or given) bounds -> the bounds the ops use: united with the relax interval, lower in [0, 1],
    upper in [1, ratio_max] (bounds.h finish_bounds)."""
    if relax_high_p:
        lower = torch.minimum(lower, torch.full_like(lower, 1 - eps_low))
        upper = torch.maximum(upper, torch.full_like(upper, 1 + eps_high))
    return lower.clamp(0, 1), upper.clamp(max=ratio_max).clamp(min=1)


def _checked_options(arguments: dict, options: tuple):
    """The ``options`` (_tables rows) among a call's ``arguments``, checked by the core's C ABI as every face checks
    them (TypeError / ValueError naming the option): the C options struct."""
    return _capi.options({o.name: arguments[o.name] for o in options})


def band_bounds(
    old_logp: Tensor,
    *,
    divergence: str = _D["divergence"],
    delta: float = _D["delta"],
    eps_low: float = _D["eps_low"],
    eps_high: float = _D["eps_high"],
    relax_high_p: bool = _D["relax_high_p"],
    ratio_max: float = _D["ratio_max"],
):
    """Reference of ``torch.ops.bandpo.band_bounds``: (lower, upper) ratio bounds, shaped and typed like old_logp."""
    _checked_options(locals(), BOUND_OPTIONS)
    with torch.no_grad():
        lp = old_logp.detach().double()
        lp = torch.where(lp > LOG_PROB_TOLERANCE, torch.full_like(lp, float("nan")), lp.clamp(max=0))
        p, q = torch.exp(lp), 0.0 - torch.expm1(lp)  # +0, not -0, at lp = 0 (bounds.h rest_mass)
        lower, upper = divergence_bounds(lp, p, q, divergence, delta, eps_low, eps_high)
        lower, upper = finish_bounds(lower, upper, relax_high_p, eps_low, eps_high, ratio_max)
        nan = torch.isnan(lp)
        lower = torch.where(nan, lp, lower)
        upper = torch.where(nan, lp, upper)
        return lower.to(old_logp.dtype), upper.to(old_logp.dtype)


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Per-token KL estimate to the reference policy, as verl's kl_penalty ("k3" = low_var_kl)."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if estimator == "k3":
        d = torch.clamp(ref_logp - logp, -KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
        return torch.clamp(torch.expm1(d) - d, -KL_ESTIMATE_CLAMP, KL_ESTIMATE_CLAMP)
    raise ValueError(f"kl_estimator must be one of 'k1', 'k2', 'k3'; got {estimator!r}")


def band_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Optional[Tensor] = None,
    ref_logp: Optional[Tensor] = None,
    lower: Optional[Tensor] = None,
    upper: Optional[Tensor] = None,
    *,
    divergence: str = _D["divergence"],
    delta: float = _D["delta"],
    eps_low: float = _D["eps_low"],
    eps_high: float = _D["eps_high"],
    relax_high_p: bool = _D["relax_high_p"],
    ratio_max: float = _D["ratio_max"],
    dual_clip: Optional[float] = _D["dual_clip"],
    agg: str = _D["agg"],
    normalizer: Optional[float] = _D["normalizer"],
    kl_coef: float = _D["kl_coef"],
    kl_estimator: str = _D["kl_estimator"],
):
    """Reference of ``torch.ops.bandpo.band_loss``: (loss in logp's dtype, float32 metrics in METRIC_NAMES order).

    Differentiable w.r.t. ``logp`` through ordinary autograd.
    """
    arguments = dict(locals())  # the call's parameters, before any local name is added or rebound
    opts = _checked_options(arguments, ALL_OPTIONS)
    _capi.loss_layout(
        [
            None if t is None else (0, str(t.dtype).replace("torch.", ""), tuple(t.shape))
            for t in (logp, old_logp, advantages, mask, ref_logp, lower, upper)
        ],
        opts,
    )
    out_dtype = logp.dtype
    x = logp.double()
    old_raw = old_logp.detach().double()
    adv = advantages.detach().double()
    if adv.shape != x.shape:
        adv = adv.reshape(-1, 1).expand_as(x)
    weight = torch.ones_like(x) if mask is None else mask.detach().double()
    valid = weight != 0

    # Masked positions may hold NaN/inf: replace them before any arithmetic so they reach neither the loss
    # nor the gradient.
    zero = torch.zeros_like(x)
    x = torch.where(valid, x, zero)
    old_raw = torch.where(valid, old_raw, zero)
    old = old_raw.clamp(max=0)
    adv = torch.where(valid, adv, zero)

    ratio = rules.ratio(x, old)
    given = lower is not None
    lower_in, upper_in = lower, upper
    if given:  # the caller's bounds stand for the divergence's (token_loss.h policy_terms_given)
        lower, upper = finish_bounds(
            torch.where(valid, lower.detach().double(), zero),
            torch.where(valid, upper.detach().double(), zero + 1),
            relax_high_p,
            eps_low,
            eps_high,
            ratio_max,
        )
    else:
        lower, upper = band_bounds(old, **{o.name: arguments[o.name] for o in BOUND_OPTIONS})
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, lower, upper)
    pg = torch.maximum(unclipped, clipped)
    clip_upper, clip_lower = rules.clipped(ratio, adv, lower, upper)
    dual = torch.zeros_like(valid)
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual = (adv < 0) & (pg > cap)
        pg = torch.where(adv < 0, torch.minimum(pg, cap), pg)
    total = pg
    ref_kl = zero
    if ref_logp is not None:
        ref = torch.where(valid, ref_logp.detach().double(), zero)
        ref_kl = kl_penalty(x, ref, kl_estimator)
        total = pg + kl_coef * ref_kl if kl_coef != 0 else pg  # no 0 * inf (token_loss.h kl_term)

    weighted = torch.where(valid, weight, zero)
    n_tokens = weighted.sum()
    # Values the op refuses at valid positions (token_loss.h bad_token; old_logp already gives NaN bounds):
    # a log-probability above the tolerance. The CPU op raises; the reference, like CUDA, returns NaN.
    not_log_prob = ~(logp.detach().double() <= LOG_PROB_TOLERANCE)
    if ref_logp is not None:
        not_log_prob = not_log_prob | ~(ref_logp.detach().double() <= LOG_PROB_TOLERANCE)
    refused = valid & not_log_prob
    if given:  # bounds outside [0, 1] / [1, ratio_max] (token_loss.h bad_given_bounds)
        lo, up = lower_in.detach().double(), upper_in.detach().double()
        refused = refused | (valid & ~((lo >= 0) & (lo <= 1) & (up >= 1) & (up <= ratio_max)))
    refused = refused.any()

    def aggregate(per_token: Tensor) -> Tensor:
        return rules.aggregate(per_token, weighted, agg, normalizer)

    loss = torch.where(refused, torch.full_like(n_tokens, float("nan")), aggregate(total))
    with torch.no_grad():

        def mean(v: Tensor) -> Tensor:
            return torch.where(n_tokens != 0, (v.double() * weighted).sum() / n_tokens.clamp(min=1e-300), 0.0)

        metrics = torch.stack(
            [
                mean(clip_upper | clip_lower),
                mean(clip_upper),
                mean(clip_lower),
                mean(dual),
                mean(old_raw - x),
                mean(ratio),
                mean(ref_kl),
                aggregate(pg),
            ]
        ).float()
    return loss.to(out_dtype), metrics
