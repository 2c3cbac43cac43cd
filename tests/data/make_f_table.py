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

import csv
import os

import mpmath as mp
from make_kl_table import grid

mp.mp.dps = 50
HERE = os.path.dirname(os.path.abspath(__file__))


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

    # upper: x = log r in [0, -lp], the divergence increasing
    lo, hi = mp.mpf(0), -lp
    if q == 0 or divergence(mp.exp(hi) * (1 - mp.mpf(10) ** -45)) <= d:
        upper = 1 / p
    else:
        for _ in range(220):
            mid = (lo + hi) / 2
            if divergence(mp.exp(mid)) > d:
                hi = mid
            else:
                lo = mid
        upper = mp.exp((lo + hi) / 2)
    # lower: x in [-100, 0], the divergence decreasing; below e^-100 the bound is written as 0
    lo, hi = mp.mpf(-100), mp.mpf(0)
    if divergence(mp.exp(lo)) <= d:
        return mp.mpf(0), upper
    for _ in range(220):
        mid = (lo + hi) / 2
        if divergence(mp.exp(mid)) > d:
            lo = mid
        else:
            hi = mid
    return mp.exp((lo + hi) / 2), upper


def main():
    old_logps, deltas = grid()
    rows = []
    for name in F:
        for lp in old_logps:
            for d in deltas:
                lower, upper = bounds(name, lp, d)
                rows.append(
                    (
                        name,
                        repr(float(lp)),
                        repr(float(d)),
                        mp.nstr(lower, 20, min_fixed=-1, max_fixed=-1),
                        mp.nstr(upper, 20, min_fixed=-1, max_fixed=-1),
                    )
                )
    with open(os.path.join(HERE, "f_bounds_mpmath.csv"), "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["divergence", "old_logp", "delta", "lower", "upper"])
        w.writerows(rows)
    print(f"wrote {len(rows)} rows")


if __name__ == "__main__":
    main()
