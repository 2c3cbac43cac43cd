"""linear_logprob_entropy: the op's kernels (forward and backward, any device) and its public function.

The schemas are torch.ops.bandpo's (csrc/torch/schemas.cpp); bandpo/_ops.py registers these functions as their
kernels, with their fake kernels and autograd, beside every other op's."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from .checks import LogitOptions, check_head, check_options, check_targets, check_types, compute_dtype, int64
from .checks import RowGrads, nan_where_bad
from .chunks import GradAccumulator, chunk_logit_grad_, chunk_logp_entropy, logit_chunks

_D = LogitOptions()


def forward_kernel(hidden, weight, target, bias=None, *, chunk_size=0, **options) -> tuple[Tensor, Tensor]:
    """torch.ops.bandpo.linear_logprob_entropy: (logp, entropy) [N] in the compute dtype."""
    o = LogitOptions(**options)
    check_head(hidden, weight, target, bias)
    check_options(o, chunk_size)
    n, vocab = hidden.shape[0], weight.shape[0]
    bad = check_targets(target, vocab, o.ignore_index)
    logp = torch.empty(n, dtype=compute_dtype(hidden.dtype), device=hidden.device)
    entropy = torch.empty(n, dtype=compute_dtype(hidden.dtype), device=hidden.device)
    for b, e, raw in logit_chunks(hidden, weight, bias, chunk_size):
        logp[b:e], entropy[b:e] = chunk_logp_entropy(raw, target[b:e], o)
    return nan_where_bad((logp, entropy), bad)


def backward_kernel(
    grad_logp, grad_entropy, hidden, weight, target, bias, logp, entropy, *, chunk_size=0, **options
) -> tuple[Tensor, Tensor, Tensor]:
    """torch.ops.bandpo.linear_logprob_entropy_backward: (grad_hidden, grad_weight, grad_bias); grad_bias is empty
    [0] without a bias. A missing grad_logp or grad_entropy counts as 0 (and the entropy's terms are then not
    computed). logp and entropy are the forward's outputs: each row's softmax sums follow from them, so a chunk's
    gradient is one pass over its logits."""
    o = LogitOptions(**options)
    grads = GradAccumulator(hidden, weight, bias)
    for b, e, raw in logit_chunks(hidden, weight, bias, chunk_size):
        upstream = (None if g is None else g[b:e] for g in (grad_logp, grad_entropy))
        grads.add(chunk_logit_grad_(raw, target[b:e], RowGrads(*upstream, logp[b:e], entropy[b:e]), o), b, e)
    return grads.result()


def linear_logprob_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Optional[Tensor] = None,
    *,
    temperature: float = _D.temperature,
    softcap: float = _D.softcap,
    logit_scale: float = _D.logit_scale,
    ignore_index: int = _D.ignore_index,
    chunk_size: int = 0,
) -> tuple[Tensor, Tensor]:
    """Log-prob of each target token and the entropy of each position's distribution, from hidden states.

    Args:
        hidden: [N, H] float32, bfloat16 or float16 (float64 too, computed in float64: for gradcheck); any
            strides.
        weight: [V, H] the lm_head weight, hidden's dtype and device.
        target: [N] int64 token ids in [0, V), or ``ignore_index``.
        bias: optional [V].
        temperature: z = logits / temperature (default 1).
        softcap: logits -> softcap * tanh(logits / softcap) before the temperature; 0 (default) for none.
        logit_scale: multiplies the logits first (default 1).
        ignore_index: targets equal to it give logp = entropy = 0 and no gradient (default -100).
        chunk_size: tokens per chunk; 0 (default) picks about 64 MiB of float32 logits per chunk on the CPU,
            1 GiB on a GPU (DEFAULT_CHUNK_BYTES).

    Returns:
        (logp, entropy): float32 [N] each (float64 for float64 inputs), in nats; logp <= 0. Differentiable
        w.r.t. hidden, weight and bias through both outputs. A row with a NaN or +inf logit gives NaN (as
        log_softmax does); a logit of -inf (e.g. a bias of -inf) has probability 0.

    >>> import torch, bandpo
    >>> h, w = torch.randn(6, 16), torch.randn(50, 16)
    >>> logp, ent = bandpo.linear_logprob_entropy(h, w, torch.tensor([1, 2, 3, 4, 5, -100]))
    >>> ref = torch.log_softmax(h @ w.t(), dim=1)
    >>> bool(torch.allclose(logp[:5], ref[torch.arange(5), torch.tensor([1, 2, 3, 4, 5])], atol=1e-5))
    True
    >>> float(logp[5]), float(ent[5])
    (0.0, 0.0)
    """
    check_types(hidden, weight, target, bias)
    o = LogitOptions.of(ignore_index, logit_scale, softcap, temperature)
    hidden, weight, bias = under_autocast(hidden, weight, bias)
    with autocast_off(hidden.device.type):
        return torch.ops.bandpo.linear_logprob_entropy(
            hidden, weight, target, bias, **o._asdict(), chunk_size=int64("chunk_size", chunk_size)
        )


def under_autocast(hidden: Tensor, weight: Tensor, bias: Optional[Tensor]):
    """Under autocast the head runs in autocast's dtype, as a plain lm_head would: hidden, weight and bias are cast
    to it here (differentiably: the gradients reach the float32 parameters), and the op then runs with autocast
    off (autocast_off), so that its forward and its backward (which autocast never covers) compute the same
    logits."""
    device = hidden.device.type
    if not (
        torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device) and hidden.is_floating_point()
    ):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device)
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def autocast_off(device_type: str):
    """Autocast off for the op's call, on devices that have autocast (not "meta", for one)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
