"""The work of a demo run, one job per seed: the seed's warm start (cached), its evaluation, then every method from
it. Jobs run one after another in this process, or side by side in worker processes of one torch thread each.

Why workers of one thread rather than one process of several threads: on this model (d_model 64) torch's threads
gain little (two threads ran a method and seed in 14.7 s against 18.9 s for one, on a 2-core EPYC), and they
degrade badly when another process holds a core: the same run took 39.3 s with two threads against 19.3 s with
one while a single-threaded process ran beside it (spinning threads wait for a core that is busy). Single-threaded
workers are time-sliced instead, so a busy machine slows them in proportion. And the numbers do not depend on how
many workers run: each run is one process's deterministic work, whatever runs beside it. (They do depend on
--threads, which changes the order of torch's sums.)
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue as queue_module
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Optional

import torch

from .evaluate import evaluate
from .methods import f_divergence_of
from .settings import RunConfig
from .task import Task
from .train import eval_seed, rl_run
from .warm_start import cached_warm_start


@dataclasses.dataclass(frozen=True)
class SeedJob:
    """Everything one seed's work needs (picklable: it crosses to worker processes)."""

    seed: int
    task: Task
    cfg: RunConfig
    methods: dict  # label -> bandpo.BandConfig
    out: str
    device: str
    cache_dir: Optional[str]
    eval_prompts: torch.Tensor
    threads: Optional[int]


@dataclasses.dataclass(frozen=True)
class SeedResult:
    seed: int
    start_eval: Optional[dict]  # the warm start's evaluation (rank 0 only)
    runs: dict  # label -> the per-step records
    cached: bool  # whether the warm start came from the cache


def run_seed(job: SeedJob, report: Callable[[object], None], rank: int = 0) -> SeedResult:
    """One seed: the warm start, its evaluation, every method. report(n) counts n steps done (warm-start and RL
    steps alike); report(text) is a line for the user."""
    if job.threads:
        torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    init, cached = cached_warm_start(job.task, job.cfg, job.seed, device, job.cache_dir, on_step=lambda s: report(1))
    report(
        f"warm start, seed {job.seed}: "
        + ("from the cache" if cached else f"{job.cfg.sft_steps} supervised steps")
        + (f" ({job.cache_dir})" if job.cache_dir and not cached else "")
    )
    start = (
        evaluate(init, job.task, job.eval_prompts, eval_seed(job.seed, 0), job.cfg.temperature) if rank == 0 else None
    )
    runs = {}
    for name, config in job.methods.items():
        runs[name] = rl_run(
            job.task,
            job.cfg,
            config,
            job.seed,
            init,
            os.path.join(job.out, name, f"seed{job.seed}.jsonl"),
            os.path.join(job.out, "checkpoints", f"{name.replace(':', '_')}-seed{job.seed}.pt"),
            device,
            job.eval_prompts,
            on_step=lambda r: report(1),
            bounds_f=f_divergence_of(name),
        )
        last = runs[name][-1]
        report(
            f"{name}, seed {job.seed}: {last['seconds']:.1f} s, final reward {last['reward']:.3f}, "
            + ", ".join(f"{k} {v:.3f}" for k, v in last.get("eval", {}).items())
        )
    return SeedResult(job.seed, start, runs, cached)


def steps_of(job: SeedJob) -> int:
    """The steps run_seed reports for a job (its progress bar's total)."""
    return job.cfg.sft_steps + len(job.methods) * job.cfg.steps


def run_all(jobs: list[SeedJob], workers: int, report: Callable[[object], None], rank: int = 0) -> list[SeedResult]:
    """Every job, in order of seeds: here when workers <= 1 (and always under torchrun), else in `workers` spawned
    processes whose reports come back through a queue."""
    if workers <= 1 or len(jobs) <= 1:
        return [run_seed(job, report, rank) for job in jobs]
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
        reports = manager.Queue()
        futures = [pool.submit(_worker, job, reports) for job in jobs]
        while not all(f.done() for f in futures):
            _drain(reports, report, timeout=0.2)
            if any(f.done() and f.exception() is not None for f in futures):
                for f in futures:  # a failed seed: the seeds not yet started are not started
                    f.cancel()
                break
        _drain(reports, report, timeout=0.0)
        failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception() is not None), None)
        if failed is not None:
            raise failed.exception()  # the worker's own exception, with its message
        return [f.result() for f in futures]


def _worker(job: SeedJob, reports) -> SeedResult:
    return run_seed(job, reports.put)


def _drain(reports, report: Callable[[object], None], timeout: float) -> None:
    try:
        report(reports.get(timeout=timeout) if timeout else reports.get_nowait())
        while True:
            report(reports.get_nowait())
    except queue_module.Empty:
        pass


def default_workers(device: torch.device, seeds: int, distributed: bool) -> int:
    """Worker processes when --workers is not given: one per seed up to the cores this process may use, on the
    CPU and without torchrun; else 1."""
    if distributed or device.type != "cpu":
        return 1
    return max(1, min(seeds, len(os.sched_getaffinity(0))))


__all__ = ["SeedJob", "SeedResult", "default_workers", "run_all", "run_seed", "steps_of"]
