"""Command line of the PPO demo: ``python -m bandpo.ppo`` (or the ``bandpo-ppo`` console script).

Trains a small causal transformer on the sorting task (task.py): a supervised warm start per seed on
imperfect demonstrations, then GRPO-style PPO from that same warm start for every method, so the methods
differ only in the op's options. Writes DIR/{method}/seed{S}.jsonl (one record per RL step), DIR/summary.json,
DIR/*.png, DIR/config.json and checkpoints, and prints a summary table.

Data-parallel: ``torchrun --nproc_per_node=N -m bandpo.ppo ...`` (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import sys

import torch
import torch.distributed as dist

from . import report
from .methods import DEFAULT_METHODS, PRESETS, parse_method
from .task import SortTask
from .train import RunConfig, rl_run, warm_start, world


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bandpo.ppo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help=f"NAME or NAME:key=value,... with NAME in {', '.join(PRESETS)} and keys of "
                        "bandpo.BandConfig, e.g. band-kl:delta=0.1 clip:dual_clip=3 (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="(default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: a new folder under runs/)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR from its checkpoints, with its saved settings")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), help="(default: %(default)s)")
    p.add_argument("--agg", default="token-mean", help="loss aggregation for every method (default: %(default)s)")
    p.add_argument("--min-len", type=int, default=SortTask.min_len, help="shortest list to sort (default: %(default)s)")
    p.add_argument("--max-len", type=int, default=SortTask.max_len, help="longest list to sort (default: %(default)s)")
    p.add_argument("--demo-correct", type=float, default=SortTask.demo_correct,
                   help="fraction of warm-start demonstrations that are right (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.resume:
        with open(os.path.join(args.resume, "config.json")) as f:
            saved = json.load(f)
        args = build_parser().parse_args(saved["argv"])
        args.out = args.resume
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device(args.device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world_size = world()
    if args.prompts % world_size:
        raise SystemExit(f"--prompts {args.prompts} must be divisible by the number of processes {world_size}")

    cfg = RunConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)})
    task = SortTask(args.min_len, args.max_len, args.demo_correct)
    methods = dict(parse_method(spec, agg=args.agg) for spec in args.methods)
    out = args.out or os.path.join("runs", datetime.datetime.now().strftime("ppo-%Y%m%d-%H%M%S"))
    if rank == 0:
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        for name in methods:
            os.makedirs(os.path.join(out, name), exist_ok=True)
        if not args.resume:
            with open(os.path.join(out, "config.json"), "w") as f:
                json.dump({"argv": sys.argv[1:] if argv is None else list(argv), "run": dataclasses.asdict(cfg),
                           "task": dataclasses.asdict(task), "world_size": world_size,
                           "methods": {k: dataclasses.asdict(v) for k, v in methods.items()}}, f, indent=1)
    if distributed:
        dist.barrier()

    progress = make_progress(len(methods) * len(args.seeds) * cfg.steps, disable=rank != 0)
    runs: dict[str, dict[int, list[dict]]] = {name: {} for name in methods}
    for seed in args.seeds:
        init = warm_start(task, cfg, seed, device)
        for name, config in methods.items():
            progress.set_description(f"{name} seed {seed}")
            ckpt = os.path.join(out, "checkpoints", f"{name.replace(':', '_')}-seed{seed}.pt")
            runs[name][seed] = rl_run(task, cfg, config, seed, init, os.path.join(out, name, f"seed{seed}.jsonl"),
                                      ckpt, device, on_step=lambda r: progress.update(1))
    progress.close()

    summary = report.summarize(runs)
    if rank == 0:
        report.write_summary(out, summary)
        initial = {name: sum(by_seed[s][0]["reward"] for s in by_seed) / len(by_seed) for name, by_seed in runs.items()}
        print(report.summary_table(summary, initial))
        if not args.no_plots:
            for path in report.plot_all(out, runs, methods):
                print("wrote", path)
        print("results in", out)
    if distributed:
        # DDP objects hold the process group through reference cycles: collect them first, so that the
        # group really closes here (its threads otherwise meet interpreter teardown: "terminate called").
        gc.collect()
        dist.barrier()  # no rank leaves while another still talks to it (gloo aborts on a closed peer)
        dist.destroy_process_group()
    return summary


class _NoProgress:
    def update(self, n):
        pass

    def set_description(self, text):
        pass

    def close(self):
        pass


def make_progress(total: int, disable: bool):
    if disable:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    # Redrawn every 2 s when stderr is a log file rather than a terminal, so logs stay short.
    return tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 2.0)
