"""Prints one digest of bandpo's results on fixed inputs (CPU): every divergence's bounds, the loss, its metrics
and gradient for every aggregation, the numpy face and the lm_head chunk step, in float32 and float64.
ci/test.sh runs it in each environment the one wheel is installed in (every Python, several torches) and
requires the same digest everywhere: the same file must give the same bits."""

import hashlib

import numpy as np
import torch

import bandpo
import bandpo.np as bnp


def inputs(dtype):
    g = torch.Generator().manual_seed(7)
    old = torch.log(torch.rand(4, 257, generator=g, dtype=torch.float64) * 0.999 + 1e-4)
    logp = old + 0.3 * torch.randn(4, 257, generator=g, dtype=torch.float64)
    logp = torch.clamp(logp, max=0.0)
    adv = torch.randn(4, 257, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 257, generator=g) > 0.1
    ref = torch.clamp(old + 0.1 * torch.randn(4, 257, generator=g, dtype=torch.float64), max=0.0)
    return [t.to(dtype) for t in (logp, old, adv)] + [mask, ref.to(dtype)]


def main() -> None:
    torch.set_num_threads(2)
    h = hashlib.sha256()
    for dtype in (torch.float32, torch.float64):
        logp, old, adv, mask, ref = inputs(dtype)
        for divergence in bandpo.DIVERGENCES:
            for t in bandpo.band_bounds(old, divergence=divergence, relax_high_p=True):
                h.update(t.numpy().tobytes())
        for agg in bandpo.AGGREGATIONS:
            x = logp.clone().requires_grad_()
            out = bandpo.band_loss(x, old, adv, mask, agg=agg, dual_clip=3.0, kl_coef=0.05, ref_logp=ref)
            out.loss.backward()
            for t in (out.loss.detach(), out.metrics_tensor, x.grad):
                h.update(t.numpy().tobytes())
            n = bnp.band_loss(logp.numpy(), old.numpy(), adv.numpy(), mask.numpy(), agg=agg, ref_logp=ref.numpy())
            h.update(np.float64(n.loss).tobytes() + n.grad.tobytes())
    raw = torch.linspace(-3, 3, 3 * 1000).reshape(3, 1000).float()
    target = torch.tensor([1, 500, 999])
    for t in torch.ops.bandpo.logit_chunk_stats(
        raw, target, ignore_index=-100, logit_scale=1.0, softcap=0.0, temperature=1.0
    ):
        h.update(t.numpy().tobytes())
    print(h.hexdigest())


if __name__ == "__main__":
    main()
