"""The settings of a demo run (one RunConfig for every method and seed), each with its unit and meaning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def _opt(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class RunConfig:
    steps: int = _opt(80, "RL steps per method and seed (one batch of fresh rollouts each)")
    prompts: int = _opt(32, "prompts per RL step (global: split over data-parallel ranks)")
    group_size: int = _opt(8, "samples per prompt: the GRPO group whose rewards are normalised together")
    ppo_epochs: int = _opt(1, "passes over each batch (the paper: 1)")
    minibatches: int = _opt(
        4,
        "optimiser steps per epoch, the batch split into this many minibatches (the paper: "
        "4); from the second on the ratio leaves 1 and the bounds act",
    )
    lr: float = _opt(3e-4, "AdamW learning rate of the RL phase")
    weight_decay: float = _opt(0.0, "AdamW weight decay of the RL phase")
    max_grad_norm: float = _opt(1.0, "gradient-norm clip per optimiser step")
    temperature: float = _opt(1.0, "sampling temperature (rollouts and evaluation; the loss's log-probs use it too)")
    kl_coef: float = _opt(
        0.0,
        "coefficient of the k3 KL to the warm-start policy, through the op's ref_logp (0 = off; the paper uses 0.001)",
    )
    sft_steps: int = _opt(300, "supervised warm-start steps on the demonstrations (cached across runs)")
    sft_batch: int = _opt(128, "demonstrations per warm-start step")
    sft_lr: float = _opt(3e-3, "AdamW learning rate of the warm start")
    d_model: int = _opt(64, "transformer width")
    n_layers: int = _opt(2, "transformer blocks")
    n_heads: int = _opt(4, "attention heads per block")
    eval_every: int = _opt(20, "RL steps between evaluations on the held-out prompts (and at the last step)")
    eval_prompts: int = _opt(64, "held-out prompts per evaluation (16 samples each: pass@1/8/16, distinct@16)")
    fused_head: bool = _opt(
        False,
        "the loss's log-probs from the final hidden states and the head's weight "
        "(bandpo.linear_logprob_entropy, no [tokens, vocab] logits); off: the model's "
        "logits and log_softmax. The same values to float rounding",
    )
    checkpoint_every: int = _opt(20, "RL steps between checkpoints (--resume continues from the last)")


# Sizes for --device cuda where the command line leaves them at their defaults: a GPU has room for a wider
# model and bigger batches in the same wall time.
CUDA_SCALE = dict(prompts=128, group_size=16, d_model=256, n_layers=4, n_heads=8, sft_batch=512, eval_prompts=256)

# --quick: a smoke test of the command line (tens of seconds on 2 cores; too short to learn: rewards print 0).
QUICK = dict(
    steps=3,
    prompts=8,
    group_size=4,
    sft_steps=20,
    sft_batch=32,
    d_model=32,
    n_layers=1,
    eval_every=2,
    eval_prompts=4,
    checkpoint_every=2,
)


def run_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(RunConfig))
