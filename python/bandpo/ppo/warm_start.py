"""The supervised warm start on imperfect demonstrations, and its cache.

The warm start depends only on the task, the model and warm-start settings, the seed and the machine (torch's
kernels round differently across instruction sets), never on the method: every method of a seed starts from
the same weights. It is stored under ``<cache>/ppo-warm-start/<key>.pt``, the key a hash of everything it
depends on (``--no-cache`` or ``--cache-dir`` change that), so that ``--steps 10`` after a first run starts
RL at once. A cached warm start is the one the same settings would compute again on this machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .model import CausalLM
from .settings import RunConfig
from .task import VOCAB_SIZE, Task

IGNORE = -100  # target of positions the warm-start loss ignores
WARM_START_FIELDS = ("sft_steps", "sft_batch", "sft_lr", "d_model", "n_layers", "n_heads")


def make_model(task: Task, cfg: RunConfig) -> CausalLM:
    return CausalLM(VOCAB_SIZE, task.prompt_len + task.response_len, cfg.d_model, cfg.n_layers, cfg.n_heads)


def demonstration_batch(task: Task, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [n, P + R - 1], targets [n, R]): prompts followed by demonstrations, and the demonstration
    tokens as targets (IGNORE after each demonstration's EOS)."""
    prompts = task.sample_prompts(n, generator)
    P, R = task.prompt_len, task.response_len
    targets = torch.full((n, R), IGNORE, dtype=torch.long)
    for i in range(n):
        d = task.demonstration(prompts[i], generator)
        targets[i, : len(d)] = torch.tensor(d)
    inputs = torch.cat([prompts, targets.clamp(min=0)], dim=1)[:, :-1]
    return inputs, targets


def warm_start(
    task: Task, cfg: RunConfig, seed: int, device: torch.device, on_step: Callable[[int], None] = lambda step: None
) -> CausalLM:
    """Supervised training on the task's demonstrations (deterministic for a seed, the same on every rank)."""
    torch.manual_seed(seed)
    model = make_model(task, cfg).to(device)
    gen = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr)
    P = task.prompt_len
    for step in range(cfg.sft_steps):
        inputs, targets = demonstration_batch(task, cfg.sft_batch, gen)
        logits = model(inputs.to(device))[:, P - 1 :]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1), ignore_index=IGNORE
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        on_step(step + 1)
    return model


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bandpo")


def cache_key(task: Task, cfg: RunConfig, seed: int, device: torch.device) -> str:
    what = {
        "task": type(task).__name__,
        "task_settings": dataclasses.asdict(task),
        "run": {f: getattr(cfg, f) for f in WARM_START_FIELDS},
        "seed": seed,
        "torch": torch.__version__,
        "device": device.type,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),  # the order of torch's sums, so the bits of the warm start
        "version": 2,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def cached_warm_start(
    task: Task,
    cfg: RunConfig,
    seed: int,
    device: torch.device,
    cache_dir: Optional[str],
    on_step: Callable[[int], None] = lambda step: None,
) -> tuple[CausalLM, bool]:
    """(model, whether it came from the cache); computes and stores it when absent (cache_dir None: no cache)."""
    path = (
        None
        if cache_dir is None
        else os.path.join(cache_dir, "ppo-warm-start", cache_key(task, cfg, seed, device) + ".pt")
    )
    if path is not None and os.path.exists(path):
        model = make_model(task, cfg).to(device)
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return model, True
    model = warm_start(task, cfg, seed, device, on_step)
    if path is not None:
        tmp = f"{path}.{os.getpid()}.tmp"  # ranks of a torchrun may write at once: each its own file, then rename
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
        except OSError as e:  # a full disk costs the cache, not the warm start just computed
            warnings.warn(f"the warm start could not be cached at {path}: {e}")
    return model, False
