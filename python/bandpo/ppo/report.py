"""The end of a run: summary.json, the summary table, and the plots (matplotlib, headless)."""

from __future__ import annotations

import json
import math
import os
import statistics

import torch

from ..api import band_bounds
from ..config import BandConfig
from .train import PROB_BUCKETS


def final_mean(records: list[dict], key: str) -> float:
    """Mean of `key` over the last 10% of steps (at least one)."""
    tail = records[-max(1, math.ceil(len(records) / 10)):]
    return statistics.fmean(r[key] for r in tail)


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def summarize(runs: dict[str, dict[int, list[dict]]]) -> dict:
    """{"methods": {name: {final_reward, final_entropy: {mean, std} over seeds, seconds (mean per seed run),
    seeds}}} from runs[method][seed] = the per-step records."""
    methods = {}
    for name, by_seed in runs.items():
        seeds = sorted(by_seed)
        methods[name] = {
            "final_reward": mean_std([final_mean(by_seed[s], "reward") for s in seeds]),
            "final_entropy": mean_std([final_mean(by_seed[s], "entropy") for s in seeds]),
            "seconds": statistics.fmean(by_seed[s][-1]["seconds"] for s in seeds),
            "seeds": len(seeds),
        }
    return {"methods": methods}


def summary_table(summary: dict, initial_reward: dict[str, float]) -> str:
    lines = [f"{'method':28s} {'start reward':>12s} {'final reward':>16s} {'final entropy':>16s} {'s/run':>7s} seeds",
             "-" * 90]
    for name, m in summary["methods"].items():
        r, e = m["final_reward"], m["final_entropy"]
        lines.append(f"{name:28s} {initial_reward.get(name, float('nan')):>12.3f} {r['mean']:>8.3f} ± {r['std']:<5.3f} "
                     f"{e['mean']:>8.3f} ± {e['std']:<5.3f} {m['seconds']:>7.1f} {m['seeds']:>5d}")
    return "\n".join(lines)


def plot_all(out_dir: str, runs: dict[str, dict[int, list[dict]]], configs: dict[str, BandConfig]) -> list[str]:
    """Writes training.png, clipfrac_by_prob.png and bounds.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, by_seed in runs.items():
        for ax, key in zip(axes, ("reward", "entropy")):
            curves = torch.tensor([[r[key] for r in recs] for recs in by_seed.values()])
            steps = range(1, curves.shape[1] + 1)
            line, = ax.plot(steps, curves.mean(0), label=name)
            ax.fill_between(steps, curves.min(0).values, curves.max(0).values, color=line.get_color(), alpha=0.2)
    for ax, label in zip(axes, ("reward (exact answers)", "policy entropy on sampled positions (nats)")):
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("mean over seeds; band = min..max over seeds")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "training.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    n_buckets = len(PROB_BUCKETS) - 1
    width = 0.8 / max(1, len(runs))
    labels = [f"[{PROB_BUCKETS[i]:.1f},{min(PROB_BUCKETS[i + 1], 1.0):.1f}{']' if i == n_buckets - 1 else ')'}"
              for i in range(n_buckets)]
    for k, (name, by_seed) in enumerate(runs.items()):
        for ax, key in zip(axes, ("upper", "lower")):
            clipped = torch.zeros(n_buckets)
            tokens = torch.zeros(n_buckets)
            for recs in by_seed.values():
                for r in recs:
                    tokens += torch.tensor(r["tokens_by_prob"])
                    clipped += torch.tensor(r[f"clipfrac_{key}_by_prob"]) * torch.tensor(r["tokens_by_prob"])
            ax.bar([i + k * width for i in range(n_buckets)], clipped / tokens.clamp(min=1), width, label=name)
    for ax, key in zip(axes, ("upper (A > 0, r > upper bound)", "lower (A < 0, r < lower bound)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(n_buckets)], labels)
        ax.set_xlabel("old probability of the token")
        ax.set_title(f"clip fraction, {key}")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "clipfrac_by_prob.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    p = torch.logspace(-4, 0, 400, dtype=torch.float64)[:-1]
    for name, cfg in configs.items():
        lower, upper = band_bounds(p.log(), cfg)
        line, = ax.plot(p, upper, label=name)
        ax.plot(p, lower.clamp(min=1e-3), color=line.get_color(), linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("old probability p")
    ax.set_ylabel("ratio bound r (solid: upper, dashed: lower, floored at 1e-3)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "bounds.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_summary(out_dir: str, summary: dict) -> str:
    path = os.path.join(out_dir, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    return path
