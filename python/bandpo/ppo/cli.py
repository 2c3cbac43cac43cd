"""Command line of the PPO demo: ``python -m bandpo.ppo`` (or the ``bandpo-ppo`` console script).

Trains a small causal transformer on a synthetic task (task.py; default ``zigzag``, where many answers are right
and the warm start prefers a few): a supervised warm start per seed on imperfect demonstrations (cached), then
GRPO-style PPO from that same warm start for every method, so the methods differ only in the op's options.
Every method shares --agg and --dual-clip (the paper's seq-mean-token-mean and 10 by default). Evaluates
pass@1/8/16 and the distinct right answers among 16 samples on held-out prompts.

Writes DIR/{method}/seed{S}.jsonl (one record per RL step), DIR/summary.json, DIR/*.png, DIR/config.json and
checkpoints, and prints a summary table. Data-parallel: ``torchrun --nproc_per_node=N -m bandpo.ppo ...``
(gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.util
import json
import os
import sys
import time

import torch
import torch.distributed as dist

from ..config import PRESETS
from . import experiment, report
from .experiment import EXPERIMENTS
from .jobs import SeedJob, default_workers, run_all, steps_of
from .methods import DEFAULT_METHODS, parse_method
from .settings import CUDA_SCALE, QUICK, RunConfig, run_fields
from .task import TASKS
from .train import world
from .warm_start import default_cache_dir

DELTA_SWEEP = (0.01, 0.05, 0.2)
EXPERIMENT_OPTIONS = ("--out", "--workers", "--cache-dir", "--no-cache")  # with --experiment: what may change
EVAL_PROMPT_SEED = 2_718_281  # the held-out prompts: the same for every seed, method and run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bandpo.ppo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--task",
        choices=list(TASKS),
        default="zigzag",
        help="zigzag: many right answers, the warm start prefers two; sort: one right answer (default: %(default)s)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"NAME or NAME:key=value,... with NAME in {', '.join(PRESETS)} (bandpo.PRESETS) and keys "
        f"of bandpo.BandConfig, e.g. band-kl:delta=0.1 clip:dual_clip=3 "
        f"(default: {' '.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--delta-sweep",
        nargs="*",
        type=float,
        default=None,
        metavar="DELTA",
        help=f"run band-kl at each DELTA (none given: {' '.join(map(str, DELTA_SWEEP))}) instead of "
        "the default methods (beside --methods when given); adds delta_sweep.png",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: %(default)s)")
    p.add_argument(
        "--agg",
        default="seq-mean-token-mean",
        help="loss aggregation of every method, one of bandpo.AGGREGATIONS (default: %(default)s)",
    )
    p.add_argument(
        "--dual-clip",
        type=float,
        default=10.0,
        help="dual-clip constant of every method, > 1; 0 turns it off (default: %(default)s)",
    )
    p.add_argument("--out", default=None, help="output folder (default: a new folder under runs/)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue the run in DIR from its checkpoints, with its saved settings",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N; on CUDA the model and batches default to larger sizes "
        "(settings.CUDA_SCALE) (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of each process (default: %(default)s; the numbers depend on it: the order of "
        "torch's sums; why one: bandpo/ppo/jobs.py)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that run seeds side by side, each with --threads threads (default: one per seed up to the "
        "usable cores, on the CPU without torchrun; else 1); the numbers do not depend on it",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test with tiny settings (tens of seconds; too short to learn, rewards print 0); explicit "
        "settings still win",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where warm starts are cached (default: $XDG_CACHE_HOME/bandpo or ~/.cache/bandpo)",
    )
    p.add_argument("--no-cache", action="store_true", help="always compute the warm start; store nothing")
    run = p.add_argument_group("run settings (every method and seed)")
    for f in run_fields():
        if isinstance(f.default, bool):  # --name / --no-name
            run.add_argument(
                "--" + f.name.replace("_", "-"),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{f.metadata['help']} (default: {'on' if f.default else 'off'})",
            )
            continue
        run.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default),
            default=None,
            help=f"{f.metadata['help']} (default: {f.default})",
        )
    task = p.add_argument_group("task settings (defaults depend on --task)")
    task.add_argument("--min-len", type=int, default=None, help="fewest digits in a prompt (zigzag 4, sort 3)")
    task.add_argument("--max-len", type=int, default=None, help="most digits in a prompt (6)")
    task.add_argument(
        "--demo-correct",
        type=float,
        default=None,
        help="fraction of warm-start demonstrations that are right (zigzag 0.5, sort 0.1)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (they need matplotlib)")
    p.add_argument(
        "--experiment",
        choices=list(EXPERIMENTS),
        default=None,
        help="run a pre-registered experiment (docs/ppo/PROTOCOL.md) into docs/ppo/experiments/NAME (or --out); "
        f"resumable (run it again); takes only {', '.join(EXPERIMENT_OPTIONS)} besides",
    )
    return p


def run_config(args: argparse.Namespace, device: torch.device) -> RunConfig:
    """Explicit settings, else --quick's, else CUDA_SCALE's on a GPU, else RunConfig's defaults."""
    values = {}
    for f in run_fields():
        explicit = getattr(args, f.name)
        if explicit is not None:
            values[f.name] = explicit
        elif args.quick and f.name in QUICK:
            values[f.name] = QUICK[f.name]
        elif device.type == "cuda" and f.name in CUDA_SCALE:
            values[f.name] = CUDA_SCALE[f.name]
    return RunConfig(**values)


