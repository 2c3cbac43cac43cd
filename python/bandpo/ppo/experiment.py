"""Pre-registered experiments: ``python -m bandpo.ppo --experiment NAME``.

Each experiment is fixed before its results exist (docs/ppo/PROTOCOL.md states it, as committed): regimes (the
demo's settings each regime changes), seeds, methods, and the hypotheses, each a paired comparison of a method
against the baseline on one metric with its rule. The command runs every regime as the demo does (the same
warm start per seed for every method; resumable: run it again to continue), then writes, under
docs/ppo/experiments/NAME/ (or --out): REGIME/ (the demo's per-seed JSONL logs and plots), summary.json (every
method's metrics with 95% intervals, every paired comparison against the baseline), differences.png and
RESULTS.md (the tables and the hypotheses' verdicts).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from . import report
from .methods import DEFAULT_METHODS, parse_method
from .stats import mean_interval, paired

METRICS = ("final_entropy", "pass@1", "pass@8", "pass@16", "distinct@16")  # per seed (report.per_seed_metrics)


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    name: str
    metric: str
    rule: str  # "greater": the interval's low end > 0; "no_worse": low end > -margin
    margin: float = 0.0
    text: str = ""

    def holds(self, comparison: dict) -> bool:
        return comparison["low"] > (0.0 if self.rule == "greater" else -self.margin)


@dataclasses.dataclass(frozen=True)
class Experiment:
    regimes: dict  # name -> the demo's arguments that differ from its defaults
    seeds: tuple
    methods: tuple
    baseline: str
    treatment: str
    hypotheses: tuple
    work: dict  # name -> relative cost, for the time estimate (rollouts and evaluation ~ 1.6 epochs)


EXPERIMENTS = {
    "clip-binds": Experiment(
        regimes={"default": [], "four-epochs": ["--ppo-epochs", "4"]},
        seeds=tuple(range(8)),
        methods=DEFAULT_METHODS,
        baseline="clip",
        treatment="band-kl",
        hypotheses=(
            Hypothesis("H1", "final_entropy", "greater", text="band-kl keeps more entropy than clip at the end"),
            Hypothesis("H2", "distinct@16", "greater", text="band-kl finds more distinct right answers among 16"),
            Hypothesis("H3", "pass@16", "no_worse", margin=0.02, text="band-kl's pass@16 is no worse (margin 0.02)"),
        ),
        work={"default": 2.6, "four-epochs": 5.6},
    ),
}


def run(name: str, out: str | None, passthrough: list[str], main) -> dict:
    """Runs (or continues) every regime of experiment `name` through the demo's `main`, then analyses them.
    passthrough: demo arguments that do not change results (--threads, --workers, --cache-dir, ...)."""
    exp = EXPERIMENTS[name]
    root = out or os.path.join("docs", "ppo", "experiments", name)
    os.makedirs(root, exist_ok=True)
    started, done_work = time.perf_counter(), 0.0
    total_work = sum(exp.work.values())
    for k, (regime, extra) in enumerate(exp.regimes.items()):
        print(f"== {name}: regime {k + 1} of {len(exp.regimes)}, {regime} ({' '.join(extra) or 'the defaults'})")
        argv = ["--methods", *exp.methods, "--seeds", *map(str, exp.seeds), "--out", os.path.join(root, regime)]
        main([*argv, "--no-plots", *extra, *passthrough], quiet=True)
        done_work += exp.work[regime]
        spent = time.perf_counter() - started
        left = spent / done_work * (total_work - done_work)
        print(f"== {regime} done; {spent / 60:.1f} min so far, about {left / 60:.0f} min to go")
    summary = analyse(exp, root)
    with open(os.path.join(root, "environment.json"), "w") as f:
        json.dump(environment(), f, indent=1)
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(root, "RESULTS.md"), "w") as f:
        f.write(results_markdown(name, exp, summary))
    plot(exp, root, summary)
    print(results_markdown(name, exp, summary))
    return summary


def environment() -> dict:
    """What the numbers' bits depend on (tests/test_ppo.py reruns a piece where these match)."""
    import platform

    import torch

    from .. import __version__, cpu_kernel_isa

    return {
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "bandpo": __version__,
        "bandpo_cpu_kernels": cpu_kernel_isa(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def load_runs(exp: Experiment, directory: str) -> dict:
    """runs[method][seed] = the per-step records of a regime's folder."""
    runs = {}
    for method in exp.methods:
        runs[method] = {}
        for seed in exp.seeds:
            with open(os.path.join(directory, method, f"seed{seed}.jsonl")) as f:
                runs[method][seed] = [json.loads(line) for line in f]
    return runs


def analyse(exp: Experiment, root: str) -> dict:
    """Per regime: every method's metrics (mean and 95% interval over seeds), and every method's paired
    differences against the baseline; the hypotheses' verdicts."""
    out = {}
    for regime in exp.regimes:
        runs = load_runs(exp, os.path.join(root, regime))
        values = {m: report.per_seed_metrics(runs[m]) for m in exp.methods}
        methods = {m: {k: mean_interval(values[m][k]) for k in METRICS} for m in exp.methods}
        for m in exp.methods:
            methods[m]["clipfrac_upper_by_prob"] = report.pooled_clipfrac(runs[m], "upper")
            methods[m]["clipfrac_lower_by_prob"] = report.pooled_clipfrac(runs[m], "lower")
            methods[m]["first_step_clipfrac_by_prob"] = first_step_clipfrac(runs[m])
        comparisons = {
            m: {k: paired(values[m][k], values[exp.baseline][k]) for k in METRICS}
            for m in exp.methods
            if m != exp.baseline
        }
        verdicts = {h.name: h.holds(comparisons[exp.treatment][h.metric]) for h in exp.hypotheses}
        out[regime] = {"methods": methods, "versus_" + exp.baseline: comparisons, "hypotheses": verdicts}
    return out


def first_step_clipfrac(by_seed: dict) -> list[float]:
    """Per old-probability bucket, the fraction of tokens clipped (either side) at RL step 1, seeds pooled: how much
    the rule decides before the methods' policies part."""
    clipped = [0.0] * len(by_seed[next(iter(by_seed))][0]["tokens_by_prob"])
    tokens = [0.0] * len(clipped)
    for recs in by_seed.values():
        r = recs[0]
        for i, n in enumerate(r["tokens_by_prob"]):
            tokens[i] += n
            clipped[i] += n * (r["clipfrac_upper_by_prob"][i] + r["clipfrac_lower_by_prob"][i])
    return [c / max(t, 1.0) for c, t in zip(clipped, tokens)]


def results_markdown(name: str, exp: Experiment, summary: dict) -> str:
    lines = [f"# Experiment {name}: results", ""]
    for regime, r in summary.items():
        lines += [f"## Regime {regime} ({' '.join(exp.regimes[regime]) or 'the demo defaults'})", ""]
        lines += ["| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for m, v in r["methods"].items():
            cells = [f"{v[k]['mean']:.3f} [{v[k]['low']:.3f}, {v[k]['high']:.3f}]" for k in METRICS]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", f"Paired differences against {exp.baseline} (mean [95% interval], seeds better / worse):", ""]
        lines += ["| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for m, c in r["versus_" + exp.baseline].items():
            cells = [
                f"{c[k]['mean']:+.3f} [{c[k]['low']:+.3f}, {c[k]['high']:+.3f}] {c[k]['wins']}/{c[k]['losses']}"
                for k in METRICS
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        for h in exp.hypotheses:
            c = r["versus_" + exp.baseline][exp.treatment][h.metric]
            verdict = "holds" if r["hypotheses"][h.name] else "does not hold"
            lines.append(
                f"- {h.name} ({h.text}): {verdict}: {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], "
                f"sign test {c['wins']}/{c['losses']} (p = {c['sign_p']:.3f})"
            )
        tail = r["methods"][exp.baseline]["first_step_clipfrac_by_prob"][0]
        lines += [
            "",
            f"At RL step 1 {exp.baseline} clips {100 * tail:.1f}% of the tokens of old probability below 0.2.",
            "",
        ]
    return "\n".join(lines)


def plot(exp: Experiment, root: str, summary: dict) -> None:
    """Each regime's demo plots (report.plot_all) and differences.png: every method's paired difference against the
    baseline with its interval, per metric and regime."""
    try:
        plt = report._pyplot()
    except ImportError:
        print("no plots: matplotlib is not installed (pip install 'bandpo[demo]')")
        return
    for regime in exp.regimes:
        runs = load_runs(exp, os.path.join(root, regime))
        configs = dict(parse_method(m) for m in exp.methods)  # as the demo reads a method (band-hellinger too)
        report.plot_all(os.path.join(root, regime), runs, configs)
    others = [m for m in exp.methods if m != exp.baseline]
    fig, axes = plt.subplots(
        len(summary), len(METRICS), figsize=(3.4 * len(METRICS), 3.2 * len(summary)), squeeze=False
    )
    for row, (regime, r) in enumerate(summary.items()):
        for col, k in enumerate(METRICS):
            ax = axes[row][col]
            comp = [r["versus_" + exp.baseline][m][k] for m in others]
            ax.errorbar(
                range(len(others)),
                [c["mean"] for c in comp],
                yerr=[[c["mean"] - c["low"] for c in comp], [c["high"] - c["mean"] for c in comp]],
                fmt="o",
                capsize=3,
            )
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.set_xticks(range(len(others)), others, rotation=30, fontsize=8)
            ax.set_title(f"{regime}: {k}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"method - {exp.baseline}, paired by seed: mean and 95% bootstrap interval ({len(exp.seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(os.path.join(root, "differences.png"), dpi=110)
    plt.close(fig)
