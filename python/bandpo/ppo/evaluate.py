"""Evaluation on held-out prompts: pass@k and the number of distinct right answers among k samples.

n samples per prompt at the training temperature; with c of them right, pass@k is the unbiased estimate
1 - C(n - c, k) / C(n, k) (Chen et al. 2021), averaged over prompts; ``distinct@n`` is the mean number of
different right answers among the n samples of a prompt. Sampling uses its own generator, seeded from the
seed and the step, so that evaluating never changes what training draws.
"""

from __future__ import annotations

import math

import torch

from .rollout import sample
from .task import Task
from .._tables import DEFAULTS  # the sampling temperature's default: the lm_head option's

PASS_AT = (1, 8, 16)  # the k of pass@k reported; the largest is also the number of samples per prompt


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n, c of them right, is right."""
    if k > n:
        raise ValueError(f"k = {k} needs at least k samples; got n = {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def metric_names(ks=PASS_AT) -> list[str]:
    return [f"pass@{k}" for k in ks] + [f"distinct@{max(ks)}"]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: Task,
    prompts: torch.Tensor,
    seed: int,
    temperature: float = DEFAULTS["temperature"],
    ks=PASS_AT,
) -> dict:
    """{"pass@1": ..., "pass@8": ..., "pass@16": ..., "distinct@16": ...} over `prompts` (max(ks) samples each)."""
    n = max(ks)
    was_training = model.training
    model.eval()
    roll = sample(model, prompts, n, task.response_len, torch.Generator().manual_seed(seed), temperature)
    if was_training:
        model.train()
    P = task.prompt_len
    right = task.correct(roll.sequences[:, :P].cpu(), roll.sequences[:, P:].cpu())
    out = {name: 0.0 for name in metric_names(ks)}
    for i in range(len(prompts)):
        rows = range(i * n, (i + 1) * n)
        c = sum(right[r] for r in rows)
        for k in ks:
            out[f"pass@{k}"] += pass_at_k(n, c, k) / len(prompts)
        answers = {task.answer_of(roll.sequences[r, P:].tolist()) for r in rows if right[r]}
        out[f"distinct@{n}"] += len(answers) / len(prompts)
    return out
