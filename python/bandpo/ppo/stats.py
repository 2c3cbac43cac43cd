"""The paired comparisons of a pre-registered experiment (docs/ppo/PROTOCOL.md): per seed, a method's value minus
the baseline's (both from the same warm start), summarised by the mean difference, its 95% percentile-bootstrap
interval, and the sign test's counts and exact two-sided p-value."""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 10_000  # bootstrap resamples of the seeds
BOOTSTRAP_SEED = 20_260_306  # fixed: the same intervals from the same data


def paired(treatment: list[float], baseline: list[float]) -> dict:
    """{"mean", "low", "high", "wins", "losses", "ties", "sign_p", "n"} of the differences treatment - baseline,
    one per seed in the same order."""
    if len(treatment) != len(baseline) or not treatment:
        raise ValueError(f"paired: need one value per seed on both sides, got {len(treatment)} and {len(baseline)}")
    d = np.asarray(treatment, np.float64) - np.asarray(baseline, np.float64)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = d[rng.integers(0, len(d), (RESAMPLES, len(d)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return {
        "mean": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "wins": wins,
        "losses": losses,
        "ties": len(d) - wins - losses,
        "sign_p": sign_test(wins, losses),
        "n": len(d),
    }


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided p-value of wins against losses under a fair coin (ties dropped); 1 with no untied pair."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def mean_interval(values: list[float]) -> dict:
    """{"mean", "low", "high"}: the mean over seeds and its 95% percentile-bootstrap interval."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = v[rng.integers(0, len(v), (RESAMPLES, len(v)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(v.mean()), "low": float(low), "high": float(high)}