def method_specs(args: argparse.Namespace) -> list[str]:
    if args.delta_sweep is None:
        return list(args.methods or DEFAULT_METHODS)
    sweep = args.delta_sweep or list(DELTA_SWEEP)
    return list(args.methods or []) + [f"band-kl:delta={d:g}" for d in sweep]


class Progress:
    """A tqdm bar when tqdm is installed and this is rank 0; else one plain line per phase."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tqdm = None
        if enabled and importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm

            self.tqdm = tqdm

    def bar(self, total: int, description: str, unit: str):
        if not self.enabled:
            return _NoBar()
        if self.tqdm is None:
            print(f"{description}: {total} {unit}s ...", flush=True)
            return _NoBar()
        # Redrawn every 2 s when stderr is a log file rather than a terminal, so logs stay short.
        return self.tqdm(
            total=total,
            desc=description,
            unit=unit,
            dynamic_ncols=True,
            leave=False,
            mininterval=0.1 if sys.stderr.isatty() else 2.0,
        )

    def say(self, text: str):
        if self.enabled:
            (self.tqdm.write if self.tqdm is not None else print)(text)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def main(argv: list[str] | None = None, quiet: bool = False) -> dict:
    """The demo (or, with --experiment, an experiment); returns the summary. quiet: no summary table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.experiment:
        given = [a for a in vars(args) if getattr(args, a) != parser.get_default(a) and a != "experiment"]
        others = [a for a in given if "--" + a.replace("_", "-") not in EXPERIMENT_OPTIONS]
        if others:
            parser.error(
                f"--experiment fixes the run's settings (its protocol); it takes only {', '.join(EXPERIMENT_OPTIONS)}, "
                f"got --{others[0].replace('_', '-')}"
            )
        passthrough = []
        for a in given:
            if a in ("workers", "cache_dir"):
                passthrough += ["--" + a.replace("_", "-"), str(getattr(args, a))]
            elif a == "no_cache":
                passthrough.append("--no-cache")
        return experiment.run(args.experiment, args.out, passthrough, main)
    if args.resume:
        with open(os.path.join(args.resume, "config.json")) as f:
            saved = json.load(f)
        args = parser.parse_args(saved["argv"])
        args.out = args.resume
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device(args.device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    if args.threads < 1 or (args.workers is not None and args.workers < 1):
        parser.error(f"--threads and --workers must be >= 1, got {args.threads} and {args.workers}")
    torch.set_num_threads(args.threads)
    rank, world_size = world()

    # Everything that can be refused is refused here, before any training.
    cfg = run_config(args, device)
    if cfg.prompts % world_size:
        parser.error(f"--prompts {cfg.prompts} must be divisible by the number of processes {world_size}")
    if distributed and (args.workers or 1) > 1:
        parser.error(f"--workers {args.workers}: under torchrun each rank runs every seed itself; leave --workers out")
    task_kwargs = {k: getattr(args, k) for k in ("min_len", "max_len", "demo_correct") if getattr(args, k) is not None}
    try:
        task = TASKS[args.task](**task_kwargs)
        methods = dict(
            parse_method(spec, agg=args.agg, dual_clip=args.dual_clip or None) for spec in method_specs(args)
        )
    except ValueError as e:
        parser.error(str(e))
    plots = not args.no_plots and importlib.util.find_spec("matplotlib") is not None
    progress = Progress(enabled=rank == 0)
    if not args.no_plots and not plots:
        progress.say(
            "matplotlib is not installed: the run writes its JSONL logs and summary.json but no plots "
            "(pip install 'bandpo[demo]' for them, or pass --no-plots to silence this)"
        )
    if progress.tqdm is None:
        progress.say("(tqdm is not installed: progress is one line per phase; pip install 'bandpo[demo]' for bars)")

    out = args.out or os.path.join("runs", datetime.datetime.now().strftime("ppo-%Y%m%d-%H%M%S"))
    if rank == 0:
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        for name in methods:
            os.makedirs(os.path.join(out, name), exist_ok=True)
        if not args.resume:
            with open(os.path.join(out, "config.json"), "w") as f:
                json.dump(
                    {
                        "argv": sys.argv[1:] if argv is None else list(argv),
                        "run": dataclasses.asdict(cfg),
                        "task": {"name": task.name, **dataclasses.asdict(task)},
                        "world_size": world_size,
                        "methods": {k: dataclasses.asdict(v) for k, v in methods.items()},
                    },
                    f,
                    indent=1,
                )
    if distributed:
        dist.barrier()

    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    if cache_dir is not None:
        try:  # refused here, not after a warm start has been computed
            os.makedirs(os.path.join(cache_dir, "ppo-warm-start"), exist_ok=True)
        except OSError as e:
            progress.say(f"the warm-start cache {cache_dir} cannot be written ({e}); running without it")
            cache_dir = None
    eval_prompts = task.sample_prompts(
        cfg.eval_prompts, torch.Generator().manual_seed(EVAL_PROMPT_SEED), split="eval"
    ).to(device)
    started = time.perf_counter()
    jobs = [
        SeedJob(seed, task, cfg, methods, out, str(device), cache_dir, eval_prompts, args.threads)
        for seed in args.seeds
    ]
    workers = args.workers or default_workers(device, len(jobs), distributed)
    if workers > 1:
        progress.say(f"{len(jobs)} seeds on {workers} worker processes of {args.threads} torch thread(s) each")
    bar = progress.bar(sum(steps_of(j) for j in jobs), "warm starts and RL steps", "step")

    def on_report(item):
        if isinstance(item, str):
            progress.say(item)
        else:
            bar.update(item)

    results = run_all(jobs, workers, on_report, rank)
    bar.close()
    runs = {name: {r.seed: r.runs[name] for r in results} for name in methods}
    start_eval = {r.seed: r.start_eval for r in results if r.start_eval is not None}

    summary = {}
    if rank == 0:
        summary = report.summarize(runs, start_eval)
        summary["wall_seconds"] = time.perf_counter() - started
        report.write_summary(out, summary)
        if not quiet:
            print(report.summary_table(summary))
        if plots:
            for path in report.plot_all(out, runs, methods, start_eval, sweep=args.delta_sweep is not None):
                print("wrote", path)
        elif not args.no_plots:
            print("no plots: matplotlib is not installed (pip install 'bandpo[demo]')")
        if not quiet:
            print("results in", out)
    if distributed:
        # DDP objects hold the process group through reference cycles: collect them first, so that the
        # group really closes here (its threads otherwise meet interpreter teardown: "terminate called").
        gc.collect()
        dist.barrier()  # no rank leaves while another still talks to it (gloo aborts on a closed peer)
        dist.destroy_process_group()
    return summary
