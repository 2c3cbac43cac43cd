"""Sampling from the policy, response masks, per-token log-probabilities, group-normalised advantages."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .task import EOS
from .._tables import DEFAULTS  # the sampling temperature's default: the lm_head option's


@dataclass
class Rollout:
    sequences: torch.Tensor  # [N, P + R] prompt then response tokens
    mask: torch.Tensor  # [N, R] bool: response tokens up to and including the first EOS
    old_logp: torch.Tensor  # [N, R] log-probabilities of the sampled tokens under the sampling policy
    entropy: torch.Tensor  # [N, R] entropy of the sampling distribution at each response position


def response_mask(responses: torch.Tensor) -> torch.Tensor:
    """True up to and including the first EOS of each row (every position if there is none)."""
    is_eos = responses == EOS
    before_or_at_first_eos = (is_eos.cumsum(dim=1) - is_eos.long()) == 0
    return before_or_at_first_eos


def token_logprobs(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    prompt_len: int,
    temperature: float = DEFAULTS["temperature"],
    with_entropy: bool = False,
    fused_head: bool = False,
):
    """Log-probabilities [N, R] of the response tokens sequences[:, prompt_len:] (and optionally the entropy
    of the distribution each was drawn from), under `model` at `temperature`. fused_head: from the final hidden
    states and the head's weight with bandpo.linear_logprob_entropy, without the [N, R, vocab] logits; else
    the model's logits and log_softmax (the same values to float rounding)."""
    if fused_head:
        from ..lm_head import linear_logprob_entropy

        hidden = model(sequences[:, :-1], return_hidden=True)[:, prompt_len - 1 :]
        head = getattr(model, "module", model).head  # through a DistributedDataParallel wrapper
        target = sequences[:, prompt_len:]
        logp, entropy = linear_logprob_entropy(
            hidden.reshape(-1, hidden.shape[-1]), head.weight, target.reshape(-1), head.bias, temperature=temperature
        )
        logp, entropy = logp.view(target.shape), entropy.view(target.shape)
        return (logp, entropy) if with_entropy else logp
    logits = model(sequences[:, :-1])[:, prompt_len - 1 :].float() / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, sequences[:, prompt_len:, None]).squeeze(-1)
    if not with_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    group_size: int,
    response_len: int,
    generator: torch.Generator,
    temperature: float = DEFAULTS["temperature"],
) -> Rollout:
    """group_size samples per prompt (rows prompt-major: prompt i owns rows i*G .. i*G + G - 1)."""
    seqs = prompts.repeat_interleave(group_size, dim=0)
    cache: list = []  # keys and values of the positions so far: each step computes one new position only
    step_input = seqs
    for _ in range(response_len):
        logits = model(step_input, cache)[:, -1].float() / temperature
        probs = torch.softmax(logits, dim=-1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(seqs.device)
        seqs = torch.cat([seqs, nxt], dim=1)
        step_input = nxt
    prompt_len = prompts.shape[1]
    old_logp, entropy = token_logprobs(model, seqs, prompt_len, temperature, with_entropy=True)
    return Rollout(seqs, response_mask(seqs[:, prompt_len:]), old_logp, entropy)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each reward minus its group's mean, over the group's standard deviation (0 for a constant group)."""
    r = rewards.view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    return (centred / (r.std(dim=1, keepdim=True, unbiased=False) + eps)).view(-1)
