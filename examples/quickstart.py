"""A BandPO update step with torch.ops.bandpo: bounds, loss, metrics and gradient on a toy batch.

python examples/quickstart.py
"""

import math
import time

import torch

import bandpo


def main() -> None:
    torch.manual_seed(0)
    B, T = 64, 512
    old_logp = torch.log(torch.rand(B, T)).clamp(min=-20)  # sampled tokens under the old policy
    logp = (old_logp + 0.3 * torch.randn(B, T)).clamp(max=0).requires_grad_()  # after a few updates
    advantages = torch.randn(B)  # one per sequence (GRPO-style)
    mask = torch.rand(B, T) > 0.1

    print("ratio bounds at delta = 0.05 (no cap):")
    probs = torch.tensor([0.01, 0.08, 0.5, 0.99])
    for div in ("kl", "tv", "chi2", "clip"):
        lo, up = bandpo.band_bounds(probs.log(), divergence=div, ratio_max=math.inf)
        cells = "  ".join(f"p={p:.2f}: [{a:.4f}, {b:.4f}]" for p, a, b in zip(probs.tolist(), lo.tolist(), up.tolist()))
        print(f"  {div:5s} {cells}")

    for cfg in (
        bandpo.BandConfig.clip(0.2, 0.2),
        bandpo.BandConfig.clip(0.2, 0.28),
        bandpo.BandConfig(divergence="kl"),
        bandpo.BandConfig(divergence="kl", agg="seq-mean-token-mean", dual_clip=3.0),
    ):
        logp.grad = None
        t = time.perf_counter()
        out = bandpo.band_loss(logp, old_logp, advantages, mask, cfg)
        out.loss.backward()
        ms = (time.perf_counter() - t) * 1e3
        m = {k: round(float(v), 4) for k, v in out.metrics.items()}
        print(
            f"\n{cfg.divergence} eps=({cfg.eps_low},{cfg.eps_high}) agg={cfg.agg}: loss {out.loss.item():+.5f}, "
            f"|grad| {logp.grad.norm():.4f}, {B * T} tokens fwd+bwd in {ms:.2f} ms"
        )
        print(f"  {m}")


if __name__ == "__main__":
    main()
