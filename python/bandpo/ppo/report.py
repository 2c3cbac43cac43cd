"""The end of a run: summary.json, the summary table, and the plots (matplotlib, headless).

One definition of each reported number, used by the table, summary.json and the plots alike:
- final reward / entropy: the mean over the last 10% of RL steps (at least one) of the per-step value;
- pass@k, distinct@16: the evaluation at the last step (evaluate.py), or of the warm start ("start");
- clip fractions by old probability: clipped tokens over valid tokens, pooled over every step and seed;
each then as mean and standard deviation (population) over seeds.
"""

from __future__ import annotations

import json
import math
import os
import statistics

import torch

from ..api import band_bounds
from ..f_divergence import f_divergence_bounds
from ..config import BandConfig
from .evaluate import metric_names
from .methods import f_divergence_of
from .train import PROB_BUCKETS

EVAL_METRICS = metric_names()


def final_mean(records: list[dict], key: str) -> float:
    """Mean of `key` over the last 10% of steps (at least one)."""
    tail = records[-max(1, math.ceil(len(records) / 10)) :]
    return statistics.fmean(r[key] for r in tail)


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def pooled_clipfrac(by_seed: dict[int, list[dict]], side: str) -> list[float]:
    """Per old-probability bucket: tokens clipped at `side` ("upper"/"lower") over valid tokens, every step and
    seed pooled."""
    clipped = torch.zeros(len(PROB_BUCKETS) - 1, dtype=torch.float64)
    tokens = torch.zeros_like(clipped)
    for recs in by_seed.values():
        for r in recs:
            n = torch.tensor(r["tokens_by_prob"], dtype=torch.float64)
            tokens += n
            clipped += torch.tensor(r[f"clipfrac_{side}_by_prob"], dtype=torch.float64) * n
    return (clipped / tokens.clamp(min=1)).tolist()


def eval_curve(recs: list[dict], start: dict | None) -> tuple[list[int], dict[str, list[float]]]:
    steps = ([0] if start else []) + [r["step"] for r in recs if "eval" in r]
    evals = ([start] if start else []) + [r["eval"] for r in recs if "eval" in r]
    return steps, {m: [e[m] for e in evals] for m in EVAL_METRICS}


def per_seed_metrics(by_seed: dict[int, list[dict]]) -> dict[str, list[float]]:
    """{"final_reward", "final_entropy", and each evaluation metric at the last step (when every seed has it):
    one value per seed, in order of seeds}: the numbers the summary and the experiments compare."""
    seeds = sorted(by_seed)
    out = {
        "final_reward": [final_mean(by_seed[s], "reward") for s in seeds],
        "final_entropy": [final_mean(by_seed[s], "entropy") for s in seeds],
    }
    finals = [by_seed[s][-1].get("eval") for s in seeds]
    if all(finals):
        out.update({k: [f[k] for f in finals] for k in EVAL_METRICS})
    return out


def summarize(runs: dict[str, dict[int, list[dict]]], start_eval: dict[int, dict] | None = None) -> dict:
    """{"start": warm-start evaluation, "methods": {name: {final_reward, final_entropy, pass@k..., distinct@16:
    {mean, std} over seeds, clipfrac_{upper,lower}_by_prob (pooled), prob_buckets, seconds (mean per run),
    seeds}}} from runs[method][seed] = the per-step records."""
    methods = {}
    for name, by_seed in runs.items():
        seeds = sorted(by_seed)
        m = {k: mean_std(v) for k, v in per_seed_metrics(by_seed).items()}
        m["clipfrac_upper_by_prob"] = pooled_clipfrac(by_seed, "upper")
        m["clipfrac_lower_by_prob"] = pooled_clipfrac(by_seed, "lower")
        m["prob_buckets"] = [min(b, 1.0) for b in PROB_BUCKETS]
        m["seconds"] = statistics.fmean(by_seed[s][-1]["seconds"] for s in seeds)
        m["seeds"] = len(seeds)
        methods[name] = m
    out = {"methods": methods}
    if start_eval:
        out["start"] = {k: mean_std([start_eval[s][k] for s in sorted(start_eval)]) for k in EVAL_METRICS}
    return out


def summary_table(summary: dict) -> str:
    cols = ["final_reward"] + [k for k in EVAL_METRICS] + ["final_entropy"]
    heads = ["reward (last 10%)"] + EVAL_METRICS + ["entropy (nats)"]
    lines = [f"{'method':26s} " + " ".join(f"{h:>17s}" for h in heads) + f" {'s/run':>6s} seeds", "-" * 150]

    def cell(m, key):
        return f"{m[key]['mean']:>8.3f} ± {m[key]['std']:<6.3f}" if key in m else f"{'':17s}"

    if "start" in summary:
        lines.append(f"{'(warm start)':26s} " + " ".join(cell(summary["start"], k) for k in cols))
    for name, m in summary["methods"].items():
        lines.append(f"{name:26s} " + " ".join(cell(m, k) for k in cols) + f" {m['seconds']:>6.1f} {m['seeds']:>5d}")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, steps, curves: torch.Tensor, label: str):
    """Mean over seeds with a band of one standard deviation."""
    mean, std = curves.mean(0), curves.std(0, unbiased=False)
    (line,) = ax.plot(steps, mean, label=label)
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)


