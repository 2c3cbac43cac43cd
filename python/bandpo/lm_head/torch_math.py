"""The chunk steps as torch operations: what runs where bandpo's kernels do not (float64 inputs, devices other
than the CPU and CUDA, a build without CUDA kernels). The same math as csrc/include/bandpo/lm_head.h; the
tests hold the two to each other (test_lm_head.py, test_kernel_path_equals_the_torch_path)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .checks import LogitOptions, RowGrads


def transform_(raw: Tensor, o: LogitOptions) -> tuple[Tensor, Optional[Tensor]]:
    """The chunk's logits z [n, V] from its raw logits (in raw's buffer), and dz/draw where it is not a constant
    (softcap), else None."""
    z = raw
    dz = None
    if o.softcap > 0:
        z.mul_(o.logit_scale / o.softcap).tanh_()  # t = tanh(scale raw / softcap)
        dz = torch.mul(z, z).neg_().add_(1.0).mul_(o.logit_scale / o.temperature)  # (1 - t^2) scale / T
        z.mul_(o.softcap / o.temperature)
    elif o.logit_scale != 1.0 or o.temperature != 1.0:
        z.mul_(o.logit_scale / o.temperature)
    return z, dz


def chunk_stats(raw: Tensor, t: Tensor, o: LogitOptions) -> tuple[Tensor, Tensor]:
    """logp and entropy of each row of the chunk's raw logits ([n, V] in the compute dtype, consumed)."""
    z, _ = transform_(raw, o)
    ignored = t == o.ignore_index
    # a logit of +inf leaves no distribution: NaN, as log_softmax and the kernels give (logsumexp says +inf)
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    lse.masked_fill_(lse == math.inf, math.nan)
    z_target = z.gather(1, t.clamp(0, z.shape[1] - 1).unsqueeze(1)).squeeze(1)
    p = torch.sub(z, lse).exp_()
    # entropy = sum P (lse - z): non-negative terms, no cancellation between lse and E[z]; a logit of -inf (P = 0)
    # adds 0, the limit of p log p, not 0 * inf = NaN (lm_head.h logit_offset)
    entropy = torch.einsum("nv,nv->n", p, z.sub_(lse).neg_().masked_fill_(p == 0, 0.0))
    logp = (z_target - lse.squeeze(1)).clamp_max(0.0)  # rounding may not make a probability above 1
    zero = torch.zeros((), device=z.device)
    return torch.where(ignored, zero, logp), torch.where(ignored, zero, entropy)


def chunk_logit_grad_(raw: Tensor, t: Tensor, rows: RowGrads, o: LogitOptions) -> Tensor:
    """d loss / d raw [n, V] in raw's buffer, from the upstream gradients of the chunk's (logp, entropy) and,
    where known (both), its own (logp, entropy)."""
    grad_logp, grad_entropy, logp, entropy = rows
    cdt, vocab = raw.dtype, raw.shape[1]
    ignored = t == o.ignore_index
    live = (~ignored).to(cdt)
    z, dz = transform_(raw, o)
    # dlogp/dz = onehot - P; dH/dz = -P (z - E[z]). g_z = g_logp (onehot - P) - g_H P (z - E[z]).
    if logp is not None and entropy is not None:
        # from the outputs (lm_head.h logit_row_grad_from_outputs): lse = z_target - logp, E[z] = lse - H
        z.sub_(z.gather(1, t.clamp(0, vocab - 1).unsqueeze(1)).sub_(logp.to(cdt).unsqueeze(1)))  # z - lse
        p = torch.exp(z)
        ez = entropy.to(cdt).neg().unsqueeze(1)  # E[z] - lse
    else:
        # Shifted by the row's max first: E[z] is then a sum of terms near 0 for the likely tokens (unshifted,
        # float32 sums of logits around 10 lost 2e-5 of E[z], 1e-4 of the gradient).
        z.sub_(z.amax(dim=1, keepdim=True))
        p = torch.exp(z)
        p.div_(p.sum(dim=1, keepdim=True))
        ez = None
    gl = (grad_logp.to(cdt) * live).unsqueeze(1) if grad_logp is not None else None
    gh = (grad_entropy.to(cdt) * live).unsqueeze(1) if grad_entropy is not None else None
    if gh is not None:
        z.masked_fill_(p == 0, 0.0)  # a logit of -inf (P = 0) has no entropy gradient, not 0 * -inf = NaN
        if ez is None:
            ez = torch.einsum("nv,nv->n", p, z).unsqueeze(1)
        g = z.sub_(ez).mul_(p).mul_(gh).neg_()  # -g_H P (z - E[z]), in z's buffer
        if gl is not None:
            g.addcmul_(p, gl, value=-1.0)
    else:
        g = p.mul_(gl).neg_() if gl is not None else p.zero_()
    del p
    if gl is not None:
        g.scatter_add_(1, t.clamp(0, vocab - 1).unsqueeze(1), gl)
    if dz is not None:
        g.mul_(dz)
    elif o.logit_scale != 1.0 or o.temperature != 1.0:
        g.mul_(o.logit_scale / o.temperature)
    # an ignored row's P from the outputs is not a distribution (its logp and entropy are 0): inf there times 0
    return g.masked_fill_(ignored.unsqueeze(1), 0.0)
