"""A small run of every CUDA kernel for `compute-sanitizer --tool memcheck` (ci/gpu_check.sh): aligned and
unaligned shapes, every dtype's chunk width, masks of both kinds, per-row advantages, all aggregations."""

import torch

import bandpo  # noqa: F401

for dtype in (torch.float32, torch.float64, torch.bfloat16):
    for shape in ((3, 333), (4, 512), (1, 7)):
        old = torch.log(torch.rand(shape, device="cuda", dtype=torch.float64)).clamp(-20, -1e-4).to(dtype)
        logp = (old + 0.5 * torch.randn_like(old)).clamp(max=-1e-4)
        adv = torch.randn_like(old)
        for div in ("kl", "tv", "chi2", "clip"):
            torch.ops.bandpo.band_bounds(old, divergence=div)
        for mask in (None, torch.rand(shape, device="cuda") > 0.2, torch.rand(shape, device="cuda", dtype=dtype)):
            for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
                for a in (adv, adv[:, 0].contiguous()):
                    x = logp.clone().requires_grad_()
                    loss, metrics = torch.ops.bandpo.band_loss(x, old, a, mask, agg=agg, ref_logp=old, kl_coef=0.1)
                    loss.backward()
# the lm_head chunk kernels: every raw dtype, vocab not a multiple of the 16-byte chunk, rows that start off a
# 16-byte boundary (a column slice), ignored and out-of-range targets, with and without the outputs
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for vocab in (1, 37, 1000):
        full = torch.randn(5, vocab + 3, device="cuda").to(dtype)
        for raw in (full[:, :vocab].contiguous(), full[:, 3:]):
            target = torch.tensor([0, vocab - 1, -100, vocab + 5, vocab // 2], device="cuda")
            lp, ent = torch.ops.bandpo.logit_chunk_stats(raw, target, softcap=3.0)
            g = torch.randn(5, device="cuda")
            torch.ops.bandpo.logit_chunk_grad_(raw.clone(), target, g, g, softcap=3.0)
            torch.ops.bandpo.logit_chunk_grad_(raw.clone(), target, g, None, logp=lp, entropy=ent)
torch.cuda.synchronize()
print("memcheck case: done")