def plot_all(
    out_dir: str,
    runs: dict[str, dict[int, list[dict]]],
    configs: dict[str, BandConfig],
    start_eval: dict[int, dict] | None = None,
    sweep: bool = False,
) -> list[str]:
    """Writes training.png, eval.png, clipfrac_by_prob.png, bounds.png (and delta_sweep.png); returns the paths."""
    plt = _pyplot()
    paths = []

    def save(fig, name):
        fig.tight_layout()
        paths.append(os.path.join(out_dir, name))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, by_seed in runs.items():
        for ax, key in zip(axes, ("reward", "entropy")):
            curves = torch.tensor([[r[key] for r in recs] for recs in by_seed.values()])
            _band(ax, range(1, curves.shape[1] + 1), curves, name)
    for ax, label in zip(axes, ("reward (pass@1 on training prompts)", "policy entropy at sampled positions (nats)")):
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("mean over seeds; band = ± one standard deviation")
    save(fig, "training.png")

    fig, axes = plt.subplots(1, len(EVAL_METRICS), figsize=(4 * len(EVAL_METRICS), 3.8))
    for name, by_seed in runs.items():
        curves = {m: [] for m in EVAL_METRICS}
        steps = []
        for seed, recs in by_seed.items():
            steps, values = eval_curve(recs, (start_eval or {}).get(seed))
            for m in EVAL_METRICS:
                curves[m].append(values[m])
        for ax, m in zip(axes, EVAL_METRICS):
            _band(ax, steps, torch.tensor(curves[m]), name)
    for ax, m in zip(axes, EVAL_METRICS):
        ax.set_xlabel("RL step (0: the warm start)")
        ax.set_title(f"{m}, held-out prompts")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save(fig, "eval.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    n_buckets = len(PROB_BUCKETS) - 1
    width = 0.8 / max(1, len(runs))
    labels = [
        f"[{PROB_BUCKETS[i]:.1f},{min(PROB_BUCKETS[i + 1], 1.0):.1f}{']' if i == n_buckets - 1 else ')'}"
        for i in range(n_buckets)
    ]
    for k, (name, by_seed) in enumerate(runs.items()):
        for ax, side in zip(axes, ("upper", "lower")):
            ax.bar([i + k * width for i in range(n_buckets)], pooled_clipfrac(by_seed, side), width, label=name)
    for ax, side in zip(axes, ("upper (A > 0, r > upper bound)", "lower (A < 0, r < lower bound)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(n_buckets)], labels)
        ax.set_xlabel("old probability of the token")
        ax.set_title(f"clip fraction, {side}")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    save(fig, "clipfrac_by_prob.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    p = torch.logspace(-4, 0, 400, dtype=torch.float64)[:-1]
    for name, cfg in configs.items():
        f = f_divergence_of(name)
        lower, upper = band_bounds(p.log(), cfg) if f is None else f_divergence_bounds(p.log(), f, cfg)
        (line,) = ax.plot(p, upper, label=name)
        ax.plot(p, lower.clamp(min=1e-3), color=line.get_color(), linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("old probability p")
    ax.set_ylabel("ratio bound r (solid: upper, dashed: lower, floored at 1e-3)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save(fig, "bounds.png")

    swept = {cfg.delta: name for name, cfg in configs.items() if cfg.divergence == "kl" and not cfg.relax_high_p}
    if sweep and len(swept) > 1:
        summary = summarize(runs)["methods"]
        deltas = sorted(swept)
        keys = ["final_reward"] + EVAL_METRICS + ["final_entropy"]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.5))
        for ax, key in zip(axes, keys):
            ax.errorbar(
                deltas,
                [summary[swept[d]][key]["mean"] for d in deltas],
                yerr=[summary[swept[d]][key]["std"] for d in deltas],
                marker="o",
                capsize=3,
            )
            ax.set_xscale("log")
            ax.set_xlabel("band-kl delta")
            ax.set_title(key.replace("final_", "final "))
            ax.grid(alpha=0.3)
        fig.suptitle("Band-KL: the trust-region radius; mean ± std over seeds, at the last step")
        save(fig, "delta_sweep.png")
    return paths


def write_summary(out_dir: str, summary: dict) -> str:
    path = os.path.join(out_dir, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    return path
