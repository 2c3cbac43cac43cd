"""The PPO/GRPO loop from a warm start, single-process or data-parallel (torchrun + DDP).

Every method's policy loss is ``torch.ops.bandpo.band_loss`` (via :func:`bandpo.band_loss`); only the
options differ. Data-parallel: each rank samples its share of the prompts, the op's ``normalizer`` is the
global aggregation denominator (all-reduced), and the loss is scaled by the world size because DDP
averages gradients; the gradient is then the one a single process computes on the global batch.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

from .. import rules
from ..api import band_bounds, band_loss
from ..f_divergence import f_divergence_bounds
from ..config import BandConfig
from .evaluate import evaluate
from .rollout import Rollout, group_advantages, sample, token_logprobs
from .settings import RunConfig
from .task import Task
from .._tables import DEFAULTS  # the sampling temperature's default: the lm_head option's

PROB_BUCKETS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0 + 1e-9)  # old-probability buckets of the clip statistics


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def aggregation_normalizer(mask: torch.Tensor, agg: str) -> float:
    """The op's denominator for this (local) minibatch (bandpo.rules), summed over ranks."""
    return float(all_reduce_sum(rules.aggregation_denominator(mask, agg).reshape(1)))


def policy_loss(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    prompt_len: int,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: BandConfig,
    temperature: float = DEFAULTS["temperature"],
    ref_logp: Optional[torch.Tensor] = None,
    fused_head: bool = False,
    bounds: Optional[tuple] = None,
):
    """The BandPO loss of one (local) minibatch, scaled for DDP's gradient averaging; returns (loss, metrics, logp).
    fused_head: the log-probs from hidden states (bandpo.linear_logprob_entropy), see token_logprobs. bounds:
    (lower, upper) given to the loss instead of the config's divergence's."""
    logp = token_logprobs(model, sequences, prompt_len, temperature, fused_head=fused_head)
    normalizer = aggregation_normalizer(mask, config.agg)
    lower, upper = bounds if bounds is not None else (None, None)
    out = band_loss(
        logp, old_logp, advantages, mask, config, normalizer=normalizer, ref_logp=ref_logp, lower=lower, upper=upper
    )
    return out.loss * world()[1], out.metrics, logp.detach()


def clip_statistics(logp, old_logp, advantages, mask, lower, upper) -> torch.Tensor:
    """[3, buckets] counts: valid tokens, clipped at the upper bound, clipped at the lower bound, per bucket
    of old probability (the same decision the op makes: A > 0 and r > upper, A < 0 and r < lower)."""
    up, down = rules.clipped(rules.ratio(logp, old_logp), advantages[:, None], lower, upper)
    up, down = up & mask, down & mask
    bucket = torch.bucketize(old_logp.exp(), torch.tensor(PROB_BUCKETS[1:-1]), right=True)
    out = torch.zeros(3, len(PROB_BUCKETS) - 1)
    for row, flags in enumerate((mask, up, down)):
        out[row].index_add_(0, bucket[flags], torch.ones(int(flags.sum())))
    return out


