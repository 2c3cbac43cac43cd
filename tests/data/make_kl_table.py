"""Regenerate kl_bounds_mpmath.csv: exact Band-KL ratio bounds from a 50-digit bisection (mpmath).

    python tests/data/make_kl_table.py        # about half a minute

The condition is solved in its original form, p log(p/s) + (1-p) log((1-p)/(1-s)) = delta with s = p r,
by bisection on log r, independently of the library's reparametrised Halley solver. Grid values of old_logp
and delta are float32-representable, so one table checks both the float64 and the float32 paths.
Lower bounds below e^-100 are written as 0 (tests compare them with an absolute tolerance).
"""

import csv
import os

import mpmath as mp
import numpy as np

mp.mp.dps = 50
HERE = os.path.dirname(os.path.abspath(__file__))


def kl(p, q, s):
    return p * mp.log(p / s) + q * mp.log(q / (1 - s))


def bounds(old_logp: float, delta: float):
    lp = mp.mpf(old_logp)
    d = mp.mpf(delta)
    p = mp.exp(lp)
    q = -mp.expm1(lp)
    if q == 0:
        return mp.exp(-d), mp.mpf(1)
    return bisect_bounds(lambda r: kl(p, q, p * r), lp, d)


def _crossing(divergence, d, inside, outside):
    """e^x for the x between ``inside`` (divergence(e^x) <= d there) and ``outside`` (> d there) where the
    divergence reaches d, by 220 bisections."""
    for _ in range(220):
        mid = (inside + outside) / 2
        if divergence(mp.exp(mid)) > d:
            outside = mid
        else:
            inside = mid
    return mp.exp((inside + outside) / 2)


def bisect_bounds(divergence, lp, d, upper_is_the_end=False):
    """(lower, upper): the r at which divergence(r) (decreasing below r = 1, increasing above) reaches d, by 220
    bisections of log r each side; upper is 1/p (r at s = 1) when d is not reached below it (or when
    upper_is_the_end), lower is 0 when d is not reached above e^-100."""
    # upper: x = log r in [0, -lp]
    if upper_is_the_end or divergence(mp.exp(-lp) * (1 - mp.mpf(10) ** -45)) <= d:
        upper = 1 / mp.exp(lp)
    else:
        upper = _crossing(divergence, d, mp.mpf(0), -lp)
    # lower: x in [-100, 0]; below e^-100 the bound is written as 0
    if divergence(mp.exp(mp.mpf(-100))) <= d:
        return mp.mpf(0), upper
    return _crossing(divergence, d, mp.mpf(0), mp.mpf(-100)), upper


def write_table(name: str, header: list, rows: list) -> None:
    """rows of (leading columns..., lower, upper) as HERE/name, the bounds to 20 digits."""
    with open(os.path.join(HERE, name), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(row[:-2] + tuple(mp.nstr(x, 20, min_fixed=-1, max_fixed=-1) for x in row[-2:]) for row in rows)
    print(f"wrote {len(rows)} rows")


def grid():
    neg = -np.exp(np.linspace(np.log(1e-7), np.log(700.0), 110))
    old_logps = np.concatenate(
        [[0.0, -1e-12, -1e-9], neg, [-700.0, -80.0, -30.0, np.log(0.01), np.log(0.08), np.log(0.5), np.log(0.99)]]
    )
    deltas = np.concatenate([np.exp(np.linspace(np.log(1e-3), 0.0, 11)), [0.05]])
    return np.unique(old_logps.astype(np.float32)).astype(float), np.unique(deltas.astype(np.float32)).astype(float)


def main():
    old_logps, deltas = grid()
    rows = [(repr(float(lp)), repr(float(d)), *bounds(lp, d)) for lp in old_logps for d in deltas]
    write_table("kl_bounds_mpmath.csv", ["old_logp", "delta", "lower", "upper"], rows)


if __name__ == "__main__":
    main()
