"""Regenerate f_bounds_mpmath.csv: exact Band bounds of squared-Hellinger, reverse-KL and Jensen-Shannon divergences
from a 50-digit bisection (mpmath), on the grid of kl_bounds_mpmath.csv.

    python tests/data/make_f_table.py        # about two minutes

Each condition is solved in its original form, p f(r) + q f((1 - p r) / q) = delta (the divergence of the new
distribution from the old, the other tokens rescaled), by bisection on log r, independently of
bandpo.f_divergence's solver (Newton in the log of the other side's ratio, on centred forms of f):

    hellinger   f(t) = (sqrt(t) - 1)^2                      sum (sqrt(new) - sqrt(old))^2
    reverse_kl  f(t) = t log t                              KL(new || old)
    js          f(t) = (t log t - (1 + t) log((1 + t) / 2)) / 2   Jensen-Shannon, nats

Where p = 1 (q = 0) the other tokens' term is its limit, (1 - r) lim f(t) / t. Lower bounds below e^-100 are
written as 0 (tests compare them with an absolute tolerance), as in kl_bounds_mpmath.csv.
"""

import mpmath as mp
from make_kl_table import bisect_bounds, grid, write_table

mp.mp.dps = 50


def _xlogx(t):
    return t * mp.log(t) if t > 0 else mp.mpf(0)


F = {
    "hellinger": (lambda t: (mp.sqrt(t) - 1) ** 2, mp.mpf(1)),
    "reverse_kl": (_xlogx, mp.inf),
    "js": (lambda t: (_xlogx(t) - _xlogx(1 + t) + (1 + t) * mp.log(2)) / 2, mp.log(2) / 2),
}


def bounds(name: str, old_logp: float, delta: float):
    f, recession = F[name]
    lp = mp.mpf(old_logp)
    d = mp.mpf(delta)
    p = mp.exp(lp)
    q = -mp.expm1(lp)

    def divergence(r):
        if q == 0:
            return f(r) + ((1 - r) * recession if r != 1 else 0)
        return p * f(r) + q * f((1 - p * r) / q)

    return bisect_bounds(divergence, lp, d, upper_is_the_end=q == 0)


def main():
    old_logps, deltas = grid()
    rows = [
        (name, repr(float(lp)), repr(float(d)), *bounds(name, lp, d)) for name in F for lp in old_logps for d in deltas
    ]
    write_table("f_bounds_mpmath.csv", ["divergence", "old_logp", "delta", "lower", "upper"], rows)


if __name__ == "__main__":
    main()