def rl_run(
    task: Task,
    cfg: RunConfig,
    config: BandConfig,
    seed: int,
    init: torch.nn.Module,
    log_path: str,
    checkpoint_path: str,
    device: torch.device,
    eval_prompts: Optional[torch.Tensor] = None,
    on_step: Callable[[dict], None] = lambda record: None,
    bounds_f: Optional[str] = None,
) -> list[dict]:
    """One method and seed from the warm start `init`; appends a JSON line per step to log_path (rank 0) and
    checkpoints to checkpoint_path every cfg.checkpoint_every steps; resumes from it when it exists. With
    eval_prompts, every cfg.eval_every steps and at the last one the record holds "eval" (evaluate.py). bounds_f:
    an f-divergence whose bounds (bandpo.f_divergence_bounds, once per batch) the loss takes instead of config's."""
    rank, world_size = world()
    model = copy.deepcopy(init)
    reference = copy.deepcopy(init).eval() if cfg.kl_coef else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(1_000_003 * seed + 7919 * rank + 1)
    start, seconds = 0, 0.0
    if os.path.exists(checkpoint_path):
        state = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        gen.set_state(state["generators"][rank])
        start, seconds = state["step"], state["seconds"]
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    else:
        ddp = model
    records = []
    if rank == 0:
        if os.path.exists(log_path):  # keep the lines of the steps the checkpoint holds
            with open(log_path) as f:
                records = [json.loads(line) for line in f][:start]
        with open(log_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    config = config.replace(kl_coef=cfg.kl_coef) if cfg.kl_coef else config
    P = task.prompt_len
    local_prompts = cfg.prompts // world_size
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        model.eval()
        prompts = task.sample_prompts(local_prompts, gen).to(device)
        roll: Rollout = sample(model, prompts, cfg.group_size, task.response_len, gen, cfg.temperature)
        rewards = task.rewards(prompts.repeat_interleave(cfg.group_size, 0).cpu(), roll.sequences[:, P:].cpu())
        advantages = group_advantages(rewards, cfg.group_size).to(device)
        ref_logp = None
        if reference is not None:
            with torch.no_grad():
                ref_logp = token_logprobs(reference, roll.sequences, P, cfg.temperature)
        if bounds_f is None:
            lower, upper = band_bounds(roll.old_logp, config)
        else:
            lower, upper = f_divergence_bounds(roll.old_logp, bounds_f, config)
        model.train()
        n = len(roll.sequences)
        stats = torch.zeros(3, len(PROB_BUCKETS) - 1)
        ppo_kl, updates = 0.0, 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=gen)
            for idx in order.chunk(cfg.minibatches):
                idx = idx.to(device)
                loss, metrics, logp = policy_loss(
                    ddp,
                    roll.sequences[idx],
                    P,
                    roll.old_logp[idx],
                    advantages[idx],
                    roll.mask[idx],
                    config,
                    cfg.temperature,
                    None if ref_logp is None else ref_logp[idx],
                    fused_head=cfg.fused_head,
                    bounds=None if bounds_f is None else (lower[idx], upper[idx]),
                )
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                stats += clip_statistics(
                    logp.cpu(),
                    roll.old_logp[idx].cpu(),
                    advantages[idx].cpu(),
                    roll.mask[idx].cpu(),
                    lower[idx].cpu(),
                    upper[idx].cpu(),
                )
                ppo_kl += float(metrics["ppo_kl"])
                updates += 1
        seconds += time.perf_counter() - t0
        mask = roll.mask
        # Sums over this rank's batch, all-reduced: each named, read back by name.
        local = {
            "reward": rewards.sum(),
            "samples": torch.tensor(float(len(rewards))),
            "entropy": (roll.entropy * mask).sum().cpu(),
            "tokens": mask.sum().cpu().double(),
            "lower": (lower * mask).sum().cpu(),
            "upper": (upper * mask).sum().cpu(),
            "ppo_kl": torch.tensor(ppo_kl / updates),
        }
        sums = dict(zip(local, all_reduce_sum(torch.stack([v.double() for v in local.values()])).tolist()))
        stats = all_reduce_sum(stats)
        tokens = stats[0].sum().clamp(min=1)
        record = {
            "step": step + 1,
            "reward": sums["reward"] / sums["samples"],
            "entropy": sums["entropy"] / sums["tokens"],
            "ppo_kl": sums["ppo_kl"] / world_size,
            "clipfrac_upper": float(stats[1].sum() / tokens),
            "clipfrac_lower": float(stats[2].sum() / tokens),
            "clipfrac_upper_by_prob": (stats[1] / stats[0].clamp(min=1)).tolist(),
            "clipfrac_lower_by_prob": (stats[2] / stats[0].clamp(min=1)).tolist(),
            "tokens_by_prob": stats[0].tolist(),
            "mean_lower": sums["lower"] / sums["tokens"],
            "mean_upper": sums["upper"] / sums["tokens"],
            "seconds": seconds,
        }
        if eval_prompts is not None and rank == 0 and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            record["eval"] = evaluate(model, task, eval_prompts, eval_seed(seed, step + 1), cfg.temperature)
        records.append(record)
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            on_step(record)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                torch.save(
                    {
                        "step": step + 1,
                        "seconds": seconds,
                        "model": model.state_dict(),
                        "optim": opt.state_dict(),
                        "generators": gather_generator_states(gen),
                    },
                    checkpoint_path + ".tmp",
                )
                os.replace(checkpoint_path + ".tmp", checkpoint_path)
        elif (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            gather_generator_states(gen)
    return records


def eval_seed(seed: int, step: int) -> int:
    """The evaluation sampler's seed at `step` (0: the warm start): the same for every method of a seed."""
    return 900_001 * (seed + 1) + step


def gather_generator_states(gen: torch.Generator) -> list:
    """Every rank's sampling-generator state (rank 0 stores them all in the checkpoint)."""
    rank, world_size = world()
    if world_size == 1:
        return [gen.get_state()]
    states = [None] * world_size
    dist.all_gather_object(states, gen.get_state())
    return states
