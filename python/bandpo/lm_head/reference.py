"""The lm_head's plain path in float64 with the full [N, V] logits: the oracle the tests hold the op to."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .checks import LogitOptions


def linear_logprob_entropy_reference(
    hidden: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor] = None, **options
) -> tuple[Tensor, Tensor]:
    """(logp, entropy), float64 [N], by log_softmax over the float64 logits [N, V] (for tests); options: the
    fields of LogitOptions (temperature, softcap, logit_scale, ignore_index), at their defaults unless given."""
    o = LogitOptions(**options)
    raw = hidden.double() @ weight.double().t()
    if bias is not None:
        raw = raw + bias.double()
    y = o.logit_scale * raw
    if o.softcap > 0:
        y = o.softcap * torch.tanh(y / o.softcap)
    logsm = torch.log_softmax(y / o.temperature, dim=1)
    ignored = target == o.ignore_index
    t = torch.where(ignored, torch.zeros_like(target), target)
    logp = logsm.gather(1, t.unsqueeze(1)).squeeze(1)
    p = logsm.exp()
    entropy = -(p * torch.where(p > 0, logsm, 0.0)).sum(1)  # p log p -> 0 at p = 0 (a logit of -inf)
    return torch.where(ignored, 0.0, logp), torch.where(ignored, 0.0, entropy)
