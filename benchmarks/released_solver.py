"""A re-implementation of the released BandPO bound solver, for comparison only (written from its description).

What the authors' code does, and so what this does: for each side a vectorised bisection on the ratio r
(upper bracket [1, 1/p], lower [0, 1]) of g_f(p, r) = p f(r) + (1-p) f((1-rp)/(1-p)) with f(t) = -log t
(KL(pi_old || pi_new)), arguments clamped at 1e-12; at most 50 halvings per side with a host sync
(`.item()` on the widest bracket) after every halving to stop at width 1e-6; saturation checks at r = 1/p and
r = 0 overriding the result.
"""

import torch


def _g_kl(p: torch.Tensor, r: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    rest = (1.0 - r * p) / (1.0 - p)
    return p * -torch.log(r.clamp(min=eps)) + (1.0 - p) * -torch.log(rest.clamp(min=eps))


def _bisect(p, delta, lo, hi, root_is_right_when_below, max_iter, tol):
    """Halve [lo, hi] until the widest bracket is <= tol (one host sync per halving), return the midpoint."""
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        below = _g_kl(p, mid) < delta
        go_right = below if root_is_right_when_below else ~below
        lo, hi = torch.where(go_right, mid, lo), torch.where(go_right, hi, mid)
        if torch.max(hi - lo).item() <= tol:
            break
    return 0.5 * (lo + hi)


def released_kl_bounds(p: torch.Tensor, delta: float, max_iter: int = 50, tol: float = 1e-6):
    upper_saturated = _g_kl(p, 1.0 / p) <= delta
    lower_saturated = _g_kl(p, torch.zeros_like(p)) <= delta
    # g increases on [1, 1/p] and decreases on [0, 1]
    upper = _bisect(p, delta, torch.ones_like(p), 1.0 / p, True, max_iter, tol)
    lower = _bisect(p, delta, torch.zeros_like(p), torch.ones_like(p), False, max_iter, tol)
    return torch.where(lower_saturated, torch.zeros_like(p), lower), torch.where(upper_saturated, 1.0 / p, upper)
