"""The lm_head's plain path in float64 with the full [N, V] logits: the oracle the tests hold the op to."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .checks import LogitOptions

_D = LogitOptions()


def linear_logprob_entropy_reference(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Optional[Tensor] = None,
    temperature: float = _D.temperature,
    softcap: float = _D.softcap,
    logit_scale: float = _D.logit_scale,
    ignore_index: int = _D.ignore_index,
) -> tuple[Tensor, Tensor]:
    """(logp, entropy), float64 [N], by log_softmax over the float64 logits [N, V] (for tests)."""
    raw = hidden.double() @ weight.double().t()
    if bias is not None:
        raw = raw + bias.double()
    y = logit_scale * raw
    if softcap > 0:
        y = softcap * torch.tanh(y / softcap)
    logsm = torch.log_softmax(y / temperature, dim=1)
    ignored = target == ignore_index
    t = torch.where(ignored, torch.zeros_like(target), target)
    logp = logsm.gather(1, t.unsqueeze(1)).squeeze(1)
    p = logsm.exp()
    entropy = -(p * torch.where(p > 0, logsm, 0.0)).sum(1)  # p log p -> 0 at p = 0 (a logit of -inf)
    return torch.where(ignored, 0.0, logp), torch.where(ignored, 0.0, entropy)
