"""Band bounds of any f-divergence: ``f_divergence_bounds(old_logp, f, delta=...)``, for band_loss's ``lower`` and
``upper`` (the fused loss takes bounds of any making).

The convention is the built-in divergences' (csrc/include/bandpo/bounds.h, kl.h): the divergence of the new
distribution from the old one, D = sum_x pi_old(x) f(pi_new(x) / pi_old(x)), for a convex f with f(1) = 0. A token
of old probability p moves to p r and the other tokens keep their proportions (the least-divergent completion), so

    D(r) = p f(r) + q f(rho),   q = 1 - p,   rho = 1 - p (r - 1) / q   (the other tokens' ratio).

The bounds are the smallest r in [0, 1] and the largest r in [1, 1/p] with D(r) <= delta; they saturate at 0 and
1/p where D stays below delta up to the simplex's edge, and then take the relax interval and the ratio cap as
band_bounds' do. With f = -log t this is the built-in "kl" (KL(old || new)), with |t - 1| / 2 "tv" and with
(t - 1)^2 "chi2": those are the solver's test (tests/test_f_divergence.py).

The solve runs in float64 whatever the input dtype. As kl.h does, each side is one problem in w = log of the
ratio that shrinks (r for the lower bound, rho for the upper one; _Side): halvings of the bracket in log(-w), then
Newton on log D with the same halving wherever a step would leave the bracket, then two plain Newton steps; a
fixed count (no data-dependent host sync: it runs as it is on CUDA and under torch.compile). f is evaluated in its
centred form f(1 + x) near t = 1, with x computed without cancellation (expm1(w), and -(a expm1(w)) / b for the
ratio that grows), and as f(t) below: the named divergences give both forms exactly (-log1p(x) for KL); a
function of t is called at t = 1 + x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from . import reference
from .config import BandConfig, resolve_config
from .rules import LOG_PROB_TOLERANCE


@dataclass(frozen=True)
class FDivergence:
    """A convex f with f(1) = 0, elementwise over tensors, in two forms of the same function: ``f(t)``, ``g(t)`` =
    f'(t) for t >= 0, and centred ``f1(x)`` = f(1 + x), ``g1(x)`` = f'(1 + x), exact where x is small (the named ones:
    -log1p(x) for -log t; tests/test_f_divergence.py holds the forms together). ``recession`` = lim f(t) / t as
    t -> inf (the other tokens' term where p = 1 exactly; may be inf)."""

    name: str
    f: Callable[[Tensor], Tensor]
    g: Callable[[Tensor], Tensor]
    f1: Callable[[Tensor], Tensor]
    g1: Callable[[Tensor], Tensor]
    recession: float


def _xlogx(t: Tensor) -> Tensor:
    return torch.xlogy(t, t)


def _xlog1px(x: Tensor) -> Tensor:
    """(1 + x) log(1 + x), 0 at x = -1."""
    return torch.where(x > -1, (1 + x) * torch.log1p(x), torch.zeros_like(x))


def _alpha(alpha: float) -> FDivergence:
    """Amari's alpha-divergence, f(t) = (t^alpha - 1 - alpha (t - 1)) / (alpha (alpha - 1)): alpha -> 0 is
    KL(old || new) plus nothing (f = t - 1 - log t), alpha -> 1 KL(new || old), alpha = 2 half of chi2."""
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number; got {alpha!r}")
    a = float(alpha)
    if a == 0:
        return FDivergence(
            "alpha=0",
            lambda t: t - 1 - torch.log(t),
            lambda t: 1 - 1 / t,
            lambda x: x - torch.log1p(x),
            lambda x: x / (1 + x),
            1.0,
        )
    if a == 1:
        return FDivergence(
            "alpha=1",
            lambda t: _xlogx(t) - t + 1,
            torch.log,
            lambda x: _xlog1px(x) - x,
            torch.log1p,
            math.inf,
        )
    k = a * (a - 1)
    return FDivergence(
        f"alpha={a:g}",
        lambda t: (torch.pow(t, a) - 1 - a * (t - 1)) / k,
        lambda t: (torch.pow(t, a - 1) - 1) / (a - 1),
        lambda x: (torch.expm1(a * torch.log1p(x)) - a * x) / k,
        lambda x: torch.expm1((a - 1) * torch.log1p(x)) / (a - 1),
        math.inf if a > 1 else 1 / (1 - a),
    )


def _js_f(t: Tensor) -> Tensor:
    return (_xlogx(t) - torch.xlogy(1 + t, (1 + t) / 2)) / 2


def _js_f1(x: Tensor) -> Tensor:
    # (1 + x) log1p(x) - (2 + x) log1p(x / 2), whose terms cancel to x log 2 for large x (800 ulps lost at x = 1e246):
    # there as (1 + x) log1p(x / (2 + x)) - log1p(x / 2)
    small = (_xlog1px(x) - (2 + x) * torch.log1p(x / 2)) / 2
    large = ((1 + x) * torch.log1p(x / (2 + x)) - torch.log1p(x / 2)) / 2
    return torch.where(x > 1, large, small)


NAMED = {
    # KL(old || new): the built-in "kl"
    "kl": FDivergence(
        "kl", lambda t: -torch.log(t), lambda t: -1 / t, lambda x: -torch.log1p(x), lambda x: -1 / (1 + x), 0.0
    ),
    # total variation, sum |new - old| / 2: the built-in "tv" (|s - p| <= delta)
    "tv": FDivergence(
        "tv",
        lambda t: (t - 1).abs() / 2,
        lambda t: torch.sign(t - 1) / 2,
        lambda x: x.abs() / 2,
        lambda x: torch.sign(x) / 2,
        0.5,
    ),
    # Pearson chi2 with the old distribution as base: the built-in "chi2" ((s - p)^2 / (p q) <= delta)
    "chi2": FDivergence(
        "chi2", lambda t: (t - 1) ** 2, lambda t: 2 * (t - 1), lambda x: x * x, lambda x: 2 * x, math.inf
    ),
    # KL(new || old)
    "reverse_kl": FDivergence(
        "reverse_kl", _xlogx, lambda t: torch.log(t) + 1, _xlog1px, lambda x: torch.log1p(x) + 1, math.inf
    ),
    # sum (sqrt(new) - sqrt(old))^2: twice the squared Hellinger distance of the 1/2 convention
    "hellinger": FDivergence(
        "hellinger",
        lambda t: (torch.sqrt(t) - 1) ** 2,
        lambda t: 1 - torch.rsqrt(t),
        lambda x: (x / (torch.sqrt(1 + x) + 1)) ** 2,
        lambda x: 1 - torch.rsqrt(1 + x),
        1.0,
    ),
    # Jensen-Shannon, in nats: (KL(new || m) + KL(old || m)) / 2 with m = (new + old) / 2
    "js": FDivergence(
        "js",
        _js_f,
        lambda t: (torch.log(t) - torch.log((1 + t) / 2)) / 2,
        _js_f1,
        lambda x: torch.log1p(x / (2 + x)) / 2,
        math.log(2.0) / 2,
    ),
}


def _from_function(f: Callable, derivative: Optional[Callable]) -> FDivergence:
    """A user's f(t) (and f'(t), else autograd's) as an FDivergence: the centred form calls it at t = 1 + x."""

    def g(t: Tensor) -> Tensor:
        if derivative is not None:
            return derivative(t)
        with torch.enable_grad():
            t = t.detach().requires_grad_()
            (grad,) = torch.autograd.grad(f(t).sum(), t)
        return grad

    one = torch.ones((), dtype=torch.float64)
    f_at_1 = float(f(one))
    if not abs(f_at_1) <= 1e-12:
        raise ValueError(f"f must have f(1) = 0 (a divergence of a distribution from itself is 0); got f(1) = {f_at_1}")
    # lim f(t) / t: settled if it is the same at 1e100 and 1e200, else taken as inf (t log t grows as log t)
    near, far = (float(f(torch.tensor(v, dtype=torch.float64)) / v) for v in (1e100, 1e200))
    recession = far if abs(far - near) <= 1e-6 * max(1.0, abs(far)) else math.inf
    return FDivergence(
        getattr(f, "__name__", "f"),
        f,
        g,
        lambda x: f(1 + x),
        lambda x: g(1 + x),
        recession if not math.isnan(recession) else math.inf,
    )


def f_divergence(f: Union[str, Callable, FDivergence], derivative: Optional[Callable] = None, alpha=None):
    """The FDivergence of a name ("kl", "tv", "chi2", "reverse_kl", "hellinger", "js", "alpha" with ``alpha``), of a
    function f(t) over tensors (with its derivative, else autograd's), or an FDivergence as it is."""
    if isinstance(f, FDivergence):
        return f
    if isinstance(f, str):
        if f == "alpha":
            if alpha is None:
                raise ValueError('f="alpha" needs alpha (a number: 0 is KL(old || new), 1 KL(new || old))')
            return _alpha(alpha)
        if f not in NAMED:
            names = ", ".join(repr(n) for n in [*NAMED, "alpha"])
            raise ValueError(f"f must be one of {names}, or a function of t; got {f!r}")
        if alpha is not None:
            raise ValueError(f"alpha is an option of f='alpha' only; got f={f!r}")
        return NAMED[f]
    if callable(f):
        return _from_function(f, derivative)
    raise TypeError(f"f must be a name, a function of t or a bandpo.FDivergence; got {type(f).__name__}")


# The solve in w = log t, t the ratio that shrinks. Its root lies anywhere in [-700, -1e-320]: near 0 where the
# other tokens barely move (the upper bound of a token of p = 1e-300), far out where the token itself nearly
# vanishes. So: _BISECTIONS halvings of the bracket in log(-w) first (751 wide: 14 leave 5%), then _NEWTON steps of
# Newton on log D (D grows like a power of t, or of log t, far from t = 1: on log D a step lands) with the same
# halving wherever a step would leave the bracket, then two plain Newton steps for the last bits.
_BISECTIONS = 14
_NEWTON = 12
_W_MIN = -700.0  # e^-700 = 1e-304, still normal (f(t) exact): a root below it is the bound at the simplex's edge
_W_TINY = 5e-324  # the smallest |w| the halving in log(-w) takes


class _Side:
    """One side's problem: a f(t) + b f(u) = delta, where t = e^w <= 1 is the ratio that shrinks (weight a) and
    u = 1 + x_u, x_u = -(a / b) expm1(w) >= 0, the one that grows (weight b). The lower bound is (a, b) = (p, q),
    r = t; the upper bound (q, p), r = u, rho = t (as kl.h solves KL)."""

    def __init__(self, fd: FDivergence, a: Tensor, b: Tensor):
        self.fd, self.a, self.b = fd, a, b
        self.b_pos = b > 0
        self.b_safe = torch.where(self.b_pos, b, torch.ones_like(b))

    def divergence(self, w: Tensor, slope: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """D(w) and (with slope) dD/dw. f at t = e^w: the centred form near t = 1, f itself below (where t - 1
        rounds to -1). Where b = 0, the grown side's term is its limit, a (1 - t) f'(inf)."""
        fd, a, b = self.fd, self.a, self.b
        t, x = torch.exp(w), torch.expm1(w)
        near = w > -0.5  # t > 0.6
        x_u = -(a * x) / self.b_safe  # a / b alone may overflow (b = 1e-300)
        limit = torch.where(x == 0, torch.zeros_like(w), -a * x * fd.recession)
        grown = torch.where(self.b_pos, b * fd.f1(x_u), limit)
        a_f_t = torch.where(a > 0, a * torch.where(near, fd.f1(x), fd.f(t)), torch.zeros_like(w))  # no 0 * inf
        if not slope:
            return a_f_t + grown, None
        g_t = torch.where(near, fd.g1(x), fd.g(t))
        g_u = torch.where(self.b_pos, fd.g1(x_u), torch.full_like(w, fd.recession))
        return a_f_t + grown, a * t * (g_t - g_u)

    def solve(self, delta: float) -> Tensor:
        """w of the root in [W_MIN, 0], or W_MIN where the divergence stays below delta up to there."""
        lo, hi = torch.full_like(self.a, _W_MIN), torch.zeros_like(self.a)

        def halve() -> Tensor:  # the middle of [lo, hi] in log(-w)
            return -torch.exp((torch.log(-lo) + torch.log(torch.clamp(-hi, min=_W_TINY))) / 2)

        def narrow(w: Tensor, slope: bool = True) -> tuple[Tensor, Optional[Tensor]]:
            nonlocal lo, hi
            d, d_w = self.divergence(w, slope)
            beyond = d > delta  # the root lies right of w (D decreases in w)
            lo = torch.where(beyond, w, lo)
            hi = torch.where(beyond, hi, w)
            return d, d_w

        for _ in range(_BISECTIONS):
            narrow(halve(), slope=False)
        w = halve()
        log_delta = math.log(delta)
        for _ in range(_NEWTON):
            d, d_w = narrow(w)
            newton = w - (torch.log(d) - log_delta) * d / d_w
            ok = torch.isfinite(newton) & (newton >= lo) & (newton <= hi)
            w = torch.where(ok, newton, halve())
        # two plain Newton steps, kept within the bracket: the last bits of w
        for _ in range(2):
            d, d_w = self.divergence(w)
            newton = w - (d - delta) / d_w
            w = torch.where(torch.isfinite(newton) & (newton >= lo) & (newton <= hi), newton, w)
        d_min, _ = self.divergence(torch.full_like(w, _W_MIN), slope=False)
        return torch.where(d_min <= delta, torch.full_like(w, _W_MIN), w)


@torch.compiler.disable
def _resolve(f, derivative, alpha, config, overrides) -> tuple[FDivergence, BandConfig]:
    """The divergence and the options, checked (through the C ABI's rules: eager, outside a compiled graph)."""
    if "divergence" in overrides:
        raise ValueError("divergence plays no part in f_divergence_bounds: f is the divergence")
    return f_divergence(f, derivative, alpha), resolve_config(config, overrides)


def f_divergence_bounds(
    old_logp: Tensor,
    f: Union[str, Callable, FDivergence],
    config: Optional[BandConfig] = None,
    *,
    derivative: Optional[Callable] = None,
    alpha: Optional[float] = None,
    **overrides,
) -> tuple[Tensor, Tensor]:
    """Band bounds (lower, upper) of the f-divergence ``f``, shaped and typed like ``old_logp``, for
    ``band_loss(..., lower=lower, upper=upper)``.

    Args:
        old_logp: old-policy log-probabilities of the sampled tokens (<= 0), any shape, float32, float64, bfloat16 or
            float16, any device. Values up to 1e-6 above 0 count as 0; NaN or larger values give NaN.
        f: "kl", "tv", "chi2" (the built-in divergences), "reverse_kl", "hellinger" (sum (sqrt(new) - sqrt(old))^2),
            "js" (Jensen-Shannon, nats), "alpha" (Amari's, with ``alpha``); or a convex function f(t) over tensors
            with f(1) = 0, its derivative from autograd unless ``derivative`` gives it.
        config, overrides: the bound options of BandConfig: ``delta`` (default 0.05), ``relax_high_p``, ``eps_low``,
            ``eps_high``, ``ratio_max`` (10); ``divergence`` plays no part.

    Returns lower in [0, 1] and upper in [1, ratio_max], as band_bounds returns them; computed in float64 (about
    30 evaluations of f per side, each a few elementwise passes over the tokens: far slower than band_bounds' built-in divergences, and meant for the
    bounds a run computes once per batch).
    """
    if not isinstance(old_logp, Tensor):
        raise TypeError(f"old_logp must be a torch.Tensor; got {type(old_logp).__name__}")
    if not old_logp.is_floating_point():
        raise TypeError(f"old_logp must be float32, float64, bfloat16 or float16; got {old_logp.dtype}")
    fd, cfg = _resolve(f, derivative, alpha, config, overrides)
    with torch.no_grad():
        raw = old_logp.detach().double()
        lp = torch.where(raw > LOG_PROB_TOLERANCE, torch.full_like(raw, math.nan), raw.clamp(max=0))
        p, q = torch.exp(lp), 0.0 - torch.expm1(lp)
        zero_p = p == 0  # old_logp = -inf (or below float64's range): nothing bounds either side
        p_safe = torch.where(zero_p, torch.ones_like(p), p)
        q_safe = torch.where(zero_p, torch.zeros_like(q), q)
        # lower: r = t of (p, q); where p = 1, a recession of inf pins it at 1 (any r < 1 moves mass onto tokens of
        # probability 0)
        w_low = _Side(fd, p_safe, q_safe).solve(cfg.delta)
        lower = torch.where(w_low <= _W_MIN, torch.zeros_like(w_low), torch.exp(w_low))
        if math.isinf(fd.recession):
            lower = torch.where(q_safe == 0, torch.ones_like(lower), lower)
        # upper: r = u of (q, p), up to 1 / p (the other tokens at 0); where p = 1 it is 1
        w_up = _Side(fd, q_safe, p_safe).solve(cfg.delta)
        upper = torch.where((w_up <= _W_MIN) | (q_safe == 0), 1 / p_safe, 1 - (q_safe / p_safe) * torch.expm1(w_up))
        lower = torch.where(zero_p, torch.zeros_like(lower), lower)
        upper = torch.where(zero_p, torch.full_like(upper, math.inf), torch.minimum(upper, 1 / p_safe))
        lower, upper = reference.finish_bounds(lower, upper, cfg.relax_high_p, cfg.eps_low, cfg.eps_high, cfg.ratio_max)
        nan = torch.isnan(lp)
        lower = torch.where(nan, lp, lower)
        upper = torch.where(nan, lp, upper)
        return lower.to(old_logp.dtype), upper.to(old_logp.dtype)


__all__ = ["FDivergence", "f_divergence", "f_divergence_bounds", "NAMED"]
