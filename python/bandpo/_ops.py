"""Fake (meta) kernels for torch.ops.bandpo, registered from Python as in pytorch/extension-cpp.

The device kernels are registered in C++ (csrc/torch/ops.cpp), and so is band_loss's autograd
(csrc/torch/autograd.cpp): the schema's keyword-only ``Tensor? ref_logp`` is something
torch.library.register_autograd refuses, while a C++ autograd kernel handles it and still works under
torch.compile. The backward is the band_loss_backward op.
"""

from __future__ import annotations

import torch

NUM_METRICS = 8


@torch.library.register_fake("bandpo::band_bounds")
def _band_bounds_fake(old_logp, *, divergence="kl", delta=0.05, eps_low=0.2, eps_high=0.28, relax_high_p=False,
                      ratio_max=10.0):
    return torch.empty_like(old_logp, memory_format=torch.contiguous_format), torch.empty_like(
        old_logp, memory_format=torch.contiguous_format)


@torch.library.register_fake("bandpo::band_loss")
def _band_loss_fake(logp, old_logp, advantages, mask=None, *, divergence="kl", delta=0.05, eps_low=0.2,
                    eps_high=0.28, relax_high_p=False, ratio_max=10.0, dual_clip=None, agg="token-mean",
                    normalizer=None, ref_logp=None, kl_coef=0.0, kl_estimator="k3"):
    for name, t in (("old_logp", old_logp), ("advantages", advantages), ("mask", mask), ("ref_logp", ref_logp)):
        if t is not None and t.device != logp.device:
            raise ValueError(f"{name} is on {t.device} but logp is on {logp.device}")
    torch._check(old_logp.shape == logp.shape, lambda: f"old_logp must have the shape of logp {tuple(logp.shape)}")
    return logp.new_empty(()), logp.new_empty((NUM_METRICS,), dtype=torch.float32)


@torch.library.register_fake("bandpo::band_loss_backward")
def _band_loss_backward_fake(grad_loss, logp, old_logp, advantages, mask, ref_logp, **options):
    return torch.empty_like(logp, memory_format=torch.contiguous_format)
